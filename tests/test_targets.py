"""TARGET strings: every accepted shape, and a clear error naming the string for the rest."""

import pytest

from umprobe.targets import Target, TargetError, parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cas01.contoso.local", Target("cas01.contoso.local", None, None, None)),
        ("CAS01.Contoso.Local.", Target("cas01.contoso.local", None, None, None)),
        ("cas01:5062", Target("cas01", 5062, None, None)),
        ("192.0.2.10", Target("192.0.2.10", None, None, None)),
        ("192.0.2.10:5061", Target("192.0.2.10", 5061, None, None)),
        ("[::1]:5061", Target("::1", 5061, None, None)),
        ("[2001:DB8::1]", Target("2001:db8::1", None, None, None)),
        ("2001:db8::1", Target("2001:db8::1", None, None, None)),
        ("sip:cas01.contoso.local", Target("cas01.contoso.local", None, None, "sip")),
        ("sip:cas01:5061;transport=tls", Target("cas01", 5061, "tls", "sip")),
        ("sip:cas01:5060;transport=TCP", Target("cas01", 5060, "tcp", "sip")),
        ("SIPS:umprobe@cas01", Target("cas01", None, "tls", "sips")),
        ("sip:[::1]:5062;transport=tcp;lr", Target("::1", 5062, "tcp", "sip")),
        ("sip:cas01;transport=UDP", Target("cas01", None, "udp", "sip")),
    ],
)
def test_accepted_shapes(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cas01:0", "port '0'"),
        ("cas01:70000", "port '70000'"),
        ("cas01:http", "port 'http'"),
        ("[::1", "missing ']'"),
        ("[192.0.2.1]:5060", "not an IPv6 address"),
        ("bad host", "neither a host name"),
        ("sip:cas01;transport=sctp", "transport='sctp'"),
        ("sips:cas01;transport=udp", "sips: URI cannot use transport=udp"),
        ("sips:cas01;transport=tcp", "sips: URI cannot use transport=tcp"),
        ("", "no host"),
    ],
)
def test_rejected_shapes_name_the_string(text: str, fragment: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_is_ip() -> None:
    assert parse_target("[::1]").is_ip
    assert not parse_target("localhost").is_ip
