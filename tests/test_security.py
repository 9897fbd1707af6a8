"""Safe by default (SECURITY.md): each guarantee umprobe makes about itself is a test here.

* TLS verification is on unless `--insecure` / `insecure = true` says otherwise: a wrong-name or untrusted
  server fails the check and the daemon's probe; verification off is counted by the label-free gauge
  `umprobe_config_insecure_probes`.
* A private key or secret file every user or its group may read gets a warning naming the file and its
  mode: on stderr from the command line, as a log line from the daemon (at start and on every reload; the
  daemon lets the group it runs as be, which is how `root:umprobe 0640` hands a service its key).
* Secrets are never logged or shown: the daemon, the echo peer and the command line run with a known
  secret and known keys, and every log line, the status page, /metrics, /probe (with debug) and every
  `--json` is searched for the secret's and the keys' bytes (raw, hex, base64).
* `/probe` honours the target allowlist, also for the spellings that try to get around it.
* The exporter binds where the docs say: 127.0.0.1:9874 unless told otherwise (checked inside a network
  namespace of its own, where that port is surely free).
* The echo peer's amplification ratio (bytes out / bytes in) over a mixed stream of valid and invalid
  datagrams on real sockets is at most 1.0 (tests/peer/test_abuse.py checks the drops one by one).

Only loopback and namespaces this file creates are used; every process started here is killed by its PID.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.daemon_helpers import UmprobeProcess
from tests.lab.netns import NetNamespace
from tests.peer.helpers import (
    LOCAL,
    OTHER,
    ControlClient,
    MediaSocket,
    free_even_ports,
    media_packet,
    running_peer,
)
from tests.test_exporter import TCP, TLS, http, make_config, running
from tests.test_metrics import collect, rtp_config
from umprobe.config import ExporterConfig, load_config, parse_config
from umprobe.devcerts import DevCA
from umprobe.logs import FIELDS_ATTR
from umprobe.media.packet import session_key
from umprobe.net.tls import make_server_context
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.probes.result import Reason
from umprobe.probes.sip_options import TLSContextCache, probe
from umprobe.secretfile import config_exposures, exposure, log_exposed
from umprobe.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "umprobe.cli"]
SECRET = b"umprobe-canary-SECRET-7Hq2vX9pLw3Z"
WAIT = 30.0  # seconds: the bound of any single wait for a subprocess, never a performance expectation


# -- a throwaway PKI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]  # localhost, 127.0.0.1 from the CA
    wrong_name: tuple[Path, Path]  # other.test only, from the CA
    rogue: tuple[Path, Path]  # localhost, 127.0.0.1 from a CA nobody trusts
    client: tuple[Path, Path]
    peer: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("security-pki")
    ca, rogue = DevCA.create("security test CA"), DevCA.create("rogue CA")
    return Pki(
        ca=ca.write_ca(directory, "ca"),
        server=ca.issue(["localhost", "127.0.0.1"]).write(directory, "server"),
        wrong_name=ca.issue(["other.test"]).write(directory, "wrong-name"),
        rogue=rogue.issue(["localhost", "127.0.0.1"]).write(directory, "rogue"),
        client=ca.issue(["probe.test"], server_auth=False).write(directory, "client"),
        peer=ca.issue(["localhost", "127.0.0.1"]).write(directory, "peer"),
    )


@asynccontextmanager
async def tls_sip_server(pair: tuple[Path, Path], **kwargs: Any) -> AsyncIterator[int]:
    """umprobe's SIP responder over TLS with certificate `pair`, on 127.0.0.1; yields the port."""
    context = make_server_context(cert_file=str(pair[0]), key_file=str(pair[1]), **kwargs)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(
            lambda task_status: serve_sip_responder(listeners, tls_context=context, task_status=task_status)
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT):
        return await trio.run_process([*CLI, *args], capture_stdout=True, capture_stderr=True, check=False)


# ---------------------------------------------------------------------------------------------------------
# TLS verification is on unless insecure is explicit


