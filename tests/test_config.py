"""probes.toml: parsing, inheritance, profile expansion, one-line errors, the shipped example, the docs.

Errors are checked by their whole shape: one line, `probes.toml:LINE: KEY.PATH = VALUE: detail`, so a
message that loses its key path, value or line number fails here. Certificate files are real (DevCA).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from umprobe import cli as cli_module
from umprobe.commands.config_cmd import config_group
from umprobe.config import (
    BUILTIN_LABELS,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    KNOWN_KEYS,
    RTP_DEFAULT_INTERVAL,
    Config,
    ConfigError,
    ProbeConfig,
    _SourceIndex,
    describe,
    load_config,
    parse_config,
)
from umprobe.devcerts import DevCA
from umprobe.errors import UserError
from umprobe.net.tls import TLSClientConfig
from umprobe.probes.rtp import estimate_seconds
from umprobe.sip import DEFAULT_ACCEPT

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "probes.toml"
DOC = REPO / "docs" / "configuration.md"


def parse(text: str, *, base_dir: Path | None = None, check_files: bool = False) -> Config:
    return parse_config(text, source="probes.toml", base_dir=base_dir, check_files=check_files)


def error(text: str, *, base_dir: Path | None = None, check_files: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir=base_dir, check_files=check_files)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("probes.toml"), message
    assert isinstance(info.value, UserError)
    return info.value


def by_name(config: Config) -> dict[str, ProbeConfig]:
    return {probe.name: probe for probe in config.probes}


TARGET = '[[targets]]\nhost = "cas01.contoso.local"\nmodule = "sip_tcp"\n'


# ----------------------------------------------------------------------------------------------------
# Defaults and inheritance


def test_empty_file_is_a_valid_config_with_builtins() -> None:
    config = parse("")
    assert config.probes == ()
    assert set(config.modules) == {"sip_tcp", "sip_tls", "sip_udp"}
    tcp, tls = config.modules["sip_tcp"], config.modules["sip_tls"]
    assert (tcp.transport, tcp.tls, tcp.default_port) == ("tcp", None, 5060)
    assert (tls.transport, tls.default_port) == ("tls", 5061)
    assert tls.tls == TLSClientConfig()
    assert tcp.timeout == DEFAULT_TIMEOUT and tcp.interval == DEFAULT_INTERVAL
    assert tcp.accept_status == DEFAULT_ACCEPT
    assert tcp.families == ("ipv4", "ipv6")
    assert config.exporter.listen == "127.0.0.1:9874" and config.exporter.probe_allow == ()
    assert config.scheduler.max_concurrency == 64
    assert (config.log.format, config.log.level) == ("text", "info")
    assert config.source == "probes.toml"


def test_overlay_builtin_then_defaults_then_module_then_target() -> None:
    config = parse(
        """
[defaults]
interval = 60
timeout = 10
families = ["ipv4"]
accept_status = "2xx"
from_domain = "probe01.contoso.local"
ca_file = "/etc/umprobe/root.pem"

[modules.fast]
transport = "tls"
interval = 20

[modules.plain]
timeout = 2
accept_status = [200, 403]

[[targets]]
host = "a.example"
module = "fast"

[[targets]]
host = "b.example"
module = "fast"
timeout = 3
interval = 4

[[targets]]
host = "c.example"
module = "plain"
"""
    )
    fast, plain = config.modules["fast"], config.modules["plain"]
    assert (fast.interval, fast.timeout) == (20.0, 10.0)  # module < defaults < built-in
    assert fast.families == ("ipv4",) and fast.accept_status == frozenset(range(200, 300))
    assert fast.from_domain == "probe01.contoso.local"
    assert fast.tls is not None and fast.tls.ca_file == "/etc/umprobe/root.pem"  # TLS key from [defaults]
    assert plain.tls is None  # ... and ignored by a tcp module
    assert (plain.interval, plain.timeout) == (60.0, 2.0)
    assert plain.accept_status == frozenset({200, 403})
    assert config.modules["sip_tcp"].interval == 60.0  # built-ins inherit [defaults] too
    probes = {p.target: p for p in config.probes}
    assert (probes["a.example"].interval, probes["a.example"].timeout) == (20.0, 10.0)
    assert (probes["b.example"].interval, probes["b.example"].timeout) == (4.0, 3.0)
    assert probes["c.example"].spec.accept_status == frozenset({200, 403})
    assert probes["a.example"].spec.families == ("ipv4",)
    assert probes["a.example"].spec.from_domain == "probe01.contoso.local"


def test_module_target_ports_and_names() -> None:
    config = parse(
        """
[modules.alt]
port = 5070

[[targets]]
host = ["a.example", "b.example"]
module = "alt"

[[targets]]
host = "a.example"
module = "sip_tls"

[[targets]]
host = "[2001:DB8::10]"
module = "sip_tcp"
port = 5099

[[targets]]
host = "192.0.2.1"
name = "gw"
module = "sip_tcp"
"""
    )
    names = by_name(config)
    assert set(names) == {
        "a.example:5070/tcp",
        "b.example:5070/tcp",
        "a.example:5061/tls",
        "[2001:db8::10]:5099/tcp",
        "gw:5060/tcp",
    }
    probe = config.probes[2]
    assert probe.id == "a.example|custom|tls|5061|sip_tls"
    assert (probe.spec.host, probe.spec.port, probe.spec.transport, probe.spec.listener) == (
        "a.example",
        5061,
        "tls",
        "custom",
    )
    assert probe.required and probe.group is None
    assert config.probes[3].target == "2001:db8::10"
    assert config.target_hosts == {"a.example", "b.example", "2001:db8::10", "192.0.2.1"}


def test_server_name_override_applies_to_tls_probes_only() -> None:
    config = parse(
        """
[modules.m]
transport = "tls"
server_name = "module.example"

[[targets]]
host = "a.example"
module = "m"

[[targets]]
host = "b.example"
profile = "exchange2016"
roles = ["call_router"]
tls_module = "m"
server_name = "target.example"
"""
    )
    spec = {p.name: p.spec for p in config.probes}
    assert spec["a.example:5061/tls"].server_name == "module.example"
    assert spec["b.example:5061/tls"].server_name == "target.example"
    assert spec["b.example:5060/tcp"].server_name is None


def test_labels_sorted_and_collected() -> None:
    config = parse(
        """
[[targets]]
host = "a.example"
module = "sip_tcp"
labels = { site = "ams", env = "prod", _x = "1" }

[[targets]]
host = "b.example"
module = "sip_tcp"
[targets.labels]
rack = "r1"
"""
    )
    assert config.probes[0].labels == (("_x", "1"), ("env", "prod"), ("site", "ams"))
    assert config.probes[1].labels == (("rack", "r1"),)
    assert config.extra_label_names == ("_x", "env", "rack", "site")


def test_exporter_scheduler_log_sections() -> None:
    config = parse(
        """
[exporter]
listen = "[::]:9100"
probe_allow = ["*", "10.0.0.0/8", "2001:db8::/32", "cas01.contoso.local"]
[scheduler]
max_concurrency = 8
[log]
format = "json"
level = "debug"
"""
    )
    assert config.exporter.listen == "[::]:9100"
    assert config.exporter.probe_allow == ("*", "10.0.0.0/8", "2001:db8::/32", "cas01.contoso.local")
    assert config.scheduler.max_concurrency == 8
    assert (config.log.format, config.log.level) == ("json", "debug")
    for listen in (":9874", "0.0.0.0:9874", "localhost:1", "monitor.example:9874"):
        assert parse(f'[exporter]\nlisten = "{listen}"\n').exporter.listen == listen


# ----------------------------------------------------------------------------------------------------
# Profile expansion


def test_profile_dual_all_roles() -> None:
    config = parse(
        '[modules.mtls]\ntransport = "tls"\n'
        '[[targets]]\nhost = "ex01.contoso.local"\nprofile = "exchange2016"\n'
    )
    probes = config.probes
    assert len(probes) == 2 + 2 + 8
    listeners = [(p.spec.listener, p.spec.port, p.spec.transport, p.module) for p in probes]
    assert listeners[:4] == [
        ("call_router", 5060, "tcp", "sip_tcp"),
        ("call_router", 5061, "tls", "mtls"),  # the user's one TLS module is the default tls_module
        ("um_service", 5062, "tcp", "sip_tcp"),
        ("um_service", 5063, "tls", "mtls"),
    ]
    workers = [p for p in probes if p.spec.listener == "um_worker"]
    assert {(p.spec.port, p.spec.transport) for p in workers} == {
        (port, t) for port in (5065, 5066, 5067, 5068) for t in ("tcp", "tls")
    }
    assert all(not p.required and p.group == f"um_worker_{p.spec.transport}" for p in workers)
    assert all(p.required and p.group is None for p in probes if p.spec.listener != "um_worker")
    assert probes[1].id == "ex01.contoso.local|call_router|tls|5061|mtls"
    assert probes[1].name == "ex01.contoso.local:5061/tls"
    assert probes[1].spec.tls == config.modules["mtls"].tls


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("tcp", {(5080, "tcp")}), ("tls", {(5081, "tls")}), ("dual", {(5080, "tcp"), (5081, "tls")})],
)
def test_profile_modes_roles_and_call_router_ports(mode: str, expected: set[tuple[int, str]]) -> None:
    config = parse(
        f"""
