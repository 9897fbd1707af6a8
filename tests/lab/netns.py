"""Network namespaces as test hosts with their own addresses (198.18.0.0/15, the benchmarking range).

    host  umh<id> 198.18.X.Y+1/30  <--veth-->  umn<id> 198.18.X.Y+2/30  in namespace ump-<id>-p<pid>

An nftables ruleset inside the namespace shapes what the host sees:
- `tcp dport P drop` drops the SYN: a TCP connect from the host times out for real (a blackhole);
- `tcp dport P reject with tcp reset` answers RST: connect refused from a remote address.
Nothing listens in the namespace, so every other TCP port refuses as well.

Everything is deleted on teardown, also after a failure half-way through set-up: deleting the namespace
destroys its end of the veth pair, which destroys the host end with it. A run that was killed outright
cannot clean up, so the namespace name carries the creator's PID and `sweep_stale_namespaces()` (called when
the session fixture starts) deletes lab namespaces whose creator is gone. Needs root, `ip` and `nft`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.proc import LabError, require_binary, require_root

__all__ = ["NetNamespace", "NsAddress", "blackhole_ruleset", "sweep_stale_namespaces", "udp_loss_ruleset"]

_BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")


@dataclass(frozen=True, slots=True)
class NsAddress:
    host_ip: str
    ns_ip: str
    prefixlen: int = 30


def _run(argv: list[str], *, input_text: str | None = None, log: Path | None = None) -> str:
    if log is not None:
        with open(log, "a") as fh:
            fh.write("$ " + " ".join(argv) + ("  <<EOF\n" + input_text + "EOF" if input_text else "") + "\n")
    result = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed with status {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def _used_ipv4_networks(ip: str) -> list[ipaddress.IPv4Network]:
    out = subprocess.run([ip, "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return nets


def _pick_subnet(ip: str) -> ipaddress.IPv4Network:
    used = _used_ipv4_networks(ip)
    for _ in range(100):
        offset = secrets.randbelow(_BENCHMARK_NET.num_addresses // 4) * 4
        net = ipaddress.IPv4Network((int(_BENCHMARK_NET.network_address) + offset, 30))
        if not any(net.overlaps(u) for u in used):
            return net
    raise LabError("no free /30 left in 198.18.0.0/15 after 100 tries")


@dataclass
class NetNamespace:
    """A namespace `ump-<id>-p<pid>` joined to the host by a veth pair. Use as a context manager."""

    nft_rules: str = ""
    log_dir: Path | None = None
    ident: str = field(default_factory=lambda: secrets.token_hex(4))
    address: NsAddress | None = None
    _created: bool = field(default=False, init=False, repr=False)
    _ip: str = field(default="ip", init=False, repr=False)
    _nft: str = field(default="nft", init=False, repr=False)

    @property
    def name(self) -> str:
        # The creator's PID in the name lets a later session remove namespaces a killed run left behind.
        return f"ump-{self.ident}-p{os.getpid()}"

    @property
    def host_if(self) -> str:
        return f"umh{self.ident}"  # interface names are at most 15 characters

    @property
    def ns_if(self) -> str:
        return f"umn{self.ident}"

    @property
    def _log(self) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"netns-{self.name}.log"

    def create(self) -> NetNamespace:
        require_root("the network-namespace lab")
        self._ip = ip = require_binary("ip")
        self._nft = require_binary("nft")
        net = _pick_subnet(ip)
        hosts = list(net.hosts())
        self.address = NsAddress(str(hosts[0]), str(hosts[1]), net.prefixlen)
        log = self._log
        try:
            _run([ip, "netns", "add", self.name], log=log)
            self._created = True
            _run([ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if], log=log)
            _run([ip, "link", "set", self.ns_if, "netns", self.name], log=log)
            host_cidr = f"{self.address.host_ip}/{net.prefixlen}"
            _run([ip, "addr", "add", host_cidr, "dev", self.host_if], log=log)
            _run([ip, "link", "set", self.host_if, "up"], log=log)
            _run([ip, "-n", self.name, "link", "set", "lo", "up"], log=log)
            ns_cidr = f"{self.address.ns_ip}/{net.prefixlen}"
            _run([ip, "-n", self.name, "addr", "add", ns_cidr, "dev", self.ns_if], log=log)
            _run([ip, "-n", self.name, "link", "set", self.ns_if, "up"], log=log)
            if self.nft_rules:
                self.load_nft(self.nft_rules)
        except BaseException:
            self.delete()
            raise
        return self

    def load_nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (nft -f syntax) inside the namespace."""
        _run([self._ip, "netns", "exec", self.name, self._nft, "-f", "-"], input_text=ruleset, log=self._log)

    def nft_list(self) -> str:
        return _run([self._ip, "netns", "exec", self.name, self._nft, "list", "ruleset"])

    def delete(self) -> None:
        """Remove the namespace and both veth ends; safe to call twice or after a half-done create()."""
        if self._created:
            with contextlib.suppress(LabError):
                _run([self._ip, "netns", "delete", self.name], log=self._log)
            self._created = False
        # If the veth was made but never moved into the namespace, its host end survives: remove it.
        if Path(f"/sys/class/net/{self.host_if}").exists():
            with contextlib.suppress(LabError):
                _run([self._ip, "link", "delete", self.host_if], log=self._log)

    def exists(self) -> bool:
        return Path(f"/run/netns/{self.name}").exists()

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec NAME ...`), e.g. for a `LabProcess`."""
        return [self._ip, "netns", "exec", self.name, *argv]

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def blackhole_ruleset(
    *, drop_ports: Sequence[int], reset_ports: Sequence[int], unreachable_ports: Sequence[int] = ()
) -> str:
    """An inet filter table: SYNs to `drop_ports` vanish, `reset_ports` get a TCP RST, `unreachable_ports` an
    ICMP host-unreachable (the kernel rate-limits those: one connect per test is fine, a flood is not)."""
    rules = [f"        tcp dport {p} drop" for p in drop_ports]
    rules += [f"        tcp dport {p} reject with tcp reset" for p in reset_ports]
    rules += [f"        tcp dport {p} reject with icmp type host-unreachable" for p in unreachable_ports]
    return (
        "table inet umprobe_lab {\n"
        "    chain input {\n"
        "        type filter hook input priority 0; policy accept;\n" + "\n".join(rules) + "\n    }\n}\n"
    )


def udp_loss_ruleset(
    *,
    device: str,
    drop: tuple[int, int] | None = None,
    lossy_input: tuple[int, int] | None = None,
    lossy_output: tuple[int, int] | None = None,
    lossy_egress: tuple[int, int] | None = None,
    percent: int = 5,
) -> str:
    """Tables `inet umprobe_udp` and `netdev umprobe_udp_egress` (replacing earlier ones atomically) that
    shape UDP inside the namespace; `device` is the namespace's end of the veth (`NetNamespace.ns_if`):

    - `drop`: datagrams *to* ports LO-HI vanish (input hook): a firewalled block of an RTP range;
    - `lossy_input`: `percent` % of the datagrams *to* ports LO-HI vanish at random: forward loss;
    - `lossy_output`: `percent` % of the datagrams sent *from* ports LO-HI are dropped in the output hook.
      The kernel tells the sending program (sendto fails with EPERM), so this is the sender's own host
      firewall refusing the packet, not loss on the path;
    - `lossy_egress`: the same drop on the way out of `device` (netdev egress hook, Linux 5.16+): the
      sender's send succeeds and the datagram is lost afterwards, as on the path: return loss.

    `numgen random mod 100 < P drop` is what LAB.md measured (5.0 % over 2,000 packets); tc netem is not
    available on these kernels.
    """
    random = f"numgen random mod 100 < {percent} drop"
    inbound, outbound, egress = [], [], []
    if drop is not None:
        inbound.append(f"udp dport {drop[0]}-{drop[1]} drop")
    if lossy_input is not None:
        inbound.append(f"udp dport {lossy_input[0]}-{lossy_input[1]} {random}")
    if lossy_output is not None:
        outbound.append(f"udp sport {lossy_output[0]}-{lossy_output[1]} {random}")
    if lossy_egress is not None:
        egress.append(f"udp sport {lossy_egress[0]}-{lossy_egress[1]} {random}")

    def chain(name: str, hook: str, rules: list[str]) -> str:
        head = f"    chain {name} {{\n        type filter hook {hook} priority 0; policy accept;\n"
        return head + "".join(f"        {rule}\n" for rule in rules) + "    }\n"

    def replace(table: str, body: str) -> str:
        # Create it first so that the delete cannot fail, then build it anew: one atomic nft transaction.
        return f"table {table} {{}}\ndelete table {table}\ntable {table} {{\n{body}}}\n"

    return replace(
        "inet umprobe_udp", chain("input", "input", inbound) + chain("output", "output", outbound)
    ) + (replace("netdev umprobe_udp_egress", chain("egress", f'egress device "{device}"', egress)))


_OURS = re.compile(r"^ump-[0-9a-f]{8}-p(?P<pid>[0-9]+)$")


def sweep_stale_namespaces() -> list[str]:
    """Delete lab namespaces whose creating process is gone (a test run that was killed); return their names.

    Only names this module makes (`ump-<8 hex>-p<pid>`) are considered, and only when <pid> is not running.
    """
    removed: list[str] = []
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return removed
    ip = require_binary("ip")
    for entry in sorted(netns_dir.iterdir()):
        match = _OURS.match(entry.name)
        if match is None or Path(f"/proc/{match['pid']}").exists():
            continue
        with contextlib.suppress(LabError):
            _run([ip, "netns", "delete", entry.name])
            removed.append(entry.name)
    return removed
