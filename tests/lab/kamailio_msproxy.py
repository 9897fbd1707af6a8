"""Kamailio behaving like Microsoft's Teams Direct Routing SIP proxy, as the issue's facts describe it.

Mutual TLS on every TLS listener (`verify_certificate` and `require_certificate`, against `ca_list`); each
listener has its own TLS profile (`method`, `cipher_list`), so one instance serves the right proxy (TLS 1.2
and the four Teams suites) and the wrong ones the tests need (TLS 1.3 only, a suite outside the four). The
route answers OPTIONS over TLS with 200 only when the Contact has no userinfo and its host is the client
certificate's subject CN or (first) DNS SAN, or sits one label under a `*.` wildcard in one of them, as
Microsoft allows; anything else gets 403. A plain TCP listener answers 200 for the lab's readiness check.

Facts this relies on (Kamailio 5.6.3 with OpenSSL 3.0, tried on this machine):
- the tls module exports `$tls_peer_subject_cn` and `$tls_peer_san_hostname` (the first dNSName of the peer
  certificate's subjectAltName; there is no `$tls_peer_san_dns` in 5.6);
- `$(ct{nameaddr.uri})` is the Contact URI, `{uri.host}` / `{uri.user}` its parts;
- `tcp_children=1` (two or more TCP workers crash 5.6.3 with concurrent TLS: LAB.md);
- 5.6's `method` knows no `TLSv1.3` (only up to `TLSv1.2` and `TLSv1.2+`). A TLS 1.3-only listener is
  `TLSv1.2+` with a TLS 1.2 `cipher_list` no client offers (`PSK-AES128-CBC-SHA`: no PSK is configured on
  either side): a TLS 1.2 client finds no suite in common, a client that offers 1.3 gets TLS 1.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.lab.kamailio import CertPair, KamailioInstance, Listener, TlsPolicy

__all__ = ["MSPROXY_ROUTE", "MsProxyInstance", "ProxyListener"]


@dataclass(frozen=True, slots=True)
class ProxyListener:
    """One mutual-TLS listener of the proxy: its TLS versions (`method`) and TLS 1.2 suites."""

    name: str
    port: int
    method: str = "TLSv1.2"
    cipher_list: str | None = None
    host: str = "127.0.0.1"


MSPROXY_ROUTE = r"""
request_route {
    if (method != "OPTIONS") {
        sl_send_reply("501", "Not Implemented");
        exit;
    }
    if (proto != TLS) {
        sl_send_reply("200", "OK");
        exit;
    }
    if ($ct == $null) {
        sl_send_reply("403", "Forbidden: no Contact");
        exit;
    }
    $var(uri) = $(ct{nameaddr.uri});
    $var(host) = $(var(uri){uri.host}{s.tolower});
    $var(user) = $(var(uri){uri.user});
    $var(cn) = $(tls_peer_subject_cn{s.tolower});
    $var(san) = $(tls_peer_san_hostname{s.tolower});
    # one label under a wildcard: "*." + the Contact host without its first label
    $var(first) = $(var(host){s.select,0,.});
    $var(skip) = $(var(first){s.len}) + 1;
    $var(wild) = "*." + $(var(host){s.substr,$var(skip),0});
    xlog("L_INFO", "msproxy: contact host=$var(host) user=$var(user) cn=$var(cn) san=$var(san)\n");
    xlog("L_INFO", "msproxy: wildcard form $var(wild); $tls_version $tls_description\n");
    if ($var(user) != "") {
        sl_send_reply("403", "Forbidden: Contact has userinfo");
        exit;
    }
    if ($var(host) == $var(cn) || $var(host) == $var(san)) {
        sl_send_reply("200", "OK");
        exit;
    }
    if ($var(first) != "" && ($var(wild) == $var(cn) || $var(wild) == $var(san))) {
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("403", "Forbidden: Contact host does not match the client certificate");
}
"""


class MsProxyInstance(KamailioInstance):
    """A foreground Kamailio serving `proxies` (mutual TLS, each with its own TLS profile) and a plain TCP
    readiness listener, with MSPROXY_ROUTE; config rendering, start/stop and the readiness wait are
    tests/lab/kamailio.py's."""

    def __init__(
        self,
        proxies: Sequence[ProxyListener],
        *,
        tcp_port: int,
        workdir: Path,
        server: CertPair,
        ca_file: Path,
        name: str = "kamailio-msproxy",
    ) -> None:
        listeners = [Listener("ready", "tcp", "127.0.0.1", tcp_port)]
        listeners += [
            Listener(p.name, "tls", p.host, p.port, TlsPolicy(method=p.method, cipher_list=p.cipher_list))
            for p in proxies
        ]
        self.proxies = {p.name: p for p in proxies}
        super().__init__(
            listeners,
            workdir=workdir,
            server_certs={"good": server},
            ca_file=ca_file,
            name=name,
            route=MSPROXY_ROUTE,
            server_header="msproxy-lab",
        )
