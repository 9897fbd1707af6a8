"""Benchmark 5: start-up and one-shot, `umprobe check --profile exchange2013` against sipsak once per port.

A local lab answers on the profile's real ports: `umprobe check --profile` has no port override (the
profile decides the ports; `port_map` exists only in probes.toml), so Kamailio listens on 5060-5068 of two
addresses of the loopback network 127.0.0.0/8 that nothing else uses, chosen at random and checked to be
free: address A carries the plain-TCP listeners of UM startup mode TCP (5060, 5062, 5065-5068) and
address B the mutual-TLS listeners of mode TLS (5061, 5063, 5065-5068). A worker port cannot carry both
transports on one address, so Dual mode (which probes every worker port with both) is not measured.

Cases, each a wall time from fork to exit of the whole command (median over rounds, interleaved, the
order alternating between rounds, one unmeasured warm-up run of each first):

* exchange2013 in UM mode TCP: `umprobe check --profile exchange2013 --um-mode tcp A` (one process, 6
  listeners concurrently) against `sipsak --transport=tcp -s sip:A:PORT`, run once per port one after the
  other (6 processes): the shell loop one would write without umprobe;
* exchange2013 in UM mode TLS: `umprobe check --profile exchange2013 --um-mode tls --ca .. --cert .. --key
  .. B` (6 mutual-TLS listeners). No peer: sipsak cannot do mutual TLS (nor TLS 1.3);
* one listener, 5060/tcp: `umprobe check A:5060` against one sipsak, i.e. mostly process start-up.

Every run must succeed (umprobe exit 0 with every listener's result a success; sipsak exit 0 = a 200
answer), else the benchmark fails: a fast failure is not a figure. CPU (user + system) of the child
processes is reported too, from getrusage(RUSAGE_CHILDREN).
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench._common import BenchResult, Options, Row, median

TITLE = "Start-up and one-shot: `umprobe check --profile exchange2013` against sipsak once per port"
NEEDS: tuple[str, ...] = ("kamailio", "sipsak")

TCP_PORTS = (5060, 5062, 5065, 5066, 5067, 5068)  # exchange2013, UM startup mode TCP
TLS_PORTS = (5061, 5063, 5065, 5066, 5067, 5068)  # exchange2013, UM startup mode TLS
PROFILE = "exchange2013"


@dataclass(slots=True)
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)


def _wall(timing: Timing) -> list[float]:
    return timing.wall


def _cpu(timing: Timing) -> list[float]:
    return timing.cpu


def _ports_free(address: str, ports: Sequence[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                    return False
                raise
    return True


def pick_loopback_addresses(count: int, ports: Sequence[int], rng: random.Random | None = None) -> list[str]:
    """`count` distinct random addresses in 127.64.0.0/10 on which every port of `ports` is free."""
    rng = rng or random.Random()
    found: list[str] = []
    for _ in range(200):
        address = f"127.{rng.randint(64, 127)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if address not in found and _ports_free(address, ports):
            found.append(address)
            if len(found) == count:
                return found
    raise RuntimeError(
        f"ports {', '.join(map(str, ports))} are taken on every loopback address tried "
        "(something listens on 0.0.0.0 on one of them); free them to run this benchmark"
    )


def timed(
    argv: Sequence[str], *, timeout: float = 30.0, env: dict[str, str] | None = None
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Run `argv` to its end: (wall seconds, CPU seconds of the child, the completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done


def _check_umprobe(done: subprocess.CompletedProcess[str], expected: int, what: str) -> None:
    try:
        report = json.loads(done.stdout)
        successes = sum(1 for r in report["results"] if r.get("success"))
    except (ValueError, KeyError, TypeError):
        report, successes = None, -1
    if done.returncode != 0 or successes != expected:
        raise RuntimeError(
            f"{what}: exit {done.returncode}, {successes} of {expected} listeners succeeded: "
            f"{(done.stdout + done.stderr).strip()[:600]}"
        )


def _check_sipsak(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(
            f"{what}: sipsak exit {done.returncode}: {(done.stdout + done.stderr).strip()[:400]}"
        )


def run(opts: Options) -> BenchResult:
    from bench._lab import build_bench_pki, start_kamailio, tool_version, umprobe_argv
    from tests.lab.kamailio import Listener, TlsPolicy
    from tests.lab.proc import require_binary

    result = BenchResult("startup", TITLE)
    sipsak = require_binary("sipsak")
    umprobe = umprobe_argv()
    pki = build_bench_pki(opts.workdir / "pki")
    tcp_addr, tls_addr = pick_loopback_addresses(2, sorted(set(TCP_PORTS) | set(TLS_PORTS)))

    def listeners() -> list[Listener]:
        return [Listener(f"tcp{p}", "tcp", tcp_addr, p) for p in TCP_PORTS] + [
            Listener(f"tls{p}", "tls", tls_addr, p, TlsPolicy()) for p in TLS_PORTS
        ]

    opts.log(f"Kamailio on {tcp_addr} (TCP {TCP_PORTS}) and {tls_addr} (mutual TLS {TLS_PORTS})")
    kamailio = start_kamailio(listeners, opts.workdir, pki, name="kamailio-startup")
    tls_args = [
        "--ca",
        str(pki.ca_file),
        "--cert",
        str(pki.client_ec.cert_file),
        "--key",
        str(pki.client_ec.key_file),
        "--server-name",
        "localhost",
    ]
    commands: dict[str, list[list[str]]] = {
        "profile_tcp_umprobe": [
            [*umprobe, "check", "--json", "--profile", PROFILE, "--um-mode", "tcp", tcp_addr]
        ],
        "profile_tcp_sipsak": [[sipsak, "--transport=tcp", "-s", f"sip:{tcp_addr}:{p}"] for p in TCP_PORTS],
        "profile_tls_umprobe": [
            [*umprobe, "check", "--json", "--profile", PROFILE, "--um-mode", "tls", *tls_args, tls_addr]
        ],
        "one_umprobe": [[*umprobe, "check", "--json", f"{tcp_addr}:5060"]],
        "one_sipsak": [[sipsak, "--transport=tcp", "-s", f"sip:{tcp_addr}:5060"]],
    }
    # umprobe runs as installed: with a bytecode cache (here in the work directory, so the tree stays
    # clean), also where the environment says PYTHONDONTWRITEBYTECODE=1 and every start would compile
    # umprobe's sources again.
    umprobe_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    umprobe_env["PYTHONPYCACHEPREFIX"] = str(opts.workdir / "pycache")
    expected = {
        "profile_tcp_umprobe": len(TCP_PORTS),
        "profile_tls_umprobe": len(TLS_PORTS),
        "one_umprobe": 1,
    }
    timings = {key: Timing() for key in commands}

    def once(key: str) -> tuple[float, float]:
        wall = cpu = 0.0
        for argv in commands[key]:
            w, c, done = timed(argv, env=umprobe_env if key in expected else None)
            wall += w
            cpu += c
            if key in expected:
                _check_umprobe(done, expected[key], key)
            else:
                _check_sipsak(done, key)
        return wall, cpu

    try:
        # Warm-up, not measured: the bytecode cache, the page cache, Kamailio's first connections (--quick:
        # one run of each program fills the caches).
        for key in ("profile_tcp_umprobe", "one_sipsak") if opts.quick else commands:
            once(key)
        keys = list(commands)
        for rnd in range(opts.rounds):
            for key in keys if rnd % 2 == 0 else list(reversed(keys)):
                wall, cpu = once(key)
                timings[key].add(wall, cpu)
            opts.log(
                f"round {rnd + 1}/{opts.rounds}: "
                + ", ".join(f"{k} {timings[k].wall[-1] * 1000:.0f} ms" for k in keys)
            )
    finally:
        kamailio.stop()

    peer = f"sipsak {tool_version(('sipsak', '--version'))}"

    def rows(case: str, ours: str, theirs: str | None = None) -> list[Row]:
        """Wall time and CPU (medians, in ms) of the command `ours`, beside those of `theirs` if any."""
        out = []
        for metric, pick in (("wall time", _wall), ("CPU (user+system)", _cpu)):
            peer_ms = None if theirs is None else median(pick(timings[theirs])) * 1000
            out.append(
                Row(case, metric, "ms", median(pick(timings[ours])) * 1000, peer_ms, peer if theirs else None)
            )
        return out

    result.rows += rows(
        f"{PROFILE}, UM mode TCP: 6 TCP listeners (umprobe: one check; sipsak: once per port, in turn)",
        "profile_tcp_umprobe",
        "profile_tcp_sipsak",
    )
    result.rows += rows(
        f"{PROFILE}, UM mode TLS: 6 mutual-TLS listeners (no peer: sipsak has no mutual TLS)",
        "profile_tls_umprobe",
    )
    result.rows += rows("one listener, 5060/tcp (mostly process start-up)", "one_umprobe", "one_sipsak")
    result.environment.update(
        {
            "lab": f"Kamailio 5.6 on the profile's real ports of loopback addresses {tcp_addr} (TCP) and "
            f"{tls_addr} (mutual TLS, ECDSA certificates)",
            "umprobe": " ".join(["umprobe", "check", "--json", "--profile", PROFILE, "..."]),
            "sipsak": "sipsak --transport=tcp -s sip:HOST:PORT, one process per port",
            "rounds": str(opts.rounds),
        }
    )
    result.notes += [
        "Wall time is from fork to exit of each command, so it includes Python's start-up and imports for "
        "umprobe (the one-listener row shows how much) and process start-up for each sipsak.",
        "sipsak has no mutual TLS and no TLS 1.3 (LAB.md), so it is compared on the TCP listeners only; the "
        "mutual-TLS profile row has no peer.",
        "`umprobe check --profile` has no port override, so the lab listens on the real UM ports of two "
        "unused 127.0.0.0/8 addresses; Dual mode is left out because one address cannot serve a worker port "
        "over both TCP and TLS.",
        "umprobe runs with a bytecode cache (PYTHONPYCACHEPREFIX in the work directory), as an installed "
        "package has one; the first, unmeasured run of each command fills it.",
        "The machine is shared with other engineers' test runs: wall times carry their noise.",
    ]
    return result