@pytest.mark.parametrize("server", ["wrong_name", "rogue"])
async def test_check_verifies_unless_insecure(pki: Pki, server: str) -> None:
    async with tls_sip_server(getattr(pki, server)) as port:
        target = f"127.0.0.1:{port}"
        out = await cli("check", "--transport", "tls", "--ca", str(pki.ca), "--json", target)
        report = json.loads(out.stdout)
        assert out.returncode == 2, out.stderr  # CRITICAL
        (row,) = report["results"]
        assert (row["reason"], row["insecure"], row["tls"]["verified"]) == ("tls_verify_failed", False, False)
        # Without --ca the system's trust store is used: our throwaway CA is in none, so it fails too.
        out = await cli("check", "--transport", "tls", "--json", target)
        assert out.returncode == 2 and json.loads(out.stdout)["results"][0]["reason"] == "tls_verify_failed"
        # Only the explicit flag turns verification off, and every output says so.
        out = await cli("check", "--transport", "tls", "--ca", str(pki.ca), "--insecure", "--json", target)
        (row,) = json.loads(out.stdout)["results"]
        assert (row["reason"], row["insecure"], row["tls"]["verified"]) == ("ok", True, False)
        text = await cli("check", "--transport", "tls", "--ca", str(pki.ca), "--insecure", target)
        assert b"(insecure)" in text.stdout and b"were NOT verified" in text.stdout
        # The control: the right certificate verifies.
    async with tls_sip_server(pki.server) as port:
        out = await cli("check", "--transport", "tls", "--ca", str(pki.ca), "--json", f"127.0.0.1:{port}")
        assert out.returncode == 0 and json.loads(out.stdout)["results"][0]["tls"]["verified"] is True


def probes_toml(tmp_path: Path, pki: Pki, port: int, *, extra: str = "") -> Path:
    path = tmp_path / "probes.toml"
    path.write_text(
        f"""
[defaults]
families = ["ipv4"]

[modules.mtls]
transport = "tls"
ca_file = "{pki.ca}"
{extra}

[[targets]]
host = "127.0.0.1"
module = "mtls"
port = {port}
"""
    )
    return path


@pytest.mark.parametrize(
    ("server", "insecure", "reason"),
    [
        ("wrong_name", "", Reason.TLS_VERIFY_FAILED),
        ("rogue", "", Reason.TLS_VERIFY_FAILED),
        ("rogue", "insecure = false", Reason.TLS_VERIFY_FAILED),
        ("rogue", "insecure = true", Reason.OK),
        ("server", "", Reason.OK),
    ],
)
async def test_config_verifies_unless_insecure(
    pki: Pki, tmp_path: Path, server: str, insecure: str, reason: Reason
) -> None:
    async with tls_sip_server(getattr(pki, server)) as port:
        config = load_config(probes_toml(tmp_path, pki, port, extra=insecure))
        (configured,) = config.probes
        assert configured.spec.tls is not None
        assert configured.spec.tls.insecure is (insecure == "insecure = true")
        with trio.fail_after(WAIT):
            (result,) = await probe(
                configured.spec, deadline=trio.current_time() + 5, contexts=TLSContextCache()
            )
        assert result.reason is reason, result.detail
        assert result.insecure is configured.spec.tls.insecure
        store = ResultStore()
        store.set_probes(config.probes)
        store.record(configured, [result])
        page, raw = collect(store)
        assert page.value("umprobe_config_insecure_probes") == (1 if result.insecure else 0)
        assert (
            b"umprobe_config_insecure_probes" in raw and b"# TYPE umprobe_config_insecure_probes gauge" in raw
        )


def test_insecure_probes_gauge_counts_sip_listeners_and_rtp_control_channels(tmp_path: Path) -> None:
    text = """
[defaults]
families = ["ipv4"]

[modules.strict]
transport = "tls"

[modules.lax]
transport = "tls"
insecure = true

[[targets]]
host = ["cas01.contoso.local", "cas02.contoso.local"]
module = "lax"

[[targets]]
host = "cas03.contoso.local"
module = "strict"

[[targets]]
host = "mbx01.contoso.local"
profile = "exchange2016"
um_mode = "tcp"

[[rtp]]
peer = "mbx01.contoso.local:7900"
secret_file = "peer.secret"
tls = true
insecure = true

[[rtp]]
peer = "mbx02.contoso.local:7900"
secret_file = "peer.secret"
tls = true
"""
    config = parse_config(text, check_files=False)
    store = ResultStore()
    store.set_probes(config.probes)
    store.set_rtp(config.rtp)
    page, _ = collect(store)
    assert page.get("umprobe_config_insecure_probes") == [({}, 3.0)]  # two lax listeners, one RTP peer
    # Plain TCP probes never count, and nothing configured reads 0 (present, so `> 0` alerts work).
    store.set_probes([TCP, TLS])
    store.set_rtp([rtp_config()])
    page, _ = collect(store)
    assert page.get("umprobe_config_insecure_probes") == [({}, 0.0)]


