"""Kamailio as a real, Exchange-UM-like SIP server: answers OPTIONS with 200 over TCP, TLS and mutual TLS.

The configuration is generated here (kamailio.cfg + tls.cfg per instance, in the session's lab directory);
one instance serves every listener variant the tests need, because a start costs 1-2 s.

Facts this relies on (Kamailio 5.6.3, OpenSSL 3.0; see the lab's README in the final report):
- `tcp_children=1` is required: two or more TCP workers crash 5.6.3 (double free in the tls module) as soon as
  two TLS connections are handled concurrently.
- IPv6 listeners are written `listen=tcp:[::1]:PORT`; their tls.cfg profile section is `[server:[::1]:PORT]`.
- Each TLS listener gets its own `[server:IP:PORT]` profile (certificate, method, client-cert policy). None of
  them sets `server_name`, so a client's SNI does not move the connection to another profile.
- `method = TLSv1.2` means 1.2 only; `TLSv1.2+` means 1.2 or newer.
- `is_method()` needs textops, so the route compares `method == "OPTIONS"`.
- Run with `-DD -E` (foreground, log to stderr) and core dumps off (a crash writes a large core file).

The renderers are shared by every Kamailio the lab runs: the core settings, module list and one tls.cfg
section per TLS listener are the same everywhere; what differs is the `request_route` (`route=`: the
default answers every OPTIONS 200, tests/lab/kamailio_msproxy.py's judges the client certificate) and the
`Server` header.
"""

from __future__ import annotations

import glob
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.lab.proc import LabError, LabProcess, LabStartError, require_binary
from tests.lab.sipclient import exchange_options

__all__ = [
    "EXCHANGE_SERVER_HEADER",
    "OPTIONS_200_ROUTE",
    "CertPair",
    "KamailioInstance",
    "Listener",
    "TlsPolicy",
    "find_module_dir",
    "render_kamailio_cfg",
    "render_tls_cfg",
]

EXCHANGE_SERVER_HEADER = "RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017"

#: Kamailio's server certificate for a TLS listener, by name: a key of the instance's `server_certs`
#: (tests/lab/pki.py's are "good", "expired", "wrong_name" and "rsa").
CertChoice = str

