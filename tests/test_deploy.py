"""The service units (deploy/) and the operations guide (docs/operations.md), checked as far as a machine
without systemd as PID 1 allows:

- `systemd-analyze verify` accepts both units, and `systemd-analyze security --offline=yes` rates them as
  the guide says. verify needs each unit's ExecStart binary to exist, so the units are verified from a
  copy whose /usr/local/bin/umprobe points at this environment's umprobe (the walk-through below verifies
  the unchanged files, at their installed paths, with umprobe installed there).
- The units' command lines work: ExecStart, expanded as systemd would (Environment=, EnvironmentFile=,
  `$VAR` split on spaces, `${VAR}` as one word, `%d` the credentials directory), starts the daemon and the
  peer; the daemon's ExecReload lines reject a broken config and reload a good one; SIGTERM stops both.
- MemoryDenyWriteExecute= would break TLS: shown with the kernel's PR_SET_MDWE, the same rule.
- The operations guide, run: every `sh` block of docs/operations.md, in order, as one bash script in a
  private mount namespace whose /etc, /opt and /usr/local are overlays on throw-away directories.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.proc import require_binary
from tests.test_packaging import Dist, build_requirements, built_dist, offline, runtime_wheelhouse
from umprobe._version import __version__
from umprobe.devcerts import DevCA

ROOT = Path(__file__).resolve().parent.parent
UNITS = {name: ROOT / "deploy" / "systemd" / f"{name}.service" for name in ("umprobe", "umprobe-peer")}
INSTALLED_BINARY = "/usr/local/bin/umprobe"
UMPROBE = Path(sys.executable).parent / "umprobe"
GUIDE = ROOT / "docs" / "operations.md"
WAIT = 15.0


def directives(unit: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file by key (`Section.Key`), in order, comments skipped."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{unit.name}: not a Key=value line: {raw!r}"
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def unit_copy(unit: Path, directory: Path) -> Path:
    copy = directory / unit.name
    text = unit.read_text()
    assert INSTALLED_BINARY in text
    copy.write_text(text.replace(INSTALLED_BINARY, str(UMPROBE)))
    return copy


def systemd_analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("systemd-analyze"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


# -- systemd-analyze ---------------------------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert UMPROBE.is_file()
    copies = [unit_copy(unit, tmp_path) for unit in UNITS.values()]
    out = systemd_analyze("verify", *map(str, copies))
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "umprobe" in line]
    assert (out.returncode, complaints) == (0, []), out.stdout + out.stderr


@pytest.mark.parametrize(
    ("find", "replace", "complaint"),
    [
        ("ProtectSystem=strict", "ProtectSystm=strict", "Unknown key"),
        ("SystemCallFilter=@system-service", "SystemCallFilter=@systm-service", "system call group"),
        ("RestartSec=10s", "RestartSec=ten", "Failed to parse"),
        (f"ExecStart={INSTALLED_BINARY}", "ExecStart=/nonexistent/umprobe", "not executable"),
    ],
)
def test_verify_would_catch_a_mistake(tmp_path: Path, find: str, replace: str, complaint: str) -> None:
    """The check above can fail: verify's warnings (it exits 0 on most) are what the test looks at."""
    text = UNITS["umprobe"].read_text()
    assert find in text
    unit = tmp_path / "umprobe.service"
    unit.write_text(text.replace(find, replace).replace(INSTALLED_BINARY, str(UMPROBE)))
    out = systemd_analyze("verify", str(unit))
    assert complaint in out.stdout + out.stderr