# ---------------------------------------------------------------------------------------------------------
# Private files readable by others are warned about


FOREIGN_GID = 65534  # nogroup: a group umprobe (root, in CI) does not run as


def private_file(path: Path, data: bytes, mode: int, *, foreign_group: bool = False) -> Path:
    """Write `path` with `mode`; with `foreign_group`, owned by a group other than the one we run as."""
    path.write_bytes(data)
    path.chmod(mode)
    if foreign_group:
        try:
            os.chown(path, -1, FOREIGN_GID)
        except PermissionError:  # pragma: no cover - CI runs as root
            pytest.fail("giving a file to another group needs root (scripts/test runs as root)")
        assert path.stat().st_gid != os.getegid()
    return path


def its_group(path: Path) -> str:
    return f"its group (gid {path.stat().st_gid})"


def key_and_secret_config(directory: Path, pki: Pki) -> Path:
    """probes.toml in `directory` naming the private files next to it: client.key (a module's key_file)
    and peer.secret (an [[rtp]] peer's secret_file)."""
    path = directory / "probes.toml"
    path.write_text(
        f"""
[modules.mtls]
transport = "tls"
ca_file = "{pki.ca}"
cert_file = "{pki.client[0]}"
key_file = "client.key"

[[rtp]]
peer = "mbx01.contoso.local:7900"
secret_file = "peer.secret"
"""
    )
    return path


@pytest.mark.parametrize(
    ("mode", "foreign", "own_gid", "readers"),
    [
        (0o600, False, None, None),
        (0o400, True, None, None),
        (0o640, False, None, "group"),  # the command line: any group read bit
        (0o640, False, os.getegid(), None),  # the daemon: its own group is how a service gets a root key
        (0o640, True, os.getegid(), "group"),  # ... but not another group
        (0o604, False, os.getegid(), "every user"),
        (0o644, True, None, "every user"),
    ],
)
def test_exposure(tmp_path: Path, mode: int, foreign: bool, own_gid: int | None, readers: str | None) -> None:
    path = private_file(tmp_path / "probe.key", b"x", mode, foreign_group=foreign)
    found = exposure(path, what="--key", own_gid=own_gid)
    if readers == "group":
        readers = its_group(path)
    if readers is None:
        assert found is None
        return
    assert found is not None and found.readers == readers
    message = found.message()
    assert message.startswith(f"--key {path} is readable by {readers} (mode {mode:04o})")
    assert f"chmod 600 {path}" in message and "\n" not in message
    assert exposure(tmp_path / "missing.key", what="--key") is None  # whoever opens it says why it cannot


async def test_check_warns_about_a_key_others_may_read(pki: Pki, tmp_path: Path) -> None:
    key = private_file(tmp_path / "client.key", pki.client[1].read_bytes(), 0o640)
    async with tls_sip_server(pki.server, ca_file=str(pki.ca), require_client_cert=True) as port:
        args = ["check", "--transport", "tls", "--ca", str(pki.ca), "--cert", str(pki.client[0])]
        out = await cli(*args, "--key", str(key), f"127.0.0.1:{port}")
        assert out.returncode == 0, out.stdout + out.stderr  # a warning, not an error
        assert out.stderr.decode() == (
            f"umprobe: warning: --key {key} is readable by {its_group(key)} (mode 0640); `chmod 600 {key}`\n"
        )
        key.chmod(0o600)
        out = await cli(*args, "--key", str(key), f"127.0.0.1:{port}")
        assert out.returncode == 0 and out.stderr == b""