#: The default route: OPTIONS get 200, everything else 501.
OPTIONS_200_ROUTE = """request_route {
    if (method == "OPTIONS") {
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("501", "Not Implemented");
}
"""


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """How one TLS listener behaves."""

    require_client_cert: bool = True
    method: str = "TLSv1.2+"
    server_cert: CertChoice = "good"
    cipher_list: str | None = None  # OpenSSL's TLS 1.2 suites for this listener; None: Kamailio's default


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    transport: Literal["tcp", "tls", "udp"]  # udp: `listen=udp:IP:PORT` (readiness needs a tcp one)
    host: str
    port: int
    tls: TlsPolicy | None = None

    def __post_init__(self) -> None:
        if (self.transport == "tls") != (self.tls is not None):
            raise ValueError(f"listener {self.name}: a TlsPolicy goes with transport 'tls' only")

    @property
    def host_literal(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class CertPair:
    """A PEM certificate file and its PEM private key file."""

    cert_file: Path
    key_file: Path


def find_module_dir() -> Path:
    """Kamailio's module directory for this machine's architecture (must contain tls.so)."""
    candidates: list[str] = []
    try:
        arch = subprocess.run(
            ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(f"/usr/lib/{arch}/kamailio/modules")
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += [*sorted(glob.glob("/usr/lib/*/kamailio/modules")), "/usr/lib/kamailio/modules"]
    for candidate in candidates:
        if (Path(candidate) / "tls.so").is_file():
            return Path(candidate)
    raise LabError(
        "Kamailio's tls.so module was not found (package kamailio-tls-modules): "
        "run scripts/install-test-peers (as root) to install the lab peers"
    )


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"unsupported character in kamailio.cfg string: {value!r}")
    return f'"{value}"'


def render_kamailio_cfg(
    listeners: Iterable[Listener],
    *,
    module_dir: Path,
    tls_cfg: Path,
    server_header: str = EXCHANGE_SERVER_HEADER,
    route: str = OPTIONS_200_ROUTE,
    modules: Sequence[str] = (),
) -> str:
    """kamailio.cfg: the lab's core settings, one `listen=` per listener, the modules (the lab's five and
    `modules`, e.g. "textops.so" for `append_to_reply`) and `route`."""
    listeners = list(listeners)
    lines = [
        "#!KAMAILIO",
        "# Generated by tests/lab/kamailio.py for one test session.",
        "debug=2",
        "log_stderror=yes",
        "children=2",
        "# 2+ TCP workers crash Kamailio 5.6.3 + OpenSSL 3 under concurrent TLS: keep one.",
        "tcp_children=1",
        "auto_aliases=no",
        "dns=no",
        "rev_dns=no",
        f"enable_tls={'yes' if any(li.transport == 'tls' for li in listeners) else 'no'}",
        "tcp_accept_no_cl=yes",
        f"server_header={_quote('Server: ' + server_header)}",
    ]
    lines += [f"listen={li.transport}:{li.host_literal}:{li.port}" for li in listeners]
    lines += [
        f"mpath={_quote(str(module_dir) + '/')}",
        'loadmodule "tls.so"',
        'loadmodule "sl.so"',
        'loadmodule "siputils.so"',
        'loadmodule "xlog.so"',
        'loadmodule "pv.so"',
        *(f"loadmodule {_quote(module)}" for module in modules),
        f'modparam("tls", "config", {_quote(str(tls_cfg))})',
        "",
        route.strip("\n"),
        "",
    ]
    return "\n".join(lines)


def _tls_section(header: str, policy: TlsPolicy, cert: CertPair, ca_file: Path) -> list[str]:
    verify = "yes" if policy.require_client_cert else "no"
    return [
        f"[{header}]",
        f"method = {policy.method}",
        f"verify_certificate = {verify}",
        f"require_certificate = {verify}",
        f"certificate = {cert.cert_file}",
        f"private_key = {cert.key_file}",
        f"ca_list = {ca_file}",
        *([f"cipher_list = {policy.cipher_list}"] if policy.cipher_list else []),
        "",
    ]


def render_tls_cfg(
    listeners: Iterable[Listener], *, server_certs: Mapping[str, CertPair], ca_file: Path
) -> str:
    lines = ["# Generated by tests/lab/kamailio.py; one [server:IP:PORT] profile per TLS listener.", ""]
    # The default profile is a fallback only: every TLS listener has its own section below.
    lines += _tls_section("server:default", TlsPolicy(), server_certs["good"], ca_file)
    for li in listeners:
        if li.tls is None:
            continue
        lines += _tls_section(
            f"server:{li.host_literal}:{li.port}", li.tls, server_certs[li.tls.server_cert], ca_file
        )
    lines += ["[client:default]", "verify_certificate = no", "require_certificate = no", ""]
    return "\n".join(lines)


class KamailioInstance:
    """A foreground Kamailio serving `listeners`, with its config written into `workdir`."""

    def __init__(
        self,
        listeners: Sequence[Listener],
        *,
        workdir: Path,
        server_certs: Mapping[str, CertPair],
        ca_file: Path,
        name: str = "kamailio",
        route: str = OPTIONS_200_ROUTE,
        server_header: str = EXCHANGE_SERVER_HEADER,
        modules: Sequence[str] = (),
    ) -> None:
        names = [li.name for li in listeners]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate listener names: {names}")
        self.listeners = {li.name: li for li in listeners}
        self.workdir = workdir
        self.name = name
        binary = require_binary("kamailio")
        module_dir = find_module_dir()
        self.cfg_path = workdir / f"{name}.cfg"
        self.tls_cfg_path = workdir / f"{name}-tls.cfg"
        self.tls_cfg_path.write_text(render_tls_cfg(listeners, server_certs=server_certs, ca_file=ca_file))
        self.cfg_path.write_text(
            render_kamailio_cfg(
                listeners,
                module_dir=module_dir,
                tls_cfg=self.tls_cfg_path,
                server_header=server_header,
                route=route,
                modules=modules,
            )
        )
        self.process = LabProcess(
            name,
            # -m/-M: 32 MB shared and 8 MB private memory are plenty for a test server.
            [binary, "-DD", "-E", "-m", "32", "-M", "8", "-f", str(self.cfg_path)],
            log_dir=workdir,
            ready=[li.address for li in listeners],
            no_core=True,
        )

    def start(self, timeout: float = 15.0) -> KamailioInstance:
        """Start and wait until a TCP listener answers OPTIONS with 200.

        A listening socket is not enough: the main process accepts connections ~0.7 s before its TCP worker
        (which loads every TLS profile first) reads them, so the first request would be that much slower.
        """
        self.process.start()
        tcp = [li for li in self.listeners.values() if li.transport == "tcp"]
        if tcp:
            try:
                self._wait_answering(tcp[0], timeout)
            except BaseException:
                self.process.stop()
                raise
        self.process.startup_seconds = time.monotonic() - (self.process.started_at or 0.0)
        return self

    def _wait_answering(self, listener: Listener, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                break
            try:
                reply, _ = exchange_options(listener.address, timeout=max(0.1, deadline - time.monotonic()))
            except (OSError, EOFError, ValueError) as exc:
                last = exc
                time.sleep(0.05)
                continue
            if reply.status == 200:
                return
            last = f"status {reply.status}"
            time.sleep(0.05)
        raise LabStartError(
            f"{self.name} did not answer OPTIONS on {listener.host_literal}:{listener.port} "
            f"within {timeout} s (last: {last!r})\n{self.process.describe()}",
            port_conflict="Address already in use" in self.process.log_text(),
        )

    def stop(self) -> int | None:
        return self.process.stop()

    def addresses(self) -> dict[str, tuple[str, int]]:
        return {name: li.address for name, li in self.listeners.items()}

    def __enter__(self) -> KamailioInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