[[targets]]
host = "cas01.contoso.local"
profile = "exchange2013"
um_mode = "{mode}"
roles = ["call_router"]
call_router_tcp_port = 5080
call_router_tls_port = 5081
"""
    )
    assert {(p.spec.port, p.spec.transport) for p in config.probes} == expected
    assert {p.spec.listener for p in config.probes} == {"call_router"}


def test_profile_module_defaults_without_user_tls_module() -> None:
    config = parse('[[targets]]\nhost = "a.example"\nprofile = "exchange2016"\nroles = ["um_service"]\n')
    assert {p.module for p in config.probes} == {"sip_tcp", "sip_tls"}


def test_profile_explicit_modules_and_tls_only_mode_needs_no_tcp_module() -> None:
    config = parse(
        """
[modules.a]
transport = "tls"
[modules.b]
transport = "tls"
[modules.plain]
timeout = 1
[[targets]]
host = "a.example"
profile = "exchange2016"
roles = ["um_service"]
tcp_module = "plain"
tls_module = "b"
[[targets]]
host = "b.example"
profile = "exchange2016"
um_mode = "tls"
roles = ["um_service"]
tls_module = "a"
"""
    )
    assert [(p.target, p.module) for p in config.probes] == [
        ("a.example", "plain"),
        ("a.example", "b"),
        ("b.example", "a"),
    ]


def test_user_module_replaces_builtin() -> None:
    config = parse("[modules.sip_tcp]\ntimeout = 1\n" + TARGET)
    assert config.probes[0].timeout == 1.0


# ----------------------------------------------------------------------------------------------------
# The shipped example


def test_shipped_probes_toml_parses() -> None:
    config = load_config(SHIPPED, check_files=False)
    names = by_name(config)
    assert len(config.probes) == 25
    assert {p.target for p in config.probes} == {
        "cas01.contoso.local",
        "cas02.contoso.local",
        "mbx01.contoso.local",
        "mbx02.contoso.local",
        "sbc01.contoso.local",
    }
    cas_tls = names["cas01.contoso.local:5061/tls"]
    assert cas_tls.module == "mtls"
    tls = config.modules["mtls"].tls
    assert tls is not None
    assert tls.ca_file == str(REPO / "certs" / "contoso-root.pem")  # relative to the file's directory
    assert tls.cert_file == str(REPO / "certs" / "probe01.contoso.local.crt")
    assert "sbc01:5061/tls" in names
    assert config.exporter.listen == "0.0.0.0:9874"
    # every built-in listener of the two roles is there, and nothing of the call router on Mailbox servers
    assert "mbx01.contoso.local:5060/tcp" not in names
    assert "cas01.contoso.local:5062/tcp" not in names


def test_shipped_probes_toml_with_file_checks_names_the_missing_file(tmp_path: Path) -> None:
    copy = tmp_path / "probes.toml"  # a directory with no certs/ beside the file, whatever the checkout holds
    copy.write_bytes(SHIPPED.read_bytes())
    with pytest.raises(ConfigError) as info:
        load_config(copy)
    assert re.match(
        r"^.*probes\.toml:\d+: modules\.mtls\.ca_file = \"certs/contoso-root\.pem\": ", str(info.value)
    )


# ----------------------------------------------------------------------------------------------------
# Errors: every class names file, line, key path and value


ERRORS = [
    # unknown keys, with a hint
    ("[defaults]\ntimeot = 5\n", 2, "defaults.timeot = 5", "unknown key (did you mean timeout?)"),
    ('[module.x]\ntransport = "tls"\n', 1, "module = ", "did you mean modules?"),
    (
        '[modules.m]\ntransport = "tls"\nca_flie = "x"\n',
        3,
        'modules.m.ca_flie = "x"',
        "did you mean ca_file?",
    ),
    ('[defaults]\nlisten = "x"\n', 2, 'defaults.listen = "x"', "it belongs in [exporter]"),
    ('[defaults]\nmodule = "x"\n', 2, 'defaults.module = "x"', "it belongs in [[targets]]"),
    (TARGET + "prot = 5\n", 4, "targets[0].prot = 5", "did you mean port?"),
    (TARGET + "zzz = 5\n", 4, "targets[0].zzz = 5", "known keys here: call_router_tcp_port"),
    ('[exporter]\nlisen = "x"\n', 2, 'exporter.lisen = "x"', "did you mean listen?"),
    ("[scheduler]\nconcurrency = 2\n", 2, "scheduler.concurrency = 2", "did you mean max_concurrency?"),
    ('[log]\nlevl = "info"\n', 2, 'log.levl = "info"', "did you mean level?"),
    ("[metrics]\nx = 1\n", 1, "metrics = { x = 1 }", "unknown key"),
    # wrong types
    ('[defaults]\ntimeout = "5s"\n', 2, 'defaults.timeout = "5s"', "must be a number of seconds"),
    ("[defaults]\ninterval = true\n", 2, "defaults.interval = true", "must be a number of seconds"),
    ('[modules.m]\nport = "5060"\n', 2, 'modules.m.port = "5060"', "must be a port number"),
    ('[modules.m]\ntransport = "tls"\ninsecure = "yes"\n', 3, 'modules.m.insecure = "yes"', "true or false"),
    ('[defaults]\nfamilies = "ipv4"\n', 2, 'defaults.families = "ipv4"', "non-empty list"),
    (
        '[defaults]\nfamilies = ["ipv5"]\n',
        2,
        'defaults.families = ["ipv5"]',
        '"ipv5" is not "ipv4" or "ipv6"',
    ),
    ('[defaults]\nfamilies = ["ipv4", "ipv4"]\n', 2, "defaults.families", "twice"),
    ("[defaults]\naccept_status = 200\n", 2, "defaults.accept_status = 200", "must be a string"),
    ('[defaults]\naccept_status = "1xx"\n', 2, 'defaults.accept_status = "1xx"', "never final"),
    (
        "[defaults]\naccept_status = [200, 99]\n",
        2,
        "defaults.accept_status = [200, 99]",
        "not a final status",
    ),
    (
        '[defaults]\ntransport = "sctp"\n',
        2,
        'defaults.transport = "sctp"',
        'must be one of "tcp", "tls", "udp"',
    ),
    ("[defaults]\nmin_tls = 1.2\n", 2, "defaults.min_tls = 1.2", 'quote the version, e.g. "1.2"'),
    ('[defaults]\nmax_tls = "1.4"\n', 2, 'defaults.max_tls = "1.4"', 'must be one of "1.0"'),
    ('[defaults]\nserver_name = "a b"\n', 2, 'defaults.server_name = "a b"', "host name or an IP"),
    ("modules = 1\n", 1, "modules = 1", "must be a table"),
    ("defaults = []\n", 1, "defaults = []", "must be a table"),
    ('[modules]\nm = "tls"\n', 2, 'modules.m = "tls"', "must be a table"),
    ('[targets]\nhost = "a"\n', 1, 'targets = { host = "a" }', "array of tables"),
    ("[[targets]]\nhost = 5\nmodule = 'sip_tcp'\n", 2, "targets[0].host = 5", "must be a string"),
    ("[[targets]]\nhost = []\nmodule = 'sip_tcp'\n", 2, "targets[0].host = []", "at least one host"),
    ("[[targets]]\nhost = ['a', 'a']\nmodule = 'sip_tcp'\n", 2, 'targets[0].host = ["a", "a"]', "twice"),
    (TARGET + "labels = { site = 1 }\n", 4, "targets[0].labels.site = 1", "must be a string"),
    (TARGET + 'labels = "site"\n', 4, 'targets[0].labels = "site"', "must be a table"),
    (TARGET + "name = 7\n", 4, "targets[0].name = 7", "must be a string"),
    ('[exporter]\nprobe_allow = "*"\n', 2, 'exporter.probe_allow = "*"', "must be a list"),
    ('[exporter]\nprobe_allow = ["10.0.0.0/33"]\n', 2, "exporter.probe_allow", '"10.0.0.0/33" is not'),
    ('[scheduler]\nmax_concurrency = "8"\n', 2, 'scheduler.max_concurrency = "8"', "whole number"),
    ('[log]\nformat = "xml"\n', 2, 'log.format = "xml"', 'must be one of "text", "json"'),
    ('[log]\nlevel = "trace"\n', 2, 'log.level = "trace"', 'must be one of "debug"'),
    # out-of-range numbers and bad values
    ("[modules.m]\nport = 0\n", 2, "modules.m.port = 0", "from 1 to 65535"),
    ("[modules.m]\nport = 70000\n", 2, "modules.m.port = 70000", "from 1 to 65535"),
    (TARGET + "port = 65536\n", 4, "targets[0].port = 65536", "from 1 to 65535"),
    ('[exporter]\nlisten = "0.0.0.0:99999"\n', 2, 'exporter.listen = "0.0.0.0:99999"', '"HOST:PORT"'),
    ('[exporter]\nlisten = "9874"\n', 2, 'exporter.listen = "9874"', '"HOST:PORT"'),
    ("[scheduler]\nmax_concurrency = 0\n", 2, "scheduler.max_concurrency = 0", "from 1 to 100000"),
    ("[defaults]\ntimeout = 0\n", 2, "defaults.timeout = 0", "must be a positive number of seconds"),
    ("[defaults]\ninterval = -5\n", 2, "defaults.interval = -5", "must be a positive number of seconds"),
    ("[defaults]\ntimeout = nan\n", 2, "defaults.timeout = nan", "must be a number of seconds"),
    (TARGET + "timeout = -1.5\n", 4, "targets[0].timeout = -1.5", "positive"),
    # timeout >= interval, blamed on the more specific value
    (
        '[modules.mtls]\ntransport = "tls"\ntimeout = 7.0\ninterval = 5.0\n',
        3,
        "modules.mtls.timeout = 7.0",
        "must be less than interval (5.0, set at modules.mtls.interval)",
    ),
    (
        "[defaults]\ntimeout = 30\n",
        2,
        "defaults.timeout = 30",
        "less than interval (30.0, the built-in default)",
    ),
    (
        "[defaults]\ninterval = 10\n[modules.m]\ntimeout = 10\n",
        4,
        "modules.m.timeout = 10",
        "must be less than interval (10, set at defaults.interval)",
    ),
    (
        "[defaults]\ntimeout = 2\n[modules.m]\ninterval = 2\n",
        4,
        "modules.m.interval = 2",
        "must be greater than timeout (2, set at defaults.timeout)",
    ),
    (
        TARGET + "timeout = 30\n",
        4,
        "targets[0].timeout = 30",
        "less than interval (30.0, the built-in default)",
    ),
    (TARGET + "interval = 5\n", 4, "targets[0].interval = 5", "must be greater than timeout (5.0"),
    # unknown module / profile / mode / role
    (
        '[modules.mtls]\ntransport = "tls"\n[[targets]]\nhost = "a"\nmodule = "mtsl"\n',
        5,
        'targets[0].module = "mtsl"',
        'unknown module; did you mean "mtls"? (defined: mtls, sip_tcp, sip_tls, sip_udp)',
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2019"\n',
        3,
        'targets[0].profile = "exchange2019"',
        "one of",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\num_mode = "mixed"\n',
        4,
        'targets[0].um_mode = "mixed"',
        'must be one of "tcp", "tls", "dual"',
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nroles = ["edge"]\n',
        4,
        'targets[0].roles = ["edge"]',
        '"edge" is not one of call_router, um_service, um_worker',
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nroles = []\n',
        4,
        "targets[0].roles = []",
        "non-empty",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\ntcp_module = "sip_tls"\n',
        4,
        'targets[0].tcp_module = "sip_tls"',
        'must name a module with transport "tcp" (module "sip_tls" is "tls")',
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\ntls_module = "nope"\n',
        4,
        'targets[0].tls_module = "nope"',
        "unknown module",
    ),
    (
        '[modules.a]\ntransport = "tls"\n[modules.b]\ntransport = "tls"\n[[targets]]\nhost = "x"\n'
        'profile = "exchange2016"\n',
        5,
        "targets[0]: tls_module is required",
        "several TLS modules are defined (a, b)",
    ),
    ('[modules."bad name"]\ntransport = "tls"\n', 1, 'modules."bad name"', "a module name must start"),
    # target shape
    ('[[targets]]\nhost = "a"\n', 1, "targets[0]: a target needs either", "not neither"),
    (
        '[[targets]]\nhost = "a"\nmodule = "sip_tcp"\nprofile = "exchange2016"\n',
        1,
        "targets[0]: a target needs either",
        "not both",
    ),
    ('[[targets]]\nmodule = "sip_tcp"\n', 1, "targets[0]: host is required", "host is required"),
    (
        TARGET + 'um_mode = "tls"\n',
        4,
        'targets[0].um_mode = "tls"',
        "only applies to a target with a profile",
    ),
    (TARGET + "roles = ['um_service']\n", 4, "targets[0].roles", "only applies to a target with a profile"),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport = 5070\n',
        4,
        "targets[0].port = 5070",
        "use call_router_tcp_port / call_router_tls_port",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nroles = ["um_service"]\n'
        "call_router_tls_port = 5081\n",
        5,
        "targets[0].call_router_tls_port = 5081",
        "roles does not include call_router",
    ),
    (
        '[[targets]]\nhost = ["a", "b"]\nname = "x"\nmodule = "sip_tcp"\n',
        3,
        'targets[0].name = "x"',
        "a name needs a single host (host lists 2)",
    ),
    (TARGET + 'name = "a\\tb"\n', 4, 'targets[0].name = "a\\tb"', "control characters"),
    (
        '[[targets]]\nhost = "sip:a.example;transport=tls"\nmodule = "sip_tcp"\n',
        2,
        'targets[0].host = "sip:a.example;transport=tls"',
        "bare host name",
    ),
    ('[[targets]]\nhost = "a.example:5060"\nmodule = "sip_tcp"\n', 2, "targets[0].host", "no port"),
    ('[[targets]]\nhost = "bad host"\nmodule = "sip_tcp"\n', 2, 'targets[0].host = "bad host"', "host name"),
    (
        TARGET + 'server_name = "x.example"\n',
        4,
        'targets[0].server_name = "x.example"',
        "only applies to TLS",
    ),
    # duplicate probe identities and names
    (
        TARGET + "\n" + TARGET.replace("cas01", "CAS01"),
        6,
        'targets[1].host = "CAS01.contoso.local"',
        'probe "cas01.contoso.local|custom|tcp|5060|sip_tcp" is defined twice (also by targets[0])',
    ),
    (
        TARGET + '\n[modules.other]\n\n[[targets]]\nhost = "cas01.contoso.local"\nmodule = "other"\n',
        8,
        'targets[1].host = "cas01.contoso.local"',
        'probe name "cas01.contoso.local:5060/tcp" is used twice (also by targets[0])',
    ),
    (
        '[[targets]]\nhost = "a"\nname = "gw"\nmodule = "sip_tcp"\n[[targets]]\nhost = "b"\nname = "gw"\n'
        'module = "sip_tcp"\n',
        7,
        'targets[1].name = "gw"',
        'probe name "gw:5060/tcp" is used twice',
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nroles = ["call_router", "um_service"]\n'
        "call_router_tcp_port = 5062\n",
        2,
        'targets[0].host = "a"',
        'probe name "a:5062/tcp" is used twice',
    ),
    # label names
    (TARGET + 'labels = { "bad-name" = "x" }\n', 4, 'targets[0].labels.bad-name = "x"', "bad label name"),
    (TARGET + 'labels = { "1st" = "x" }\n', 4, "targets[0].labels.1st", "must match [a-zA-Z_][a-zA-Z0-9_]*"),
    (
        TARGET + "[targets.labels]\n__meta = 'x'\n",
        5,
        'targets[0].labels.__meta = "x"',
        "reserved by Prometheus",
    ),
    (TARGET + "labels = { site = '' }\n", 4, 'targets[0].labels.site = ""', "must not be empty"),
    # TLS settings
    (
        '[modules.m]\nca_file = "ca.pem"\n',
        2,
        'modules.m.ca_file = "ca.pem"',
        'only applies to transport "tls"',
    ),
    ('[modules.m]\nserver_name = "x"\n', 2, 'modules.m.server_name = "x"', 'only applies to transport "tls"'),
    (
        '[defaults]\nmax_tls = "1.2"\n[modules.m]\ntransport = "tls"\nmin_tls = "1.3"\n',
        5,
        'modules.m.min_tls = "1.3"',
        'is above max_tls ("1.2")',
    ),
    (
        '[defaults]\nmin_tls = "1.3"\n[modules.m]\ntransport = "tls"\nmax_tls = "1.2"\n',
        5,
        'modules.m.max_tls = "1.2"',
        'is below min_tls ("1.3")',
    ),
    (
        '[modules.m]\ntransport = "tls"\nkey_file = "k.pem"\n',
        3,
        'modules.m.key_file = "k.pem"',
        "needs cert_file",
    ),
    (
        '[modules.m]\ntransport = "tls"\nciphers = "NO-SUCH-CIPHER"\n',
        3,
        'modules.m.ciphers = "NO-SUCH-CIPHER"',
        "OpenSSL rejects the cipher string",
    ),
]


@pytest.mark.parametrize(("text", "line", "subject", "detail"), ERRORS)
def test_errors_name_file_line_key_and_value(text: str, line: int, subject: str, detail: str) -> None:
    exc = error(text)
    message = str(exc)
    assert message.startswith(f"probes.toml:{line}: {subject}"), message
    assert detail in message, message
    assert exc.line == line


def test_toml_syntax_error_has_line_and_column() -> None:
    exc = error("[defaults]\ntimeout = 5\ninterval = = 3\n")
    assert str(exc) == "probes.toml:3:12: TOML syntax error: Invalid value in: interval = = 3"
    assert exc.line == 3
    exc = error("[defaults]\ntimeout = 5\ntimeout = 6\n")
    assert str(exc).startswith("probes.toml:3:")
    assert "Cannot overwrite a value" in str(exc)
    exc = error("[[targets]\n")
    assert str(exc).startswith("probes.toml:1:")


def test_error_from_string_source_without_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[defaults]\nport = 0\n", check_files=False)
    assert str(info.value).startswith("<string>:2: defaults.port = 0:")


def test_long_values_are_cut_to_keep_one_line() -> None:
    exc = error(f'[defaults]\nciphers_ = "{"A" * 500}"\n')
    assert len(str(exc)) < 200
    assert "..." in str(exc)


def test_target_errors_are_reported_at_the_right_array_element() -> None:
    text = TARGET + "\n" + TARGET.replace("cas01", "cas02") + "\n" + TARGET.replace("cas01", "cas03")
    text += "port = 0\n"
    exc = error(text)
    assert str(exc).startswith("probes.toml:12: targets[2].port = 0:")


# ----------------------------------------------------------------------------------------------------
# Files: relative paths, readability, a key that does not match its certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca = DevCA.create("config test CA")
    ca.write_ca(directory, "ca")
    ca.issue(["probe01.contoso.local"]).write(directory, "probe")
    ca.issue(["other.contoso.local"]).write(directory, "other")
    (directory / "combined.pem").write_bytes(
        (directory / "probe.crt").read_bytes() + (directory / "probe.key").read_bytes()
    )
    (directory / "garbage.pem").write_text("not a certificate\n")
    return directory


def mtls(ca: str = "ca.crt", cert: str = "probe.crt", key: str | None = "probe.key") -> str:
    text = f'[modules.mtls]\ntransport = "tls"\nca_file = "{ca}"\ncert_file = "{cert}"\n'
    return text + (f'key_file = "{key}"\n' if key is not None else "")


def test_real_files_relative_to_config_directory(pki: Path) -> None:
    (pki / "probes.toml").write_text(mtls() + '[[targets]]\nhost = "cas01.contoso.local"\nmodule = "mtls"\n')
    config = load_config(pki / "probes.toml")
    tls = config.modules["mtls"].tls
    assert tls == TLSClientConfig(
        ca_file=str(pki / "ca.crt"), cert_file=str(pki / "probe.crt"), key_file=str(pki / "probe.key")
    )
    assert config.probes[0].spec.tls == tls
    # parse_config resolves against base_dir; absolute paths stay as they are
    config = parse_config(mtls(ca=str(pki / "ca.crt")), base_dir=pki / "sub", check_files=False)
    tls = config.modules["mtls"].tls
    assert tls is not None
    assert tls.ca_file == str(pki / "ca.crt") and tls.cert_file == str(pki / "sub" / "probe.crt")


def test_relative_config_path_gives_absolute_file_paths(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (pki / "probes.toml").write_text(mtls())
    monkeypatch.chdir(pki.parent)
    config = load_config(Path(pki.name) / "probes.toml")
    tls = config.modules["mtls"].tls
    assert tls is not None and tls.ca_file == str(pki / "ca.crt")
    assert config.source == str(Path(pki.name) / "probes.toml")  # messages name the file as given


def test_cert_and_key_in_one_file(pki: Path) -> None:
    config = parse(mtls(cert="combined.pem", key=None), base_dir=pki, check_files=True)
    assert config.modules["mtls"].tls is not None


@pytest.mark.parametrize(
    ("text", "line", "subject", "detail"),
    [
        (mtls(ca="missing.pem"), 3, 'modules.mtls.ca_file = "missing.pem"', "No such file or directory"),
        (
            mtls(cert="missing.crt"),
            4,
            'modules.mtls.cert_file = "missing.crt"',
            "cannot read certificate file",
        ),
        (mtls(key="missing.key"), 5, 'modules.mtls.key_file = "missing.key"', "cannot read key file"),
        (mtls(ca="."), 3, 'modules.mtls.ca_file = "."', "cannot read CA file"),  # unreadable even as root
        (mtls(ca="garbage.pem"), 3, 'modules.mtls.ca_file = "garbage.pem"', "holds no usable PEM"),
        (mtls(cert="garbage.pem"), 4, 'modules.mtls.cert_file = "garbage.pem"', "holds no usable PEM"),
        (mtls(key="other.key"), 5, 'modules.mtls.key_file = "other.key"', "does not match certificate"),
        (mtls(cert="probe.crt", key=None), 4, 'modules.mtls.cert_file = "probe.crt"', "private key"),
    ],
)
def test_file_errors(pki: Path, text: str, line: int, subject: str, detail: str) -> None:
    exc = error(text, base_dir=pki, check_files=True)
    assert str(exc).startswith(f"probes.toml:{line}: {subject}: "), str(exc)
    assert detail in str(exc)
    assert str(pki) in str(exc)  # the resolved path is named too
    parse(text, base_dir=pki, check_files=False)  # and without file checks the same config is fine


def test_file_errors_are_blamed_where_the_path_is_written(pki: Path) -> None:
    text = '[defaults]\ncert_file = "probe.crt"\nkey_file = "other.key"\n[modules.mtls]\ntransport = "tls"\n'
    exc = error(text, base_dir=pki, check_files=True)
    assert str(exc).startswith('probes.toml:3: defaults.key_file = "other.key": private key'), str(exc)


def test_unused_builtin_tls_module_files_are_not_checked(pki: Path) -> None:
    # [defaults] TLS files serve the user's modules; a bad one only matters where a TLS module uses it
    config = parse('[defaults]\nca_file = "missing.pem"\n' + TARGET, base_dir=pki, check_files=True)
    assert len(config.probes) == 1
    exc = error(
        '[defaults]\nca_file = "missing.pem"\n[[targets]]\nhost = "a"\nmodule = "sip_tls"\n',
        base_dir=pki,
        check_files=True,
    )
    assert str(exc).startswith('probes.toml:2: defaults.ca_file = "missing.pem": cannot read CA file')


def test_load_config_unreadable_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[log]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "not UTF-8" in str(info.value)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[log]\nlevel = 'debug'\n")
    assert load_config(bom).log.level == "debug"


# ----------------------------------------------------------------------------------------------------
# The line locator


def _leaf_paths(value: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaf_paths(item, (*path, key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            yield from _leaf_paths(item, (*path, index))
    else:
        yield path


_DOC_BLOCK = re.compile(
    r"(?P<marker><!-- error-example -->\n)?```toml\n(?P<toml>.*?)```\n(?:```text\n(?P<expected>.*?)\n```)?",
    re.S,
)


def _doc_examples() -> list[tuple[str, str | None]]:
    """Every ```toml block of the doc, with the error message it shows if it is an error example."""
    return [(m["toml"], m["expected"] if m["marker"] else None) for m in _DOC_BLOCK.finditer(DOC.read_text())]


@pytest.mark.parametrize(
    "text", [SHIPPED.read_text(), *(b for b, e in _doc_examples() if "syntax" not in (e or ""))]
)
def test_source_index_finds_every_key_on_its_line(text: str) -> None:
    index = _SourceIndex(text)
    lines = text.splitlines()
    for path in _leaf_paths(tomllib.loads(text)):
        line = index.line(path)
        assert line is not None, path
        keys = [p for p in path if isinstance(p, str)]
        source = lines[line - 1].split("#")[0]
        assert keys[-1] in source or (len(keys) > 1 and keys[-2] in source), (path, line, source)


def test_source_index_is_not_fooled_by_strings_and_comments() -> None:
    text = (
        "# [[targets]] in a comment\n"
        '[[targets]]\nhost = "a"\nmodule = "sip_tcp"\n'
        'labels = { note = """\n[[targets]]\nport = 1\n""", x = "# [[targets]]" }\n'
        "\n[[targets]]\nhost = 'b'\nmodule = '''sip_tcp'''\nport = 0\n"
    )
    index = _SourceIndex(text)
    assert index.line(("targets", 1)) == 10
    assert index.line(("targets", 1, "port")) == 13
    assert index.line(("targets", 0, "labels", "note")) == 5
    exc = error(text)
    assert str(exc).startswith("probes.toml:13: targets[1].port = 0:")


def test_source_index_dotted_and_quoted_keys() -> None:
    text = 'modules.m.port = 0\n[modules."x"]\n"timeout" = 1\n'
    index = _SourceIndex(text)
    assert index.line(("modules", "m", "port")) == 1
    assert index.line(("modules", "x", "timeout")) == 3
    assert str(error(text)).startswith("probes.toml:1: modules.m.port = 0:")


# ----------------------------------------------------------------------------------------------------
# docs/configuration.md stays in step with the code


def _documented_keys() -> dict[str, set[str]]:
    documented: dict[str, set[str]] = {}
    text = DOC.read_text()
    for match in re.finditer(r"<!-- keys: (?P<sections>[^>]*?) -->\n(?P<table>(?:\|.*\n)+)", text):
        keys = set(re.findall(r"^\| `([a-z_]+)` \|", match["table"], flags=re.M))
        for section in match["sections"].split(","):
            assert section.strip() not in documented, f"{section} documented twice"
            documented[section.strip()] = keys
    return documented


def test_every_accepted_key_is_documented_and_every_documented_key_accepted() -> None:
    documented = _documented_keys()
    assert set(documented) == set(KNOWN_KEYS)
    for section, keys in KNOWN_KEYS.items():
        assert documented[section] == set(keys), section


def test_doc_lists_the_builtin_labels() -> None:
    text = DOC.read_text()
    for label in BUILTIN_LABELS:
        assert f"`{label}`" in text


@pytest.mark.parametrize(("block", "expected"), _doc_examples())
def test_doc_toml_examples_parse(block: str, expected: str | None) -> None:
    if expected is None:
        parse(block)
    elif "TOML syntax error" in expected:  # tomllib's own wording may change between Python versions
        message = str(error(block))
        assert message.split(" error: ")[0] == expected.split(" error: ")[0]
        assert message.endswith(expected.rsplit(" in: ", 1)[1])
    else:
        assert str(error(block)) == expected


def test_doc_has_error_examples_and_valid_examples() -> None:
    examples = _doc_examples()
    assert len(examples) == len(re.findall("```toml", DOC.read_text()))
    assert sum(expected is not None for _, expected in examples) >= 5
    assert sum(expected is None for _, expected in examples) >= 4