def test_config_check_warns_about_key_and_secret_files(pki: Pki, tmp_path: Path) -> None:
    key = private_file(tmp_path / "client.key", pki.client[1].read_bytes(), 0o644)
    secret = private_file(tmp_path / "peer.secret", SECRET + b"\n", 0o640)
    path = key_and_secret_config(tmp_path, pki)
    found = config_exposures(load_config(path))
    assert [(e.what, Path(e.path), e.mode_text) for e in found] == [
        ("modules.mtls.key_file", key, "0644"),
        ("secret_file of [[rtp]] peer mbx01.contoso.local", secret, "0640"),
    ]
    out = subprocess.run([*CLI, "config", "check", str(path)], capture_output=True, timeout=WAIT, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr.decode().splitlines() == [
        f"umprobe: warning: modules.mtls.key_file {key} is readable by every user (mode 0644); "
        f"`chmod 600 {key}`",
        f"umprobe: warning: secret_file of [[rtp]] peer mbx01.contoso.local {secret} is readable by "
        f"{its_group(secret)} (mode 0640); `chmod 600 {secret}`",
    ]
    assert SECRET not in out.stdout + out.stderr


def test_the_daemon_logs_private_files_others_may_read(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's check (umprobe.daemon calls it at start and on every reload): a log line per file, and a
    group read bit for the group it runs as is how a service is handed a root-owned key, not a warning."""
    key = private_file(tmp_path / "client.key", pki.client[1].read_bytes(), 0o640)  # our own group
    secret = private_file(tmp_path / "peer.secret", SECRET + b"\n", 0o640, foreign_group=True)
    path = key_and_secret_config(tmp_path, pki)
    logger = logging.getLogger("umprobe.test_security")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        found = log_exposed(load_config(path), logger, own_gid=os.getegid())
    assert [Path(e.path) for e in found] == [secret]
    (record,) = caplog.records
    assert record.getMessage() == "private file is readable by other users"
    fields = getattr(record, FIELDS_ATTR)
    assert (fields["file"], fields["mode"], fields["gid"]) == (str(secret), "0640", FOREIGN_GID)
    assert fields["what"] == "secret_file of [[rtp]] peer mbx01.contoso.local"
    assert str(key) not in str(fields)


# ---------------------------------------------------------------------------------------------------------
# Secrets are never logged or shown


def forbidden(secret: bytes, keys: Sequence[Path]) -> dict[str, bytes]:
    """What must never appear: the secret (raw, hex, base64) and each private key (PEM lines, DER, scalar)."""
    out = {
        "secret": secret,
        "secret hex": secret.hex().encode(),
        "secret base64": base64.b64encode(secret),
        "secret base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
    }
    for key in keys:
        pem = key.read_bytes()
        lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
        for i, line in enumerate(lines):
            out[f"{key.name} PEM line {i}"] = line
        der = base64.b64decode(b"".join(lines))
        out[f"{key.name} DER hex"] = der.hex().encode()
        private = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        scalar = private.private_numbers().private_value.to_bytes(32, "big")
        out[f"{key.name} scalar hex"] = scalar.hex().encode()
        out[f"{key.name} scalar base64"] = base64.b64encode(scalar)
    return out


def leaks(haystacks: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    found = []
    for where, text in haystacks.items():
        lowered = text.lower()
        for what, needle in needles.items():
            if needle in text or (what.endswith("hex") and needle.lower() in lowered):
                found.append(f"{what} in {where}")
    return found


@dataclass
class Process:
    """A subprocess started here, its stdout and stderr collected as they come."""

    name: str
    proc: trio.Process
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)

    async def pump(self) -> None:
        async def read(stream: trio.abc.ReceiveStream | None, into: bytearray) -> None:
            assert stream is not None
            while chunk := await stream.receive_some(65536):
                into += chunk

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, self.proc.stdout, self.out)
            nursery.start_soon(read, self.proc.stderr, self.err)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in bytes(self.err).splitlines():
            if line.startswith(b"{"):
                out.append(json.loads(line))
        return out

    async def wait_for(self, what: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        with trio.move_on_after(WAIT):
            while True:
                for record in self.records():
                    if match(record):
                        return record
                if self.proc.returncode is not None:
                    break
                await trio.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no {what}; rc={self.proc.returncode}; stderr:\n{self.err.decode()}"
        )


@asynccontextmanager
async def started(name: str, argv: Sequence[str]) -> AsyncIterator[Process]:
    proc = await trio.lowlevel.open_process(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process = Process(name, proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(process.pump)
            yield process
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


async def get(port: int, target: str) -> bytes:
    with trio.fail_after(WAIT):
        reply = await http(port, "GET", target)
    assert reply.status == 200, (target, reply.status, reply.body[:300])
    return reply.body


async def test_secrets_are_never_logged_or_shown(pki: Pki, tmp_path: Path) -> None:
    secret_file = tmp_path / "peer.secret"
    secret_file.write_bytes(SECRET + b"\n")
    secret_file.chmod(0o644)  # readable by every user: warned about, never shown
    client_key = private_file(tmp_path / "client.key", pki.client[1].read_bytes(), 0o640, foreign_group=True)
    needles = forbidden(SECRET, [client_key, pki.peer[1], pki.server[1]])
    haystacks: dict[str, bytes] = {}
    peer_args = [
        "--secret-file",
        str(secret_file),
        "--tls-cert",
        str(pki.peer[0]),
        "--tls-key",
        str(pki.peer[1]),
    ]
    peer_args += [
        "--tls-ca",
        str(pki.ca),
        "--require-client-cert",
        "--sip",
        "tls:0",
        "--rtp-range",
        "40000-40999",
    ]
    async with started(
        "peer",
        [*CLI, "peer", "--listen", "127.0.0.1:0", *peer_args, "--log-format", "json", "--log-level", "debug"],
    ) as peer:
        listening = await peer.wait_for("start-up line", lambda r: r.get("msg") == "peer listening")
        control = listening["control"][0]
        sip_port = int(listening["sip"][0].rpartition(":")[2])
        config = tmp_path / "probes.toml"
        config.write_text(
            f"""
[defaults]
families = ["ipv4"]
interval = 1
timeout = 0.9

[modules.mtls]
transport = "tls"
ca_file = "{pki.ca}"
cert_file = "{pki.client[0]}"
key_file = "client.key"

[[targets]]
host = "127.0.0.1"
module = "mtls"
port = {sip_port}

[[rtp]]
peer = "{control}"
secret_file = "peer.secret"
range = "40000-40999"
samples = 2
packets = 5
concurrency = 2
interval = 5
tls = true
ca_file = "{pki.ca}"
cert_file = "{pki.client[0]}"
key_file = "client.key"

[log]
level = "debug"
format = "json"
"""
        )
        daemon_argv = [*CLI, "run", "-c", str(config), "--listen", "127.0.0.1:0"]
        async with started("daemon", daemon_argv) as daemon:
            running_record = await daemon.wait_for(
                "start-up line", lambda r: r.get("msg") == "umprobe running"
            )
            port = int(str(running_record["listen"]).split()[0].rpartition(":")[2])
            # Both private files others may read are named in a warning line, with their modes.
            warned = {
                (r["file"], r["mode"])
                for r in daemon.records()
                if r.get("msg") == "private file is readable by other users"
            }
            assert warned == {(str(client_key), "0640"), (str(secret_file), "0644")}
            with trio.fail_after(WAIT):
                while True:
                    metrics = await get(port, "/metrics")
                    if re.search(rb"umprobe_probe_success\{[^}]*\} 1\.0", metrics) and re.search(
                        rb"umprobe_rtp_probe_success\{[^}]*\} 1\.0", metrics
                    ):
                        break
                    await trio.sleep(0.2)
            assert b"umprobe_config_insecure_probes 0.0" in metrics
            haystacks["/metrics"] = metrics
            status = await get(port, "/")
            assert str(secret_file).encode() in status  # the path is shown; the contents never are
            haystacks["status page"] = status
            target = urllib.parse.quote(f"127.0.0.1:{sip_port}")
            debug = await get(port, f"/probe?target={target}&module=mtls&debug=true")
            assert b"OPTIONS sip:" in debug and b"our client certificate" in debug
            haystacks["/probe?debug=true"] = debug
            haystacks["/probe"] = await get(port, f"/probe?target={target}&module=mtls")
            daemon.proc.send_signal(signal.SIGHUP)  # a reload logs the warnings again
            await daemon.wait_for(
                "reload", lambda r: r.get("msg") == "config reloaded" and r.get("source") == "SIGHUP"
            )
            # The command line, against the same peer.
            tls_client = ["--ca", str(pki.ca), "--cert", str(pki.client[0]), "--key", str(client_key)]
            for name, args in {
                "check --json -v": [
                    "check",
                    "--transport",
                    "tls",
                    *tls_client,
                    "--json",
                    "-v",
                    f"127.0.0.1:{sip_port}",
                ],
                "check -v": ["check", "--transport", "tls", *tls_client, "-v", f"127.0.0.1:{sip_port}"],
                "rtp --json": [
                    "rtp",
                    "--secret-file",
                    str(secret_file),
                    "--tls",
                    *tls_client,
                    "--range",
                    "40000-40999",
                    "--samples",
                    "2",
                    "--packets",
                    "5",
                    "--json",
                    control,
                ],
                "config check": ["config", "check", str(config)],
            }.items():
                out = await cli(*args)
                assert out.returncode == 0, (name, out.stdout[-2000:], out.stderr[-2000:])
                haystacks[f"`umprobe {name}` stdout"] = out.stdout
                haystacks[f"`umprobe {name}` stderr"] = out.stderr
            assert json.loads(haystacks["`umprobe rtp --json` stdout"])  # it measured something
            assert b"is readable by every user (mode 0644)" in haystacks["`umprobe rtp --json` stderr"]
            assert b"--key" in haystacks["`umprobe check -v` stderr"]
        haystacks["daemon log"] = bytes(daemon.err) + bytes(daemon.out)
        assert (
            sum(1 for r in daemon.records() if r.get("msg") == "private file is readable by other users") == 4
        )
    haystacks["peer log"] = bytes(peer.err) + bytes(peer.out)
    assert b"--secret-file" in peer.err and b"(mode 0644)" in peer.err
    assert b"session opened" in peer.err
    assert not leaks(haystacks, needles), leaks(haystacks, needles)
    assert leaks({"a log": b"x " + SECRET.hex().upper().encode()}, needles) == ["secret hex in a log"]


# ---------------------------------------------------------------------------------------------------------
# /probe honours the allowlist


@pytest.mark.parametrize(
    ("target", "allow"),
    [
        ("sip:mbx09.contoso.local:5061;transport=tls", ()),
        ("sips:mbx09.contoso.local", ()),
        (
            "sip:cas01.contoso.local@mbx09.contoso.local",
            (),
        ),  # userinfo names an allowed host, the host is not
        ("sip:mbx09.contoso.local;maddr=cas01.contoso.local", ()),
        ("cas01.contoso.local.evil.example", ()),
        ("127.0.0.1:9874", ()),  # the exporter's own host: never probed unless configured
        ("[::1]:5060", ()),
        ("[::ffff:192.0.2.10]:5060", ()),  # the configured 192.0.2.10, but not as configured
        ("3221225994:5060", ()),  # 192.0.2.10 as a number: a name here, never resolved to be allowed
        ("192.0.2.010", ()),  # octal to a resolver: not the configured address
        ("mbx01.contoso.local", ()),  # an [[rtp]] peer's host is not a SIP target
        ("contoso.local", ("*.contoso.local",)),
        ("evil-contoso.local", ("*.contoso.local",)),
        ("10.1.2.3.nip.io", ("10.0.0.0/8",)),
        ("[::ffff:10.1.2.3]", ("10.0.0.0/8",)),
    ],
)
async def test_probe_allowlist_cannot_be_sidestepped(target: str, allow: tuple[str, ...]) -> None:
    config = make_config(allow=allow)
    config = type(config)(
        source=config.source,
        modules=config.modules,
        probes=config.probes,
        exporter=ExporterConfig(probe_allow=allow),
        rtp=(rtp_config(),),
    )
    assert rtp_config().target == "mbx01.contoso.local"
    with trio.fail_after(10):
        async with running(config=config) as h:
            module = "mtls" if target.startswith("sips:") or "transport=tls" in target else "tcp"
            reply = await http(h.port, "GET", f"/probe?target={urllib.parse.quote(target)}&module={module}")
            assert reply.status == 403, (
                reply.status,
                reply.text,
            )  # judged by the allowlist, not refused earlier
            assert "is not allowed" in reply.text
            assert h.fake.calls == []  # nothing was sent anywhere


async def test_probe_allowlist_admits_what_it_lists() -> None:
    """The control for the test above: the same exporter does probe what is configured or listed."""
    with trio.fail_after(10):
        async with running(config=make_config(allow=("*.contoso.local", "198.51.100.0/24"))) as h:
            for target in (
                "sip:CAS01.contoso.local.:5060;transport=tcp",
                "192.0.2.10",
                "mbx09.contoso.local",
                "198.51.100.7:5060",
            ):
                reply = await http(h.port, "GET", f"/probe?target={urllib.parse.quote(target)}&module=tcp")
                assert reply.status == 200, (target, reply.text)
            assert len(h.fake.calls) == 4


# ---------------------------------------------------------------------------------------------------------
# The exporter binds where the docs say


def test_default_listen_address_is_the_documented_one() -> None:
    default = ExporterConfig().listen
    assert default == "127.0.0.1:9874"
    assert parse_config("").exporter.listen == default
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert f'| `listen` | `"HOST:PORT"` | `"{default}"` |' in docs
    help_text = subprocess.run(
        [*CLI, "run", "--help"], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert f"[default: {default}]" in " ".join(help_text.stdout.split())
    security = (ROOT / "SECURITY.md").read_text()
    assert default in security


def _connects(argv_prefix: Sequence[str], host: str, port: int) -> bool:
    code = (
        "import socket, sys\n"
        "s = socket.socket()\ns.settimeout(3)\n"
        f"sys.exit(0 if s.connect_ex(({host!r}, {port})) == 0 else 1)\n"
    )
    out = subprocess.run([*argv_prefix, sys.executable, "-c", code], timeout=WAIT, check=False)
    return out.returncode == 0


@pytest.mark.lab
@pytest.mark.parametrize("listen", [None, "0.0.0.0:9874"])
def test_the_daemon_binds_where_documented(tmp_path: Path, listen: str | None) -> None:
    """In a namespace of its own (so 9874 is surely free): by default only 127.0.0.1 answers; a listen
    address of 0.0.0.0 is what opens it to the network."""
    config = tmp_path / "probes.toml"
    config.write_text(f'[exporter]\nlisten = "{listen}"\n' if listen else "")
    with NetNamespace() as ns:
        assert ns.address is not None
        inside = ns.exec_argv([])
        daemon = UmprobeProcess(["-c", str(config), "--log-format", "json"], prefix=inside)
        try:
            record = daemon.wait_for_record(lambda r: r.get("msg") == "umprobe running", timeout=WAIT)
            assert record["listen"] == ("0.0.0.0:9874" if listen else "127.0.0.1:9874")
            assert _connects(inside, "127.0.0.1", 9874)
            assert _connects(inside, ns.address.ns_ip, 9874) is bool(listen)  # from the namespace's network
            assert _connects([], ns.address.ns_ip, 9874) is bool(listen)  # from the host, over the veth
        finally:
            if daemon.proc.poll() is None:
                os.kill(daemon.proc.pid, signal.SIGTERM)
            daemon.proc.wait(timeout=WAIT)
            daemon.kill()
        assert daemon.proc.returncode == 0, daemon.log()


# ---------------------------------------------------------------------------------------------------------
# The echo peer cannot amplify


async def test_reflector_amplification_ratio_is_at_most_one() -> None:
    """Bytes out / bytes in over real sockets, for a mixed stream where most datagrams deserve an answer
    (the worst case for the ratio): valid media and RTCP, longer RTCP compounds (answered padded to their
    own length), replays, forgeries, other sources, wrong sizes, closed ports."""
    forged_key = session_key(b"another secret, 16 bytes or more", "0" * 32, "1" * 32)
    with trio.fail_after(30):
        async with running_peer() as peer:
            p, q, closed = free_even_ports(3)
            client = await ControlClient.connect(peer)
            await client.open([p, q])
            legit = await MediaSocket.bind(LOCAL)
            third = await MediaSocket.bind(OTHER)
            valid = [client.media(seq) for seq in range(200)]
            for seq, packet in enumerate(valid):
                await legit.send(packet, p if seq % 2 else q)
                if seq % 10 == 0:
                    await legit.send(client.rtcp(seq // 10), p + 1)
                    await legit.send(client.rtcp(1000 + seq, ssrc=7), q + 1)
                if seq % 25 == 0:
                    await legit.send(packet, p if seq % 2 else q)  # a replay
                    await legit.send(media_packet(forged_key, client.ssid, 5000 + seq), p)
                    await third.send(client.media(9000 + seq), p)
                    await legit.send(packet[:100], q)
                    await legit.send(packet + b"\xff" * 500, q)
                    await legit.send(client.media(7000 + seq), closed)
            answered = await legit.drain(0.3)
            assert await third.drain(0.05) == []
            sent = legit.sent_bytes + third.sent_bytes
            received = legit.received_bytes + third.received_bytes
            ratio = received / sent
            peer_ratio = peer.reflector.bytes_out / peer.reflector.bytes_in
            print(
                f"amplification: {received} bytes out / {sent} bytes in = {ratio:.3f} "
                f"(the peer's own count: {peer_ratio:.3f})"
            )
            assert len(answered) >= 150  # the stream really was mostly answerable
            assert ratio <= 1.0 and peer_ratio <= 1.0
            assert all(len(reply) in (172, len(client.rtcp(0))) for reply in answered)
            legit.close()
            third.close()
            await client.aclose()
