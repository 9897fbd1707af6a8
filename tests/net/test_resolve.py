"""resolve(): IP literals without DNS, "localhost" from the hosts file, and a name that cannot exist."""

from __future__ import annotations

import pytest
import trio

from umprobe.net.errors import ResolveError
from umprobe.net.resolve import ResolvedAddress, resolve

CAP = 10


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ResolvedAddress("127.0.0.1", "ipv4")),
        ("::1", ResolvedAddress("::1", "ipv6")),
        ("[::1]", ResolvedAddress("::1", "ipv6")),
        ("[2001:DB8:0:0::1]", ResolvedAddress("2001:db8::1", "ipv6")),  # normalised to compressed form
        ("192.0.2.7", ResolvedAddress("192.0.2.7", "ipv4")),  # returned as is: no lookup, no traffic
    ],
)
async def test_ip_literals_are_returned_directly(host: str, expected: ResolvedAddress) -> None:
    with trio.fail_after(CAP):
        assert await resolve(host, 5060) == [expected]


async def test_ip_literal_of_a_disabled_family() -> None:
    with trio.fail_after(CAP), pytest.raises(ResolveError, match="only ipv4 is enabled"):
        await resolve("::1", 5060, families=("ipv4",))


async def test_localhost_resolves_to_loopback() -> None:
    with trio.fail_after(CAP):
        found = await resolve("localhost", 5060)
    assert found, "localhost must resolve"
    assert all(a.address in ("127.0.0.1", "::1") for a in found)
    assert len({a.address for a in found}) == len(found)  # deduplicated
    with trio.fail_after(CAP):
        v4 = await resolve("localhost", 5060, families=("ipv4",))
    assert v4 == [ResolvedAddress("127.0.0.1", "ipv4")]


async def test_unresolvable_name_is_resolve_error() -> None:
    # RFC 6761 §6.4: ".invalid" never resolves.
    with trio.fail_after(CAP), pytest.raises(ResolveError) as caught:
        await resolve("cas01.umprobe-test.invalid", 5061)
    assert caught.value.detail.startswith("cannot resolve cas01.umprobe-test.invalid: ")
    assert "RFC 6761" in caught.value.detail  # answered locally: no query leaves the machine


async def test_invalid_host_name_is_resolve_error() -> None:
    with trio.fail_after(CAP), pytest.raises(ResolveError, match="cannot resolve"):
        await resolve("a" * 64 + ".example", 5061)  # a label over 63 octets: IDNA refuses it locally


async def test_bad_families_are_our_bug() -> None:
    with pytest.raises(ValueError, match="families"):
        await resolve("localhost", 5060, families=("ipx",))
    with pytest.raises(ValueError, match="families"):
        await resolve("localhost", 5060, families=())