def exposure(unit: Path) -> float:
    out = systemd_analyze("security", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    return float(match.group(1))


def test_security_exposure_is_what_the_guide_says(tmp_path: Path) -> None:
    claimed = re.search(r"`systemd-analyze security`\s+rates\s+the unit (\d+\.\d+)", GUIDE.read_text())
    assert claimed, "docs/operations.md no longer states the exposure level"
    for name, unit in UNITS.items():
        score = exposure(unit_copy(unit, tmp_path))
        assert score <= float(claimed.group(1)) <= 2.0, f"{name}.service: exposure {score}"
    # Would it notice? Without the file-system and privilege protections the score rises.
    weak = tmp_path / "weak" / "umprobe.service"
    weak.parent.mkdir()
    lines = unit_copy(UNITS["umprobe"], tmp_path).read_text().splitlines()
    weak.write_text("\n".join(line for line in lines if not line.startswith(("Protect", "Private"))) + "\n")
    assert exposure(weak) > float(claimed.group(1)) + 1


REQUIRED = {
    "Service.NoNewPrivileges": "yes",
    "Service.CapabilityBoundingSet": "",
    "Service.AmbientCapabilities": "",
    "Service.ProtectSystem": "strict",
    "Service.ProtectHome": "yes",
    "Service.PrivateTmp": "yes",
    "Service.PrivateDevices": "yes",
    "Service.ProtectKernelTunables": "yes",
    "Service.ProtectKernelModules": "yes",
    "Service.ProtectKernelLogs": "yes",
    "Service.ProtectControlGroups": "yes",
    "Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "Service.LockPersonality": "yes",
    "Service.ConfigurationDirectory": "umprobe",
    "Service.ReadOnlyPaths": "/etc/umprobe",
    "Service.Restart": "on-failure",
    "Service.RestartSec": "10s",
    "Service.RestartPreventExitStatus": "3",
    "Unit.StartLimitIntervalSec": "300",
    "Unit.StartLimitBurst": "5",
}


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened(name: str) -> None:
    found = directives(UNITS[name])
    for key, value in REQUIRED.items():
        assert found.get(key) == [value], f"{name}.service: {key}={found.get(key)}"
    assert found["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "Service.MemoryDenyWriteExecute" not in found  # see test_memory_deny_write_execute_breaks_tls
    assert found["Service.ExecStart"][0].startswith(f"{INSTALLED_BINARY} ")


def test_the_daemon_runs_as_the_sysusers_user(tmp_path: Path) -> None:
    found = directives(UNITS["umprobe"])
    assert (found["Service.User"], found["Service.Group"]) == (["umprobe"], ["umprobe"])
    assert "Service.DynamicUser" not in found
    (tmp_path / "etc").mkdir()
    out = subprocess.run(
        [
            require_binary("systemd-sysusers"),
            f"--root={tmp_path}",
            str(ROOT / "deploy/sysusers.d/umprobe.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (user,) = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()]
    assert user[0] == "umprobe" and 0 < int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"
    assert (tmp_path / "etc/group").read_text().startswith("umprobe:")


def test_the_peer_has_a_dynamic_user_its_secret_as_a_credential_and_no_reload() -> None:
    found = directives(UNITS["umprobe-peer"])
    assert found["Service.DynamicUser"] == ["yes"]
    assert found["Service.LoadCredential"] == ["peer.secret:/etc/umprobe/peer.secret"]
    assert "--secret-file %d/peer.secret" in found["Service.ExecStart"][0]
    # The peer has no config to re-read, and SIGHUP would end it: `systemctl reload` must be refused.
    assert "Service.ExecReload" not in found


def test_the_daemon_reload_checks_the_config_then_sends_sighup() -> None:
    found = directives(UNITS["umprobe"])
    check, hup = found["Service.ExecReload"]
    assert f"{INSTALLED_BINARY} config check /etc/umprobe/probes.toml" in check
    assert hup == "/bin/kill -HUP $MAINPID"
    assert Path("/bin/kill").is_file() and Path("/bin/sh").is_file()


# -- the units' command lines, run -------------------------------------------------------------------------


def command_line(line: str, env: dict[str, str], credentials: Path | None = None) -> list[str]:
    """A unit's Exec line as systemd runs it: specifiers, words, `${VAR}` in a word, `$VAR` alone split."""
    if credentials is not None:
        line = line.replace("%d", str(credentials))
    assert "%" not in line.replace("%%", ""), f"unhandled specifier in {line!r}"
    words: list[str] = []
    for word in shlex.split(line.replace("%%", "%")):
        alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if alone:
            words.extend(env.get(alone.group(1), "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def unit_environment(unit: Path, env_file: Path | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in directives(unit).get("Service.Environment", []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            env[key] = val
    if env_file is not None:
        for line in env_file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, val = line.partition("=")
                env[key.strip()] = val.strip()
    return env


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """A unit's main process, started from its ExecStart line; stderr lines collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, message: str) -> dict[str, object]:
        deadline = time.monotonic() + WAIT
        while True:
            for line in list(self.lines):
                try:
                    record: dict[str, object] = json.loads(line)
                except ValueError:
                    continue
                if record.get("msg") == message:
                    return record
            ended = self.proc.poll() is not None and not self._reader.is_alive()
            if ended or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {message!r} log line; rc={self.proc.poll()}:\n" + "\n".join(self.lines)
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in started:
            service.stop()


def write_probes(path: Path, port: int, listen: str) -> None:
    path.write_text(
        '[defaults]\ninterval = 0.5\ntimeout = 0.4\nfamilies = ["ipv4"]\n\n'
        f'[[targets]]\nhost = "127.0.0.1"\nmodule = "sip_tcp"\nport = {port}\n\n'
        f'[exporter]\nlisten = "{listen}"\n\n[log]\nformat = "json"\n'
    )


def test_the_daemon_unit_commands_start_reload_and_stop(tmp_path: Path, services: list[Service]) -> None:
    unit = UNITS["umprobe"]
    found = directives(unit)
    config = tmp_path / "probes.toml"
    listen = f"127.0.0.1:{free_port()}"
    write_probes(config, free_port(), listen)
    env_file = tmp_path / "umprobe.env"
    env_file.write_text("UMPROBE_VANTAGE=test-site\nUMPROBE_ARGS=--log-format json\n")
    assert found["Service.EnvironmentFile"] == ["-/etc/umprobe/umprobe.env"]
    env = unit_environment(unit, env_file)

    def line(text: str) -> str:
        return text.replace(INSTALLED_BINARY, str(UMPROBE)).replace("/etc/umprobe/probes.toml", str(config))

    argv = command_line(line(found["Service.ExecStart"][0]), env)
    assert argv == [str(UMPROBE), "run", "-c", str(config), "--log-format", "json"]
    daemon = Service(argv, env)
    services.append(daemon)
    daemon.wait_for("umprobe running")
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'vantage="test-site"' in metrics  # UMPROBE_VANTAGE from the EnvironmentFile reached the daemon

    check, hup = (
        command_line(line(text), {**env, "MAINPID": str(daemon.proc.pid)})
        for text in found["Service.ExecReload"]
    )
    # A broken file: the first ExecReload line fails with one line, so systemd never sends the SIGHUP.
    config.write_text(config.read_text() + "\n[[targets]]\nhots = 'typo.example'\n")
    out = subprocess.run(
        check, capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env}
    )
    assert out.returncode == 3 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "hots" in out.stderr
    # A good file: the check passes quietly, then the SIGHUP reloads it.
    write_probes(config, free_port(), listen)
    out = subprocess.run(
        check, capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env}
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert subprocess.run(hup, timeout=10, check=False).returncode == 0
    reloaded = daemon.wait_for("config reloaded")
    assert reloaded["source"] == "SIGHUP"
    # systemctl stop: SIGTERM, and it ends well inside TimeoutStopSec.
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=float(found["Service.TimeoutStopSec"][0].removesuffix("s"))) == 0


def test_the_peer_unit_command_starts_with_its_credential_and_stops(
    tmp_path: Path, services: list[Service]
) -> None:
    unit = UNITS["umprobe-peer"]
    found = directives(unit)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    secret = credentials / "peer.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o400)  # as systemd leaves a credential
    env_file = tmp_path / "peer.env"
    rtp = free_port(socket.SOCK_DGRAM) & ~1
    env_file.write_text(
        f"UMPROBE_PEER_LISTEN=127.0.0.1:{free_port()}\n"
        f"UMPROBE_PEER_ARGS=--rtp-range {rtp}-{rtp + 1} --allow 127.0.0.0/8 --log-format json\n"
    )
    assert found["Service.EnvironmentFile"] == ["-/etc/umprobe/peer.env"]
    env = unit_environment(unit, env_file)
    argv = command_line(
        found["Service.ExecStart"][0].replace(INSTALLED_BINARY, str(UMPROBE)), env, credentials
    )
    assert argv[:6] == [
        str(UMPROBE),
        "peer",
        "--listen",
        env["UMPROBE_PEER_LISTEN"],
        "--secret-file",
        str(secret),
    ]
    # Without the EnvironmentFile the unit's own defaults make a complete command line too.
    defaults = command_line(found["Service.ExecStart"][0], unit_environment(unit, None), credentials)
    assert defaults[2:] == ["--listen", ":7900", "--secret-file", str(secret), "--rtp-range", "1024-65535"]
    peer = Service(argv, env)
    services.append(peer)
    started = peer.wait_for("peer listening")
    assert started["rtp_range"] == f"{rtp}-{rtp + 1}" and started["allow"] == ["127.0.0.0/8"]
    assert not [line for line in peer.lines if "warning" in line]  # a 0400 credential draws no warning
    peer.proc.send_signal(signal.SIGTERM)
    assert peer.proc.wait(timeout=float(found["Service.TimeoutStopSec"][0].removesuffix("s"))) == 0
    peer.wait_for("peer stopped")


# -- MemoryDenyWriteExecute= -------------------------------------------------------------------------------

_MDWE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: systemd's rule, from the kernel
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
from OpenSSL import SSL
ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
try:
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)  # what umprobe.net.tls does for every TLS context
except MemoryError as exc:
    print("refused:", exc)
else:
    print("allowed")
"""


def test_memory_deny_write_execute_breaks_tls() -> None:
    """Why the units leave MemoryDenyWriteExecute= out: pyOpenSSL's verify callback is a cffi callback,
    which needs write+execute memory. If this starts printing "allowed" (cffi without such trampolines),
    add MemoryDenyWriteExecute=yes to both units."""
    assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) >= 0, "this kernel has no PR_GET_MDWE (Linux 6.3+)"
    out = subprocess.run(
        [sys.executable, "-c", _MDWE], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: Cannot allocate write+execute memory"), out.stdout
    control = subprocess.run(
        [sys.executable, "-c", _MDWE.replace("libc.prctl(65, 1, 0, 0, 0)", "0")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert control.stdout == "allowed\n", control.stdout + control.stderr


# -- the operations guide, run -----------------------------------------------------------------------------

# Commands the guide shows that cannot do their job on a machine without systemd as PID 1 (or must not:
# apt-get; the test machine has pipx from scripts/install-test-peers). They record their arguments instead.
STAND_INS = ("apt-get", "systemctl", "journalctl", "curl")

_PRELUDE = r"""
set -euo pipefail
PS4='+ ${SECONDS}s operations.md: '
for dir in etc opt usr/local; do
    mkdir -p "$OVERLAYS/$dir/upper" "$OVERLAYS/$dir/work"
    mount -t overlay overlay \
        -o "lowerdir=/$dir,upperdir=$OVERLAYS/$dir/upper,workdir=$OVERLAYS/$dir/work" "/$dir"
done
stand_in() { printf '%s\n' "$*" >> "$STAND_IN_LOG"; }
apt-get() { stand_in apt-get "$@"; }
systemctl() { stand_in systemctl "$@"; }
journalctl() { stand_in journalctl "$@"; }
curl() { stand_in curl "$@"; }
cd "$WORKDIR"
"""

_CHECKS = r"""
echo "== checks"
id umprobe
key=/etc/umprobe/certs/probe01.contoso.local.key
stat -c '%n %a %U:%G' /etc/umprobe/probes.toml /etc/umprobe/certs "$key" \
    /etc/umprobe/peer.secret /etc/umprobe/certs/peer.secret
if runuser -u nobody -- cat "$key" >/dev/null 2>&1; then echo "key readable by nobody"; fi
if runuser -u umprobe -- cat /etc/umprobe/peer.secret >/dev/null 2>&1; then echo "peer secret readable"; fi
runuser -u umprobe -- cat /etc/umprobe/certs/peer.secret > /dev/null
systemd-analyze verify /etc/systemd/system/umprobe.service /etc/systemd/system/umprobe-peer.service 2>&1 |
    sed 's/^/verify: /'
readlink -f /usr/local/bin/umprobe
"""


def guide_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_guide_has_its_blocks() -> None:
    """The walk-through below runs these; the guide's version line names this version."""
    blocks = guide_blocks()
    assert len(blocks) >= 8
    script = "\n".join(blocks)
    assert f"VERSION={__version__}\n" in script
    new = re.search(r"^NEW=(\S+)$", script, re.M)
    assert new and new.group(1) != __version__
    used = {word for line in script.splitlines() for word in line.split()[:1]}
    assert set(STAND_INS) <= used


@pytest.mark.lab
def test_the_operations_guide_runs(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every sh block of docs/operations.md, in order, as root in a private mount namespace: pipx installs
    the wheel system-wide; the user, the config and the units are set up and verified; the install is
    upgraded and rolled back."""
    require_binary("pipx")
    require_binary("unshare")
    require_binary("runuser")
    assert os.geteuid() == 0, "the walk-through needs root (mount namespaces, /etc/umprobe, runuser)"
    script = "\n".join(guide_blocks())
    new_version = re.search(r"^NEW=(\S+)$", script, re.M)
    assert new_version
    current: Dist = built_dist(tmp_path_factory)
    upgrade: Dist = built_dist(tmp_path_factory, new_version.group(1))
    workdir = tmp_path / "work"
    workdir.mkdir()
    for wheel in (current.wheel, upgrade.wheel):
        shutil.copy(wheel, workdir)
    ca = DevCA.create("Contoso test root")
    ca.write_ca(workdir, "contoso-root")
    (workdir / "contoso-root.crt").rename(workdir / "contoso-root.pem")
    ca.issue(["probe01.contoso.local"], server_auth=False).write(workdir, "probe01.contoso.local")
    home = tmp_path / "home"
    home.mkdir()
    stand_in_log = tmp_path / "stand-ins.log"
    # pipx installs offline, from the wheelhouse tests/test_packaging.py resolved from the index (plus
    # setuptools, which pipx 1.1 puts into its shared venv).
    env = offline(runtime_wheelhouse(tmp_path_factory), build_requirements(tmp_path_factory))
    env.update(
        HOME=str(home),
        OVERLAYS=str(tmp_path / "overlays"),
        STAND_IN_LOG=str(stand_in_log),
        WORKDIR=str(workdir),
        PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    env.pop("PIPX_HOME", None)
    env.pop("PIPX_BIN_DIR", None)
    (tmp_path / "walkthrough.sh").write_text(_PRELUDE + "set -x\n" + script + "\nset +x\n" + _CHECKS)
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", str(tmp_path / "walkthrough.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    transcript = f"{out.stdout}\n{out.stderr}"
    assert out.returncode == 0, transcript[-8000:]
    stdout = out.stdout.splitlines()

    # pipx installed it where the unit starts it; upgrade and rollback switched versions.
    versions = [line for line in stdout if line.startswith("umprobe, version ")]
    assert versions == [
        f"umprobe, version {__version__}",
        f"umprobe, version {new_version.group(1)}",
        f"umprobe, version {__version__}",
    ], transcript[-8000:]
    assert stdout[-1] == "/opt/pipx/venvs/umprobe/bin/umprobe"
    # The export wrote what the guide copies from it; config check passed as the service user.
    assert any(line.endswith("/usr/local/share/umprobe/deploy/systemd/umprobe.service") for line in stdout)
    assert any("cas01.contoso.local" in line for line in stdout)
    # The installed units verify cleanly, and security rated the daemon's unit as the guide says.
    assert not [line for line in stdout if line.startswith("verify: ")], transcript[-8000:]
    assert any(re.match(r"→ Overall exposure level for umprobe\.service: \d\.\d OK", line) for line in stdout)
    # Least privilege as promised.
    checks = stdout[stdout.index("== checks") + 1 : -1]
    assert checks[0].startswith("uid=") and "(umprobe)" in checks[0]
    assert checks[1:6] == [
        "/etc/umprobe/probes.toml 640 root:umprobe",
        "/etc/umprobe/certs 750 root:umprobe",
        "/etc/umprobe/certs/probe01.contoso.local.key 640 root:umprobe",
        "/etc/umprobe/peer.secret 600 root:root",
        "/etc/umprobe/certs/peer.secret 640 root:umprobe",
    ]
    assert "key readable by nobody" not in checks and "peer secret readable" not in checks
    # The stand-ins were called as the guide shows, and nothing else was.
    calls = stand_in_log.read_text().splitlines()
    assert calls == [
        "apt-get install --no-install-recommends pipx",
        "systemctl daemon-reload",
        "systemctl enable --now umprobe",
        "curl -s http://127.0.0.1:9874/-/healthy",
        "systemctl reload umprobe",
        "journalctl -u umprobe --since -10min",
        "systemctl daemon-reload",
        "systemctl enable --now umprobe-peer",
        "systemctl restart umprobe",
        "systemctl restart umprobe",
    ]
    # The host was not touched: all of it went into the overlays.
    assert (tmp_path / "overlays/etc/upper/umprobe/probes.toml").is_file()
    assert not Path("/etc/sysusers.d/umprobe.conf").exists()
    assert not Path("/opt/pipx/venvs/umprobe").exists()