# ----------------------------------------------------------------------------------------------------
# describe() and `umprobe config check`


def test_describe_one_line_per_probe() -> None:
    config = parse(
        """
[[targets]]
host = "ex01.contoso.local"
name = "ex01"
profile = "exchange2016"
um_mode = "tcp"
labels = { site = "ams", env = "prod" }
interval = 10
timeout = 2.5
"""
    )
    lines = describe(config).splitlines()
    assert len(lines) == 1 + len(config.probes) + 1
    assert lines[0].split() == [
        "PROBE",
        "TARGET",
        "LISTENER",
        "TRANSPORT",
        "PORT",
        "MODULE",
        "INTERVAL",
        "TIMEOUT",
        "LABELS",
    ]
    assert lines[1].split() == [
        "ex01:5060/tcp",
        "ex01.contoso.local",
        "call_router",
        "tcp",
        "5060",
        "sip_tcp",
        "10s",
        "2.5s",
        "env=prod,site=ams",
    ]
    assert "um_worker (any of um_worker_tcp)" in lines[3]
    assert lines[-1] == "probes.toml: OK: 6 probes on 1 host, modules sip_tcp"
    assert (
        describe(parse("")).splitlines()[-1] == "probes.toml: OK: 0 probes on 0 hosts ([[targets]] is empty)"
    )


