"""Profiles as data: the Exchange UM port map per startup mode, and the profiles beyond Exchange (Teams
Direct Routing, Skype/Lync mediation, SIP trunk) with their listeners, OPTIONS shape, config keys and CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from umprobe.config import ConfigError, parse_config
from umprobe.devcerts import DevCA
from umprobe.net.tls import make_server_context
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.profiles import (
    EXCHANGE_PROFILES,
    LISTENER_NAMES,
    PROBED_TRANSPORTS,
    PROFILE_DATA,
    PROFILES,
    TEAMS_VARIANTS,
    TRANSPORTS,
    expand_profile,
    get_profile,
    port_map,
    request_shape,
)
from umprobe.sip import build_options


def _keys(mode: str) -> set[tuple[str, int, str]]:
    return {(s.listener, s.port, s.transport) for s in expand_profile("exchange2013", mode)}


def test_tcp_mode() -> None:
    keys = _keys("tcp")
    assert ("call_router", 5060, "tcp") in keys
    assert ("um_service", 5062, "tcp") in keys
    assert not any(t == "tls" for _, _, t in keys)
    assert {p for name, p, _ in keys if name == "um_worker"} == {5065, 5066, 5067, 5068}


def test_tls_mode() -> None:
    keys = _keys("tls")
    assert ("call_router", 5061, "tls") in keys
    assert ("um_service", 5063, "tls") in keys
    assert not any(t == "tcp" for _, _, t in keys)


def test_dual_mode_probes_every_worker_port_with_both_transports() -> None:
    specs = expand_profile("exchange2016", "dual")
    workers = [s for s in specs if s.listener == "um_worker"]
    assert len(workers) == 8
    assert all(not s.required and s.group in ("um_worker_tcp", "um_worker_tls") for s in workers)
    assert all(s.required for s in specs if s.listener != "um_worker")


def test_changed_call_router_ports_and_roles() -> None:
    specs = expand_profile(
        "exchange2016", "dual", call_router_tcp_port=5070, call_router_tls_port=5071, roles=("call_router",)
    )
    assert {(s.port, s.transport) for s in specs} == {(5070, "tcp"), (5071, "tls")}


def test_listener_label_values_are_bounded() -> None:
    for mode in ("tcp", "tls", "dual"):
        assert {s.listener for s in expand_profile("exchange2013", mode)} <= set(LISTENER_NAMES)


@pytest.mark.parametrize(("profile", "mode"), [("exchange2019", "tcp"), ("exchange2013", "udp")])
def test_unknown_profile_or_mode(profile: str, mode: str) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        expand_profile(profile, mode)


def test_port_map_covers_rtp_range() -> None:
    facts = port_map()
    assert any(f.protocol == "UDP" and f.ports == "1024-65535" for f in facts)
    assert any("Set-UMCallRouterSettings" in f.changeable for f in facts)


# ---------------------------------------------------------------------------------------------------------
# Profiles as data, beyond Exchange

MICROSOFT = ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com")


def test_every_profile_is_data() -> None:
    assert set(PROFILES) == set(PROFILE_DATA)
    assert set(EXCHANGE_PROFILES) == {"exchange2013", "exchange2016"}
    for name, profile in PROFILE_DATA.items():
        assert profile.name == name
        assert profile.listeners
        for li in profile.listeners:
            assert li.transport in TRANSPORTS
            assert li.listener in LISTENER_NAMES
        assert (profile.policy is None) == profile.exchange  # Exchange's output stays as it was
    assert PROBED_TRANSPORTS == ("tcp", "tls", "udp")


def test_exchange_expansion_is_exactly_as_before() -> None:
    got = [
        (s.listener, s.port, s.transport, s.role, s.required, s.group)
        for s in expand_profile("exchange2016", "dual")
    ]
    worker = [
        ("um_worker", p, t, "Mailbox", False, f"um_worker_{t}")
        for t in ("tcp", "tls")
        for p in (5065, 5066, 5067, 5068)
    ]
    assert got == [
        ("call_router", 5060, "tcp", "Client Access", True, None),
        ("call_router", 5061, "tls", "Client Access", True, None),
        ("um_service", 5062, "tcp", "Mailbox", True, None),
        ("um_service", 5063, "tls", "Mailbox", True, None),
        *worker,
    ]
    shape = request_shape("exchange2016", "tls", sbc_fqdn="sbc1.contoso.com")
    assert (shape.uri_scheme, shape.from_domain, shape.contact_host, shape.contact_port) == (
        "sip",
        None,
        None,
        None,
    )


def test_teams_direct_routing_profile() -> None:
    teams = get_profile("teams-direct-routing")
    specs = expand_profile("teams-direct-routing")
    assert [(s.listener, s.port, s.transport, s.required) for s in specs] == [
        ("sip_proxy", 5061, "tls", True)
    ]
    assert teams.default_hosts() == MICROSOFT
    assert teams.default_hosts("gcch") == ("sip.pstnhub.gov.teams.microsoft.us",)
    assert teams.default_hosts("dod") == ("sip.pstnhub.dod.teams.microsoft.us",)
    assert set(TEAMS_VARIANTS) == {"commercial", "gcch", "dod"}
    with pytest.raises(ValueError, match="expected one of commercial, gcch, dod"):
        teams.default_hosts("china")
    assert teams.requires_sbc_fqdn and teams.requires_client_cert
    assert teams.policy is not None and teams.policy.name == "teams-direct-routing"
    shape = request_shape("teams-direct-routing", "tls", sbc_fqdn="sbc1.contoso.com")
    assert (shape.uri_scheme, shape.from_domain, shape.contact_host, shape.contact_port) == (
        "sip",
        "sbc1.contoso.com",
        "sbc1.contoso.com",
        5061,
    )
    assert (
        request_shape("teams-direct-routing", "tls", sbc_fqdn="sbc1.contoso.com", sbc_port=5067).contact_port
        == 5067
    )


def test_skype_and_trunk_profiles_and_udp_as_data() -> None:
    assert {(s.port, s.transport) for s in expand_profile("skype-mediation")} == {
        (5067, "tls"),
        (5068, "tcp"),
    }
    trunk = get_profile("sip-trunk")
    assert ("sip_trunk", 5060, "udp") in {(li.listener, li.port, li.transport) for li in trunk.listeners}
    # UDP is data like the others, and the SIP probe speaks it: the trunk's 5060/udp is probed.
    assert {(s.port, s.transport) for s in expand_profile("sip-trunk")} == {
        (5060, "tcp"),
        (5061, "tls"),
        (5060, "udp"),
    }
    assert [(s.port, s.transport) for s in expand_profile("sip-trunk", transports=("tls",))] == [
        (5061, "tls")
    ]
    assert [(s.port, s.transport) for s in expand_profile("sip-trunk", transports=("udp",))] == [
        (5060, "udp")
    ]
    with pytest.raises(ValueError, match="has no 'udp' listener"):
        expand_profile("skype-mediation", transports=("udp",))
    assert request_shape("sip-trunk", "tcp", sbc_fqdn="sbc1.contoso.com").contact_port == 5060
    assert request_shape("skype-mediation", "tls", sbc_fqdn="gw1.contoso.com").contact_port == 5067
    assert request_shape("sip-trunk", "tls").contact_host is None  # no SBC FQDN: the default shape


def test_builder_contact_shape() -> None:
    request = build_options(
        target_host="sip.pstnhub.microsoft.com",
        target_port=5061,
        transport="tls",
        local_host="192.0.2.10",
        local_port=40123,
        from_domain="sbc1.contoso.com",
        contact_host="sbc1.contoso.com",
        contact_port=5061,
    )
    lines = request.raw.decode().split("\r\n")
    assert lines[0] == "OPTIONS sip:sip.pstnhub.microsoft.com:5061;transport=tls SIP/2.0"
    assert "Contact: <sip:sbc1.contoso.com:5061;transport=tls>" in lines
    assert any(line.startswith("From: <sip:umprobe@sbc1.contoso.com>;tag=") for line in lines)
    assert "Via: SIP/2.0/TLS 192.0.2.10:40123;branch=" in request.raw.decode()
    default = build_options(
        target_host="cas01", target_port=5060, transport="tcp", local_host="192.0.2.10", local_port=40123
    )
    assert "Contact: <sip:umprobe@192.0.2.10:40123;transport=tcp>" in default.raw.decode()


TEAMS_MODULE = '[modules.teams]\ntransport = "tls"\ncert_file = "sbc.pem"\nkey_file = "sbc.key"\n'


def cfg(text: str) -> Any:
    return parse_config(text, source="probes.toml", check_files=False)


def cfg_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        cfg(text)
    return str(info.value)


def test_config_teams_target_defaults_to_microsofts_proxies() -> None:
    config = cfg(
        TEAMS_MODULE + '[[targets]]\nprofile = "teams-direct-routing"\nsbc_fqdn = "sbc1.contoso.com"\n'
    )
    assert [p.target for p in config.probes] == list(MICROSOFT)
    for probe in config.probes:
        assert probe.profile == "teams-direct-routing"
        assert (probe.spec.port, probe.spec.transport, probe.spec.listener) == (5061, "tls", "sip_proxy")
        assert (probe.spec.contact_host, probe.spec.contact_port, probe.spec.from_domain) == (
            "sbc1.contoso.com",
            5061,
            "sbc1.contoso.com",
        )
        assert probe.spec.uri_scheme == "sip"
        assert probe.module == "teams"
    gcch = cfg(
        TEAMS_MODULE
        + '[[targets]]\nprofile = "teams-direct-routing"\nvariant = "gcch"\nsbc_fqdn = "sbc1.contoso.us"\n'
    )
    assert [p.name for p in gcch.probes] == ["sip.pstnhub.gov.teams.microsoft.us:5061/tls"]


def test_config_teams_target_with_a_host_and_port_map_and_server_name() -> None:
    config = cfg(
        TEAMS_MODULE
        + '[[targets]]\nprofile = "teams-direct-routing"\nhost = "127.0.0.1"\nsbc_fqdn = "sbc1.contoso.com"\n'
        + 'sbc_port = 5067\nport_map = { 5061 = 41061 }\nserver_name = "sip.pstnhub.microsoft.com"\n'
    )
    (probe,) = config.probes
    assert (probe.target, probe.spec.port, probe.spec.contact_port) == ("127.0.0.1", 41061, 5067)
    assert probe.spec.server_name == "sip.pstnhub.microsoft.com"
    assert probe.spec.contact_host == "sbc1.contoso.com"  # replace() kept the shape through the override


def test_config_skype_tcp_only_needs_no_client_certificate() -> None:
    config = cfg('[[targets]]\nhost = "med1"\nprofile = "skype-mediation"\ntransports = ["tcp"]\n')
    assert [(p.spec.transport, p.spec.port) for p in config.probes] == [("tcp", 5068)]


def test_config_exchange_probes_carry_no_profile_policy() -> None:
    config = cfg('[[targets]]\nhost = "ex01"\nprofile = "exchange2016"\num_mode = "tcp"\n')
    assert all(p.profile is None and p.spec.contact_host is None for p in config.probes)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (TEAMS_MODULE + '[[targets]]\nprofile = "teams-direct-routing"\n', 'needs sbc_fqdn = "SBC FQDN"'),
        (
            '[[targets]]\nprofile = "teams-direct-routing"\nsbc_fqdn = "sbc1.contoso.com"\n',
            "needs a TLS module with cert_file",
        ),
        (
            TEAMS_MODULE
            + '[[targets]]\nprofile = "teams-direct-routing"\nsbc_fqdn = "s.c.com"\num_mode = "tls"\n',
            'targets[0].um_mode = "tls": is Exchange\'s',
        ),
        (
            TEAMS_MODULE
            + '[[targets]]\nprofile = "teams-direct-routing"\nsbc_fqdn = "s.c.com"\nvariant = "x"\n',
            'targets[0].variant = "x": must be one of "commercial", "gcch", "dod"',
        ),
        (
            TEAMS_MODULE + '[[targets]]\nprofile = "teams-direct-routing"\nsbc_fqdn = "s.c.com"\nport = 1\n',
            "use port_map",
        ),
        (
            '[[targets]]\nhost = "a"\nprofile = "exchange2016"\nsbc_fqdn = "s.c.com"\n',
            "does not apply to profile",
        ),
        (
            '[[targets]]\nhost = "a"\nmodule = "sip_tcp"\nsbc_fqdn = "s.c.com"\n',
            "only applies to a target with a profile",
        ),
        ('[[targets]]\nhost = "a"\nprofile = "sip-trunk"\nvariant = "gcch"\n', "does not apply"),
        (
            '[[targets]]\nhost = "a"\nprofile = "sip-trunk"\ntransports = ["sctp"]\n',
            '"sctp" is not one of tcp, udp, tls',
        ),
        (
            '[[targets]]\nhost = "a"\nprofile = "sip-trunk"\nsbc_port = 5070\n',
            "has no effect without sbc_fqdn",
        ),
        ('[[targets]]\nprofile = "sip-trunk"\n', "host is required"),
        (
            '[[targets]]\nhost = "med1"\nprofile = "skype-mediation"\n',
            "needs a TLS module with cert_file: its policy judges the client certificate",
        ),
    ],
)
def test_config_profile_errors_are_one_line(text: str, fragment: str) -> None:
    message = cfg_error(text)
    assert fragment in message, message


def test_config_trunk_and_skype_targets() -> None:
    config = cfg(
        '[[targets]]\nhost = "trunk.example.net"\nprofile = "sip-trunk"\ntransports = ["tls"]\n'
        'sbc_fqdn = "sbc1.contoso.com"\n'
        + TEAMS_MODULE
        + '[[targets]]\nhost = "med01.contoso.local"\nprofile = "skype-mediation"\ntls_module = "teams"\n'
    )
    trunk, *skype = config.probes
    assert (trunk.spec.port, trunk.spec.transport, trunk.profile, trunk.spec.contact_host) == (
        5061,
        "tls",
        "sip-trunk",
        "sbc1.contoso.com",
    )
    assert {(p.spec.port, p.spec.transport) for p in skype} == {(5067, "tls"), (5068, "tcp")}
    assert all(p.spec.contact_host is None and p.profile == "skype-mediation" for p in skype)


def umprobe_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "umprobe.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--profile", "teams-direct-routing", "--cert", "c.pem", "--key", "k.pem"], "needs --sbc-fqdn"),
        (["--profile", "teams-direct-routing", "--sbc-fqdn", "sbc1.contoso.com"], "needs --cert and --key"),
        (
            ["--profile", "exchange2016", "--sbc-fqdn", "sbc1.contoso.com", "ex01"],
            "--sbc-fqdn, --sbc-port and --variant go with",
        ),
        (
            ["--profile", "teams-direct-routing", "--um-mode", "tls", "--sbc-fqdn", "s.c.com"],
            "--um-mode is Exchange's",
        ),
        (
            ["--profile", "sip-trunk", "--variant", "gcch", "trunk01"],
            "--variant goes with --profile teams-direct-routing",
        ),
        (["--profile", "sip-trunk", "trunk01:5061"], "bare host"),
        (["--profile", "sip-trunk"], "TARGET"),
        (
            [
                "--profile",
                "teams-direct-routing",
                "--transport",
                "tcp",
                "--sbc-fqdn",
                "s.c.com",
                "--cert",
                "c",
                "--key",
                "k",
                "127.0.0.1",
            ],
            "has no 'tcp' listener",
        ),
        (
            [
                "--profile",
                "teams-direct-routing",
                "--sbc-fqdn",
                "s.c.com",
                "--cert",
                "c",
                "--key",
                "k",
                "--variant",
                "dod",
                "127.0.0.1",
            ],
            "--variant chooses Microsoft's hosts",
        ),
    ],
)
def test_cli_profile_usage_errors(args: list[str], fragment: str) -> None:
    # Every one fails before anything is sent (none of these may ever reach Microsoft's hosts).
    out = umprobe_cli("check", *args)
    assert out.returncode == 3, out
    assert out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("umprobe: error:") and fragment in line, line


async def test_cli_teams_profile_against_umprobes_own_responder(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """No lab needed: umprobe's SIP responder as a stand-in proxy (the Kamailio one is in tests/integration).
    It checks nothing about the Contact, so this is about the shape, the JSON and the exit codes."""
    ca = DevCA.create("profiles test CA", key_type="rsa")
    ca_file = ca.write_ca(tmp_path, "ca")
    server_crt, server_key = ca.issue(["127.0.0.1"], key_type="rsa").write(tmp_path, "server")
    sbc_crt, sbc_key = ca.issue(["sbc1.contoso.com"], key_type="rsa").write(tmp_path, "sbc")
    ctx = make_server_context(
        cert_file=str(server_crt), key_file=str(server_key), ca_file=str(ca_file), require_client_cert=True
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_sip_responder, listeners, tls_context=ctx))
    port = listeners[0].socket.getsockname()[1]
    common = ["--profile", "teams-direct-routing", "--sbc-fqdn", "sbc1.contoso.com", "--ca", str(ca_file)]
    common += ["--cert", str(sbc_crt), "--key", str(sbc_key), "--json", f"127.0.0.1:{port}"]
    tls12 = await trio.to_thread.run_sync(lambda: umprobe_cli("check", "--max-tls", "1.2", *common))
    assert tls12.returncode == 0, tls12
    doc = json.loads(tls12.stdout)
    (row,) = doc["results"]
    assert (row["listener"], row["port"], row["status_code"]) == ("sip_proxy", port, 200)
    assert row["tls"]["version"] == "TLSv1.2"
    assert row["policy"]["compliant"] is True and row["policy"]["profile"] == "teams-direct-routing"
    # With TLS 1.3 offered too, the responder picks 1.3: the SIP answer is fine, Microsoft's policy is not.
    tls13 = await trio.to_thread.run_sync(lambda: umprobe_cli("check", *common))
    assert tls13.returncode == 2, tls13
    (row,) = json.loads(tls13.stdout)["results"]
    assert (row["status_code"], row["state"], row["policy"]["failed"]) == (
        200,
        "CRITICAL",
        ["tls_version_allowed"],
    )


GUIDES = Path(__file__).resolve().parent.parent / "docs" / "profiles"


@pytest.mark.parametrize(
    ("guide", "probes"),
    [
        ("teams-direct-routing.md", [f"{host}:5061/tls" for host in MICROSOFT]),
        (
            "skype-mediation.md",
            ["med01.contoso.local:5067/tls", "med02.contoso.local:5067/tls"],
        ),
        ("sip-trunk.md", ["sip.carrier.example:5060/tcp", "sip.carrier.example:5062/tls"]),
    ],
)
def test_each_profile_guide_has_the_config_an_admin_writes(guide: str, probes: list[str]) -> None:
    text = (GUIDES / guide).read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    config = cfg(block)  # files are not read: the paths are an admin's
    assert [p.name for p in config.probes] == probes
    profile = guide.removesuffix(".md")
    assert {p.profile for p in config.probes} == {profile}
    assert f'profile = "{profile}"' in block
    policy = get_profile(profile).policy
    assert policy is not None
    for rule in policy.rules:  # every rule of the profile's policy is explained in its guide
        assert f"`{rule}`" in text, rule
