"""`umprobe peer` as a user meets it: option parsing, one-line errors, and a real run in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.peer.helpers import LOCAL, SECRET, ControlClient, MediaSocket, free_even_ports
from umprobe.commands.peer_cmd import parse_allow, parse_rtp_range, parse_sip, peer_command
from umprobe.errors import UserError
from umprobe.secretfile import read_secret as read_peer_secret


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "peer.secret"
    path.write_bytes(b"  " + SECRET + b"\n")
    path.chmod(0o600)
    return path


def run(*args: str) -> None:
    peer_command.main(list(args), prog_name="umprobe peer", standalone_mode=False)


# ---------------------------------------------------------------------------------------------------------
# Parsers


def test_parse_rtp_range() -> None:
    assert parse_rtp_range("1024-65535") == (1024, 65535)
    assert parse_rtp_range(" 20000-20001 ") == (20000, 20001)
    for bad, why in [
        ("20000", "expected LO-HI"),
        ("a-b", "expected LO-HI"),
        ("-5-10", "expected LO-HI"),
        ("30000-20000", "must not exceed"),
        ("80-2000", "1024"),
        ("20001-20001", "no even port"),
        ("1024-70000", "65535"),
    ]:
        with pytest.raises(UserError, match=why):
            parse_rtp_range(bad)


def test_parse_allow() -> None:
    assert str(parse_allow("10.0.1.0/24")) == "10.0.1.0/24"
    assert str(parse_allow("2001:db8::/32")) == "2001:db8::/32"
    assert str(parse_allow("192.0.2.7")) == "192.0.2.7/32"
    with pytest.raises(UserError, match=r"host bits set; did you mean 10\.0\.0\.0/8\?"):
        parse_allow("10.1.2.3/8")
    with pytest.raises(UserError, match="not a network in CIDR form"):
        parse_allow("ten.0.0.0/8")
    with pytest.raises(UserError, match="not a network"):
        parse_allow("10.0.0.0/33")


def test_parse_sip() -> None:
    assert parse_sip("tcp:5060") == ("tcp", 5060)
    assert parse_sip("TLS:5061") == ("tls", 5061)
    for bad in ("udp:5060", "tcp", "tcp:x", "tcp:70000", ":5060"):
        with pytest.raises(UserError, match="--sip"):
            parse_sip(bad)


# ---------------------------------------------------------------------------------------------------------
# The secret file


def test_secret_is_stripped(secret_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert read_peer_secret(secret_file) == SECRET
    assert capsys.readouterr().err == ""


def test_secret_file_problems(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_peer_secret(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_bytes(b" \n")
    with pytest.raises(UserError, match="is empty"):
        read_peer_secret(empty)
    short = tmp_path / "short"
    short.write_bytes(b"fifteen-bytes!!\n")
    with pytest.raises(UserError, match="15 bytes; at least 16"):
        read_peer_secret(short)
    with pytest.raises(UserError, match="cannot read"):
        read_peer_secret(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="mode bits are a POSIX notion")
def test_world_readable_secret_is_a_warning(secret_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file.chmod(0o644)
    assert read_peer_secret(secret_file) == SECRET
    err = capsys.readouterr().err
    assert "warning" in err
    assert "readable by every user" in err
    assert err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------
# One-line errors from the command


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rtp-range", "5-10"], "--rtp-range"),
        (["--allow", "10.0.0.1/8"], "host bits"),
        (["--allow", "nonsense"], "--allow"),
        (["--media-host", "peer.example"], "--media-host"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-ca", "ca.pem"], "need --tls-cert"),
        (["--sip", "tls:5061"], "needs --tls-cert"),
        (["--sip", "sctp:5060"], "--sip"),
        (["--listen", "nonsense"], "listen address"),
    ],
)
def test_bad_options_are_user_errors(extra: list[str], message: str, secret_file: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--secret-file", str(secret_file), *extra]
    with pytest.raises(UserError, match=message):
        run(*args)


def test_tls_files_that_do_not_load_are_user_errors(secret_file: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(UserError):
        run(
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            str(secret_file),
            "--tls-cert",
            str(bogus),
            "--tls-key",
            str(bogus),
        )


def test_control_port_in_use_is_a_user_error(secret_file: Path) -> None:
    with socket.socket() as holder:
        holder.bind((LOCAL, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen for control on 127.0.0.1:{port}"):
            run("--listen", f"127.0.0.1:{port}", "--secret-file", str(secret_file))


def test_missing_secret_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        run("--listen", "127.0.0.1:0", "--secret-file", str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------------
# A real run


async def test_peer_command_in_a_subprocess(secret_file: Path) -> None:
    """Start `umprobe peer` as a process, find its port in the start-up log line, measure a port, stop it."""
    code = "from umprobe.commands.peer_cmd import peer_command; peer_command(prog_name='umprobe peer')"
    args = [
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        str(secret_file),
        "--log-format",
        "json",
        "--sip",
        "tcp:0",
    ]
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)
        assert proc.stderr is not None
        buffer = b""
        try:
            while b"peer listening" not in buffer:
                chunk = await proc.stderr.receive_some(65536)
                assert chunk, f"the peer exited early: {buffer.decode(errors='replace')}"
                buffer += chunk
            start = next(json.loads(line) for line in buffer.splitlines() if b"peer listening" in line)
            host, _, port = start["control"][0].rpartition(":")
            assert start["sip"][0].startswith("tcp:127.0.0.1:")
            client = await ControlClient.connect((host, int(port)))
            (p,) = free_even_ports(1)
            opened = await client.open([p])
            assert opened["ports"]["open"] == [p]
            sock = await MediaSocket.bind()
            await sock.send(client.media(0), p)
            assert len(await sock.drain(0.2)) == 1
            sock.close()
            await client.close()
            await client.expect_hangup()
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
            rest = await proc.stderr.receive_some(65536)
            while chunk := await proc.stderr.receive_some(65536):
                rest += chunk
            events = [
                json.loads(line)["msg"] for line in (buffer + rest).splitlines() if line.startswith(b"{")
            ]
            assert events == ["peer listening", "session opened", "session closed", "peer stopped"]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