def test_config_check_command_prints_the_probes() -> None:
    result = CliRunner().invoke(config_group, ["check", "--no-check-files", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 + 25 + 1
    assert lines[-1].endswith("OK: 25 probes on 5 hosts, modules mtls, sbc_tls, sip_tcp")


def test_config_check_command_raises_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "probes.toml"
    bad.write_text("[defaults]\ntimeout = 50\n")
    result = CliRunner().invoke(config_group, ["check", str(bad)])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == (
        f"{bad}:2: defaults.timeout = 50: must be less than interval (30.0, the built-in default)"
    )


@pytest.fixture
def wired_cli(monkeypatch: pytest.MonkeyPatch) -> click.Group:
    """umprobe's top-level group with `config` in it (the lead wires it in cli.py; this works either way)."""
    group = cli_module.cli
    assert isinstance(group, click.Group)
    if "config" not in group.commands:
        monkeypatch.setitem(group.commands, "config", config_group)
    return group


def test_main_config_check_exit_codes(
    wired_cli: click.Group, tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_module.main(["config", "check", "--no-check-files", str(SHIPPED)])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert "cas01.contoso.local:5061/tls" in out and err == ""

    bad = tmp_path / "probes.toml"
    bad.write_text('[[targets]]\nhost = "a"\nmodule = "mtsl"\n')
    with pytest.raises(SystemExit) as info:
        cli_module.main(["config", "check", str(bad)])
    assert info.value.code == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f'umprobe: error: {bad}:3: targets[0].module = "mtsl": unknown module'
        " (defined: sip_tcp, sip_tls, sip_udp)\n"
    )
    assert "Traceback" not in err

    # the shipped file's certificates do not exist here: without --no-check-files that is exit 3 too
    with pytest.raises(SystemExit) as info:
        cli_module.main(["config", "check", str(tmp_path / "missing.toml")])
    assert info.value.code == 3
    assert "cannot read" in capsys.readouterr().err

    # a mismatched key through the whole command line
    (pki / "mismatch.toml").write_text(mtls(key="other.key"))
    with pytest.raises(SystemExit) as info:
        cli_module.main(["config", "check", str(pki / "mismatch.toml")])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'modules.mtls.key_file = "other.key"' in err


# ----------------------------------------------------------------------------------------------------
# port_map: a profile's listeners reached at other ports


def test_port_map_moves_listeners_and_keeps_names_flags_and_groups() -> None:
    config = parse(
        """
[[targets]]
host = "mbx01.contoso.local"
profile = "exchange2016"
um_mode = "dual"
port_map = { 5060 = 41000, 5062 = 41002, "5065" = 41005 }
"""
    )
    probes = {(p.spec.listener, p.spec.transport, p.spec.port): p for p in config.probes}
    assert len(config.probes) == 12
    assert set(probes) == {
        ("call_router", "tcp", 41000),
        ("call_router", "tls", 5061),
        ("um_service", "tcp", 41002),
        ("um_service", "tls", 5063),
        *(("um_worker", t, p) for t in ("tcp", "tls") for p in (41005, 5066, 5067, 5068)),
    }
    moved = probes[("um_worker", "tls", 41005)]
    assert (moved.required, moved.group) == (False, "um_worker_tls")
    assert moved.name == "mbx01.contoso.local:41005/tls"
    assert moved.id == "mbx01.contoso.local|um_worker|tls|41005|sip_tls"
    assert probes[("um_service", "tcp", 41002)].required
    # the call router port keys still work, and port_map keys then follow the moved port
    config = parse(
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nroles = ["call_router"]\n'
        "call_router_tcp_port = 5080\nport_map = { 5080 = 6080 }\n"
    )
    assert sorted((p.spec.transport, p.spec.port) for p in config.probes) == [("tcp", 6080), ("tls", 5061)]


# ----------------------------------------------------------------------------------------------------
# [[rtp]]

RTP = '[[rtp]]\npeer = "mbx01.contoso.local:7900"\nsecret_file = "peer.secret"\n'


def test_rtp_entry_with_defaults() -> None:
    config = parse(RTP, base_dir=Path("/etc/umprobe"))
    (entry,) = config.rtp
    spec = entry.spec
    assert (entry.name, entry.target, entry.id) == (
        "mbx01.contoso.local",
        "mbx01.contoso.local",
        "rtp|mbx01.contoso.local|7900|peer|mbx01.contoso.local",
    )
    assert (spec.host, spec.port, spec.mode, spec.rtp_range) == (
        "mbx01.contoso.local",
        7900,
        "peer",
        (1024, 65535),
    )
    assert (spec.samples, spec.packets, spec.concurrency, spec.rtcp) == (32, 50, 3, True)
    assert spec.tls is None and spec.media_host is None
    assert entry.secret_file == "/etc/umprobe/peer.secret"
    assert entry.interval == RTP_DEFAULT_INTERVAL == 60.0
    # the derived timeout: 1.5 x the estimate + 2 s, rounded up, under 90 % of the interval
    assert estimate_seconds(spec) == 25.0 and entry.timeout == 40.0
    assert entry.cycles_per_sweep == 1008 and entry.sweep_seconds == 1008 * 60.0
    assert config.jobs == config.rtp and config.probes == ()
    assert "peer.secret" not in repr(spec) and "secret=" not in repr(spec)


def test_rtp_entry_with_every_key(tmp_path: Path) -> None:
    (tmp_path / "peer.secret").write_text("  correct horse battery staple\n")
    text = """
[[rtp]]
peer = "[2001:DB8::5]:7901"
name = "mbx02"
mode = "peer"
secret_file = "peer.secret"
range = "20000-29999"
samples = 64
packets = 20
concurrency = 4
interval = 120
timeout = 30
media_host = "10.0.5.21"
tls = true
server_name = "peer.contoso.local"
insecure = true
labels = { site = "ams", role = "mailbox" }
"""
    config = parse(text, base_dir=tmp_path, check_files=True)
    (entry,) = config.rtp
    spec = entry.spec
    assert (entry.name, spec.host, spec.port) == ("mbx02", "2001:db8::5", 7901)
    assert spec.secret == b"correct horse battery staple"  # read, whitespace stripped
    assert (spec.rtp_range, spec.samples, spec.packets, spec.concurrency) == ((20000, 29999), 64, 20, 4)
    assert (entry.interval, entry.timeout) == (120.0, 30.0)
    assert spec.media_host == "10.0.5.21" and spec.server_name == "peer.contoso.local"
    assert spec.tls == TLSClientConfig(insecure=True)
    assert entry.labels == (("role", "mailbox"), ("site", "ams"))
    assert entry.cycles_per_sweep == 79  # ceil(5000 / 64)
    lines = describe(config).splitlines()
    assert lines[0].split()[:3] == ["RTP", "PEER", "CONTROL"]
    assert lines[1].split() == [
        "mbx02",
        "[2001:db8::5]:7901/tls",
        "peer",
        "20000-29999",
        "64",
        "20",
        "79",
        "runs",
        "=",
        "2.6",
        "h",
        "120s",
        "30s",
        "role=mailbox,site=ams",
    ]
    assert lines[-1] == "probes.toml: OK: 0 probes on 0 hosts ([[targets]] is empty), 1 RTP peer"
    assert "horse" not in describe(config)


def test_rtp_plain_echo_entry() -> None:
    config = parse('[[rtp]]\npeer = "sbc01.contoso.local"\nmode = "plain-echo"\nports = [40002, 40000]\n')
    (entry,) = config.rtp
    spec = entry.spec
    assert (spec.mode, spec.ports, spec.rtp_range, spec.rtcp) == (
        "plain-echo",
        (40002, 40000),
        (40000, 40002),
        False,
    )
    assert spec.secret == b"" and entry.secret_file is None
    assert entry.id == "rtp|sbc01.contoso.local|0|plain-echo|sbc01.contoso.local"
    assert entry.cycles_per_sweep == 1
    assert "plain-echo (UNAUTHENTICATED)" in describe(config)


def test_rtp_and_targets_together() -> None:
    config = parse(
        TARGET + RTP + '[[rtp]]\npeer = "mbx02.contoso.local:7900"\nsecret_file = "s"\nname = "m2"\n'
    )
    assert len(config.probes) == 1 and len(config.rtp) == 2
    assert config.jobs == (*config.probes, *config.rtp)
    lines = describe(config).splitlines()
    assert lines[2] == "" and lines[3].startswith("RTP PEER")
    assert lines[-1] == "probes.toml: OK: 1 probe on 1 host, modules sip_tcp, 2 RTP peers"


RTP_ERRORS = [
    # the table and its keys
    ('[rtp]\npeer = "a:1"\n', 1, 'rtp = { peer = "a:1" }', "array of tables ([[rtp]])"),
    (RTP + "sampels = 8\n", 4, "rtp[0].sampels = 8", "did you mean samples?"),
    (RTP + 'from_domain = "x"\n', 4, 'rtp[0].from_domain = "x"', "it belongs in [defaults]"),
    ('[[rtp]]\nhost = "mbx01"\n', 2, 'rtp[0].host = "mbx01"', 'peer = "HOST:PORT"'),
    # peer and name
    ('[[rtp]]\nsecret_file = "s"\n', 1, "rtp[0]: peer is required", "control address"),
    ('[[rtp]]\npeer = 7900\nsecret_file = "s"\n', 2, "rtp[0].peer = 7900", "must be a string"),
    ('[[rtp]]\npeer = "mbx01"\nsecret_file = "s"\n', 2, 'rtp[0].peer = "mbx01"', "needs the control port"),
    ('[[rtp]]\npeer = "a b:7900"\nsecret_file = "s"\n', 2, 'rtp[0].peer = "a b:7900"', '"HOST:PORT"'),
    ('[[rtp]]\npeer = "sip:a:7900"\nsecret_file = "s"\n', 2, 'rtp[0].peer = "sip:a:7900"', '"HOST:PORT"'),
    ('[[rtp]]\npeer = "a:70000"\nsecret_file = "s"\n', 2, 'rtp[0].peer = "a:70000"', '"HOST:PORT"'),
    (RTP + 'name = "a\\tb"\n', 4, 'rtp[0].name = "a\\tb"', "without control characters"),
    (RTP + "\n" + RTP, 6, 'rtp[1].peer = "mbx01.contoso.local:7900"', 'peer name "mbx01.contoso.local"'),
    (RTP + 'name = "x"\n' + RTP + 'name = "x"\n', 8, 'rtp[1].name = "x"', "used twice (also by rtp[0])"),
    # mode, secret
    (RTP + 'mode = "echo"\n', 4, 'rtp[0].mode = "echo"', 'must be one of "peer", "plain-echo"'),
    ('[[rtp]]\npeer = "a:7900"\n', 1, "rtp[0]: secret_file is required", "at least 16 bytes"),
    (RTP + "secret_file = 1\n", 0, "", "Cannot overwrite a value"),  # TOML: written twice
    ('[[rtp]]\npeer = "a:1"\nsecret_file = 5\n', 3, "rtp[0].secret_file = 5", "must be a string"),
    # range
    (RTP + "range = [1024, 2048]\n", 4, "rtp[0].range = [1024, 2048]", "must be a string"),
    (RTP + 'range = "1024:2048"\n', 4, 'rtp[0].range = "1024:2048"', 'must be "LO-HI"'),
    (RTP + 'range = "80-2048"\n', 4, 'rtp[0].range = "80-2048"', "1024 <= LO <= HI <= 65535"),
    (RTP + 'range = "3000-2000"\n', 4, 'rtp[0].range = "3000-2000"', "1024 <= LO <= HI <= 65535"),
    (RTP + 'range = "2001-2001"\n', 4, 'rtp[0].range = "2001-2001"', "holds no even port"),
    # numbers
    (RTP + "samples = 0\n", 4, "rtp[0].samples = 0", "a whole number from 1 to 256"),
    (RTP + 'samples = "32"\n', 4, 'rtp[0].samples = "32"', "a whole number from 1 to 256"),
    (RTP + "packets = 3001\n", 4, "rtp[0].packets = 3001", "from 1 to 3000"),
    (RTP + "concurrency = 65\n", 4, "rtp[0].concurrency = 65", "from 1 to 64"),
    (RTP + 'interval = "60s"\n', 4, 'rtp[0].interval = "60s"', 'unquoted: 5, not "5s"'),
    (RTP + "timeout = 0\n", 4, "rtp[0].timeout = 0", "positive"),
    # timing against the estimate: both numbers named
    (
        RTP + "timeout = 10\n",
        4,
        "rtp[0].timeout = 10",
        "is shorter than one cycle is estimated to take (25.0 s for samples = 32, packets = 50,"
        " concurrency = 3); raise timeout, or lower samples or packets",
    ),
    (RTP + "timeout = 60\n", 4, "rtp[0].timeout = 60", "must be less than interval (60 s, the default)"),
    (RTP + "interval = 30\ntimeout = 30\n", 5, "rtp[0].timeout = 30", "must be less than interval (30 s)"),
    (
        RTP + "interval = 20\n",
        4,
        "rtp[0].interval = 20",
        "one cycle is estimated to take 25.0 s (samples = 32, packets = 50, concurrency = 3): too long for"
        " interval (20 s)",
    ),
    (
        RTP + "samples = 256\n",
        1,
        "rtp[0]: one cycle is estimated to take 185.0 s",
        "too long for interval (60 s, the default)",
    ),
    # media host and TLS
    (RTP + 'media_host = "a b"\n', 4, 'rtp[0].media_host = "a b"', "host name or an IP address"),
    (RTP + 'tls = "yes"\n', 4, 'rtp[0].tls = "yes"', "must be true or false"),
    (RTP + 'ca_file = "ca.pem"\n', 4, 'rtp[0].ca_file = "ca.pem"', "only applies with tls = true"),
    (RTP + "insecure = true\n", 4, "rtp[0].insecure = true", "only applies with tls = true"),
    (RTP + "tls = false\nserver_name = 'x'\n", 5, 'rtp[0].server_name = "x"', "only applies with tls = true"),
    (RTP + 'tls = true\nkey_file = "k.pem"\n', 5, 'rtp[0].key_file = "k.pem"', "needs cert_file"),
    (RTP + "tls = true\ninsecure = 1\n", 5, "rtp[0].insecure = 1", "must be true or false"),
    # plain-echo and ports
    (RTP + "ports = [20000]\n", 4, "rtp[0].ports = [20000]", 'only applies to mode = "plain-echo"'),
    ('[[rtp]]\npeer = "e"\nmode = "plain-echo"\n', 1, "rtp[0]: mode", "needs ports = [...]"),
    (
        '[[rtp]]\npeer = "e:7"\nmode = "plain-echo"\nports = [7]\n',
        2,
        'rtp[0].peer = "e:7"',
        "no control port",
    ),
    (
        '[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = [7]\nsecret_file = "s"\n',
        5,
        'rtp[0].secret_file = "s"',
        'does not apply to mode = "plain-echo" (no control channel, no authentication)',
    ),
    (
        '[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = [7]\ntls = true\n',
        5,
        "rtp[0].tls = true",
        "does not",
    ),
    ('[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = [7]\nsamples = 2\n', 5, "rtp[0].samples", "does not"),
    ('[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = []\n', 4, "rtp[0].ports = []", "non-empty list"),
    ('[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = [0]\n', 4, "rtp[0].ports = [0]", "0 is not a port"),
    ('[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = [7, 7]\n', 4, "rtp[0].ports", "lists a port twice"),
    (
        '[[rtp]]\npeer = "e"\nmode = "plain-echo"\nports = [7, 9]\nrange = "8-100"\n',
        5,
        'rtp[0].range = "8-100"',
        "does not hold the ports 7",
    ),
    # labels
    (RTP + 'labels = { peer = "x" }\n', 4, 'rtp[0].labels.peer = "x"', 'label name "peer" is set by umprobe'),
    (RTP + 'labels = { block = "x" }\n', 4, 'rtp[0].labels.block = "x"', "is set by umprobe itself"),
    (RTP + "labels = { site = 1 }\n", 4, "rtp[0].labels.site = 1", "must be a string"),
    # port_map
    (
        '[[targets]]\nhost = "a"\nmodule = "sip_tcp"\nport_map = { 5060 = 6060 }\n',
        4,
        "targets[0].port_map = { 5060 = 6060 }",
        "only applies to a target with a profile",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = [5060, 6060]\n',
        4,
        "targets[0].port_map = [5060, 6060]",
        "must be a table",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = {}\n',
        4,
        "targets[0].port_map = {}",
        "empty",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = { 5064 = 6064 }\n',
        4,
        "targets[0].port_map.5064 = 6064",
        "5064 is not a port of this profile's listeners (5060, 5061, 5062, 5063, 5065, 5066, 5067, 5068)",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = { x = 6064 }\n',
        4,
        "targets[0].port_map.x = 6064",
        '"x" is not a port',
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = { 5062 = 0 }\n',
        4,
        "targets[0].port_map.5062 = 0",
        "a port number from 1 to 65535",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = { 5062 = 7000, 5063 = 7000 }\n',
        4,
        "targets[0].port_map.5063 = 7000",
        "port 7000 is also where 5062 is reached",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\ncall_router_tcp_port = 5080\n'
        "port_map = { 5060 = 6060 }\n",
        5,
        "targets[0].port_map.5060 = 6060",
        "5060 is not a port of this profile's listeners (5061, 5062",
    ),
    (
        '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nport_map = { 5062 = 5060 }\n',
        2,
        'targets[0].host = "a"',
        'probe name "a:5060/tcp" is used twice',
    ),
]


@pytest.mark.parametrize(("text", "line", "subject", "detail"), RTP_ERRORS)
def test_rtp_and_port_map_errors_name_file_line_key_and_value(
    text: str, line: int, subject: str, detail: str
) -> None:
    exc = error(text)
    message = str(exc)
    if line:
        assert message.startswith(f"probes.toml:{line}: {subject}"), message
        assert exc.line == line
    assert detail in message, message


def test_rtp_secret_file_is_read_and_checked(tmp_path: Path) -> None:
    text = RTP.replace("peer.secret", "s/peer.secret")
    exc = error(text, base_dir=tmp_path, check_files=True)
    secret = tmp_path / "s" / "peer.secret"
    assert (
        str(exc) == f'probes.toml:3: rtp[0].secret_file = "s/peer.secret": secret file {secret}: no such file'
    )
    (tmp_path / "s").mkdir()
    secret.mkdir()
    assert "cannot read secret file" in str(error(text, base_dir=tmp_path, check_files=True))
    secret.rmdir()
    secret.write_text("   \n")
    assert str(error(text, base_dir=tmp_path, check_files=True)).endswith(f"secret file {secret} is empty")
    secret.write_text("short\n")
    assert str(error(text, base_dir=tmp_path, check_files=True)).endswith(
        f"secret file {secret}: the secret is 5 bytes; at least 16 are needed"
    )
    secret.write_text("0123456789abcdef\n")
    (entry,) = parse(text, base_dir=tmp_path, check_files=True).rtp
    assert entry.spec.secret == b"0123456789abcdef" and entry.secret_file == str(secret)
    # without file checks the file is not opened, and the spec holds a placeholder no peer will accept
    (entry,) = parse(RTP, base_dir=tmp_path / "nowhere", check_files=False).rtp
    assert entry.spec.secret != b"0123456789abcdef" and len(entry.spec.secret) >= 16


def test_rtp_tls_files_are_loaded_like_a_modules(pki: Path) -> None:
    (pki / "peer.secret").write_text("0123456789abcdef\n")
    tls = RTP + 'tls = true\nca_file = "ca.crt"\ncert_file = "probe.crt"\nkey_file = "probe.key"\n'
    (entry,) = parse(tls, base_dir=pki, check_files=True).rtp
    assert entry.spec.tls == TLSClientConfig(
        ca_file=str(pki / "ca.crt"), cert_file=str(pki / "probe.crt"), key_file=str(pki / "probe.key")
    )
    exc = error(tls.replace('"ca.crt"', '"missing.pem"'), base_dir=pki, check_files=True)
    assert str(exc).startswith('probes.toml:5: rtp[0].ca_file = "missing.pem": '), str(exc)
    exc = error(tls.replace('"probe.key"', '"other.key"'), base_dir=pki, check_files=True)
    assert str(exc).startswith('probes.toml:7: rtp[0].key_file = "other.key": '), str(exc)
    assert "does not match" in str(exc)


def test_shipped_probes_toml_rtp_example_parses_when_uncommented() -> None:
    lines = SHIPPED.read_text().splitlines()
    start = lines.index("# [[rtp]]")
    block: list[str] = []
    for line in lines[start:]:
        if line == "#":
            break
        block.append(line.removeprefix("# "))
    config = parse(SHIPPED.read_text() + "\n" + "\n".join(block) + "\n")
    (entry,) = config.rtp
    assert (entry.name, entry.spec.rtp_range, entry.cycles_per_sweep) == ("mbx01", (20000, 29999), 79)
    assert entry.labels == (("role", "mailbox"), ("site", "ams"))
    assert len(config.probes) == 25


# ----------------------------------------------------------------------------------------------------
# RFC 3263 resolution: `resolution` and [dns]

SRV_MODULE = '[modules.srv]\ntransport = "tcp"\nresolution = "rfc3263"\n'
SRV_TARGET = '[[targets]]\nhost = "sip.contoso.com"\nmodule = "srv"\n'


def test_resolution_defaults_to_a_and_the_exchange_path_is_unchanged() -> None:
    config = parse(TARGET)
    (probe,) = config.probes
    assert (probe.spec.resolution, probe.spec.port_given) == ("a", True)
    assert all(module.resolution == "a" for module in config.modules.values())
    assert config.dns.nameservers is None and config.dns.resolv_conf is None


def test_rfc3263_module_target_without_a_port_takes_its_ports_from_srv() -> None:
    config = parse(
        SRV_MODULE
        + SRV_TARGET
        + '[[targets]]\nhost = "sip.contoso.com"\nmodule = "srv"\nport = 5060\n'
        + '[[targets]]\nhost = "192.0.2.7"\nmodule = "srv"\n'
    )
    srv, explicit, literal = config.probes
    assert (srv.name, srv.id) == ("sip.contoso.com/tcp", "sip.contoso.com|custom|tcp|naptr|srv")
    assert (srv.spec.resolution, srv.spec.port_given, srv.spec.port) == ("rfc3263", False, 5060)
    assert (explicit.name, explicit.spec.port_given) == ("sip.contoso.com:5060/tcp", True)
    assert literal.spec.resolution == "rfc3263"  # an IP literal: step "literal" at run time, no DNS
    lines = describe(config).splitlines()
    assert lines[1].split()[:6] == [
        "sip.contoso.com/tcp",
        "sip.contoso.com",
        "custom",
        "tcp",
        "NAPTR/SRV",
        "srv",
    ]
    assert lines[2].split()[4] == "5060"
    assert lines[-2] == (
        "resolution: RFC 3263 (NAPTR -> SRV -> A/AAAA) for 3 probes (module srv), asking the nameservers of"
        " /etc/resolv.conf; every other probe: A/AAAA"
    )


def test_a_module_port_is_a_named_port() -> None:
    config = parse(SRV_MODULE + "port = 5080\n" + SRV_TARGET)
    (probe,) = config.probes
    assert (probe.name, probe.spec.port, probe.spec.port_given) == ("sip.contoso.com:5080/tcp", 5080, True)


def test_builtin_modules_keep_a_resolution_even_with_defaults() -> None:
    config = parse('[defaults]\nresolution = "rfc3263"\n[modules.mine]\ntransport = "udp"\n' + TARGET)
    assert config.modules["mine"].resolution == "rfc3263"
    assert {config.modules[name].resolution for name in ("sip_tcp", "sip_tls", "sip_udp")} == {"a"}
    assert config.probes[0].spec.resolution == "a"
    replaced = parse('[modules.sip_tcp]\nresolution = "rfc3263"\n' + TARGET)  # a user's sip_tcp is theirs
    assert replaced.probes[0].spec.resolution == "rfc3263"


def test_profile_targets_through_an_rfc3263_module_name_their_ports() -> None:
    config = parse(
        SRV_MODULE
        + '[[targets]]\nhost = "ex01.contoso.local"\nprofile = "exchange2016"\ntcp_module = "srv"\n'
    )
    tcp = [p for p in config.probes if p.spec.transport == "tcp"]
    assert tcp and all(p.spec.resolution == "rfc3263" and p.spec.port_given for p in tcp)


def test_dns_nameservers_and_resolv_conf(tmp_path: Path) -> None:
    config = parse(
        SRV_MODULE + SRV_TARGET + '[dns]\nnameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"]\n'
    )
    assert config.dns.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53))
    assert (
        describe(config)
        .splitlines()[-2]
        .endswith("asking nameservers 127.0.0.1:5353, [::1]:53, 192.0.2.53:53; every other probe: A/AAAA")
    )
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    config = parse(SRV_MODULE + '[dns]\nresolv_conf = "resolv.conf"\n', base_dir=tmp_path, check_files=True)
    assert config.dns.resolv_conf == str(tmp_path / "resolv.conf")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[modules.srv]\nresolution = "srv"\n',
            'probes.toml:2: modules.srv.resolution = "srv": must be one of "a", "rfc3263"',
        ),
        (
            "[defaults]\nresolution = true\n",
            'probes.toml:2: defaults.resolution = true: must be one of "a", "rfc3263"',
        ),
        (
            SRV_MODULE + '[dns]\nnameservers = "127.0.0.1"\n',
            'probes.toml:5: dns.nameservers = "127.0.0.1": must be a non-empty list like'
            ' ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]',
        ),
        (
            SRV_MODULE + "[dns]\nnameservers = []\n",
            "probes.toml:5: dns.nameservers = []: must be a non-empty list like"
            ' ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]',
        ),
        (
            SRV_MODULE + '[dns]\nnameservers = ["ns1.contoso.com"]\n',
            'probes.toml:5: dns.nameservers = ["ns1.contoso.com"]: "ns1.contoso.com" is not "IP", "IPv4:PORT"'
            ' or "[IPv6]:PORT" (an address, not a name)',
        ),
        (
            SRV_MODULE + '[dns]\nnameservers = ["127.0.0.1:99999"]\n',
            'probes.toml:5: dns.nameservers = ["127.0.0.1:99999"]: "127.0.0.1:99999" is not "IP",'
            ' "IPv4:PORT" or "[IPv6]:PORT" (an address, not a name)',
        ),
        (
            SRV_MODULE + '[dns]\nnameservers = ["::1:53"]\n',
            None,  # a bare IPv6 address (port 53), not "[::1]:53": accepted
        ),
        (
            SRV_MODULE + '[dns]\nnameservers = ["127.0.0.1", "127.0.0.1:53"]\n',
            'probes.toml:5: dns.nameservers = ["127.0.0.1", "127.0.0.1:53"]: lists "127.0.0.1:53" twice',
        ),
        (
            SRV_MODULE + "[dns]\nnameservers = [53]\n",
            'probes.toml:5: dns.nameservers = [53]: 53 is not a string "ADDRESS[:PORT]"',
        ),
        (
            SRV_MODULE + '[dns]\nnameservers = ["127.0.0.1"]\nresolv_conf = "/etc/resolv.conf"\n',
            'probes.toml:6: dns.resolv_conf = "/etc/resolv.conf": give nameservers or resolv_conf, not both',
        ),
        (
            '[dns]\nnameservers = ["127.0.0.1"]\n',
            'probes.toml:2: dns.nameservers = ["127.0.0.1"]: has no effect: no module has resolution ='
            ' "rfc3263" (only those ask these nameservers)',
        ),
        (
            SRV_MODULE + '[dns]\nnameserver = ["127.0.0.1"]\n',
            'probes.toml:5: dns.nameserver = ["127.0.0.1"]: unknown key (did you mean nameservers?)',
        ),
        (
            SRV_MODULE + 'dns = "127.0.0.1"\n',
            'probes.toml:4: modules.srv.dns = "127.0.0.1": unknown key (it belongs in the top level)',
        ),
    ],
)
def test_resolution_and_dns_errors(text: str, expected: str | None) -> None:
    if expected is None:
        parse(text)
        return
    assert str(error(text)) == expected


def test_dns_resolv_conf_is_checked_with_files(tmp_path: Path) -> None:
    text = SRV_MODULE + '[dns]\nresolv_conf = "missing.conf"\n'
    parse(text, base_dir=tmp_path)  # --no-check-files: not opened
    message = str(error(text, base_dir=tmp_path, check_files=True))
    assert message == (
        f'probes.toml:5: dns.resolv_conf = "missing.conf": no usable nameserver in {tmp_path}/missing.conf:'
        f" cannot open {tmp_path}/missing.conf"
    )
    (tmp_path / "names.conf").write_text("nameserver ns1.contoso.com\n")
    message = str(
        error(SRV_MODULE + '[dns]\nresolv_conf = "names.conf"\n', base_dir=tmp_path, check_files=True)
    )
    assert message.startswith(
        f'probes.toml:5: dns.resolv_conf = "names.conf": {tmp_path}/names.conf: nameserver'
    )


def test_step_is_a_builtin_label() -> None:
    message = str(error(TARGET + 'labels = { step = "x" }\n'))
    assert 'label name "step" is set by umprobe itself' in message
