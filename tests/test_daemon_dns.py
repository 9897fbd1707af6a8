"""The daemon's DNS client for `resolution = "rfc3263"` modules: one per loaded config, rebuilt on reload.

In-process and offline: nothing is resolved here (tests/integration/test_rfc3263_probe.py resolves against a
real dnsmasq); these check which nameservers the client in force asks, and that a reload whose `[dns]` can
no longer be used is rejected while the running client stays.
"""

from __future__ import annotations

from pathlib import Path

from umprobe.config import Config, parse_config
from umprobe.daemon import Daemon, dns_client

RFC3263 = '[modules.srv]\nresolution = "rfc3263"\n[[targets]]\nhost = "sip.contoso.com"\nmodule = "srv"\n'


def config(text: str, base_dir: Path | None = None) -> Config:
    return parse_config(text, source="probes.toml", base_dir=base_dir, check_files=False)


def test_no_client_without_an_rfc3263_module() -> None:
    assert dns_client(config('[[targets]]\nhost = "cas01.contoso.local"\nmodule = "sip_tcp"\n')) is None


async def test_the_client_asks_the_configured_nameservers_and_a_reload_replaces_it(tmp_path: Path) -> None:
    current = config(RFC3263 + '[dns]\nnameservers = ["127.0.0.1:5353"]\n')
    daemon = Daemon.from_config(current, listen="127.0.0.1:0", load=lambda: current)
    assert daemon.dns.client is not None
    assert daemon.dns.client.nameservers == (("127.0.0.1", 5353),)

    current = config(RFC3263 + '[dns]\nnameservers = ["[::1]:53", "192.0.2.53"]\n')
    assert await daemon.reload("test")
    assert daemon.dns.client is not None
    assert daemon.dns.client.nameservers == (("::1", 53), ("192.0.2.53", 53))

    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.99\n")
    current = config(RFC3263 + '[dns]\nresolv_conf = "resolv.conf"\n', tmp_path)
    assert await daemon.reload("test")
    assert daemon.dns.client is not None
    assert daemon.dns.client.nameservers == (("192.0.2.99", 53),)

    # the file disappears: the reload is rejected and the client in force stays
    (tmp_path / "resolv.conf").unlink()
    before = daemon.dns.client
    assert not await daemon.reload("test")
    assert daemon.dns.client is before
    status = daemon.store.reload_status()
    assert not status.successful
    conf = tmp_path / "resolv.conf"
    assert status.last_error == f"probes.toml: dns: no usable nameserver in {conf}: cannot open {conf}"

    current = config('[[targets]]\nhost = "cas01.contoso.local"\nmodule = "sip_tcp"\n')
    assert await daemon.reload("test")
    assert daemon.dns.client is None  # no RFC 3263 module left: nothing to ask
