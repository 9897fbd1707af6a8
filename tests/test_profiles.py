"""The Exchange UM port map as data: which listeners each startup mode expects."""

import pytest

from umprobe.profiles import LISTENER_NAMES, expand_profile, port_map


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
