"""Address rules and failed-attempt bans: the sans-I/O policy pieces of ingest auth."""

from __future__ import annotations

import pytest

from tidecast.ingest.access import AccessRuleError, AddressRules, parse_networks
from tidecast.ingest.bans import BanPolicy, MemoryBans, ban_key


@pytest.mark.parametrize(
    ("allow", "deny", "ip", "refused"),
    [
        ("", "", "203.0.113.9", None),
        ("", "203.0.113.0/24", "203.0.113.9", "denied (203.0.113.0/24)"),
        ("", "203.0.113.0/24", "203.0.114.9", None),
        ("10.0.0.0/8", "", "10.1.2.3", None),
        ("10.0.0.0/8", "", "11.1.2.3", "not in the allow list"),
        ("10.0.0.0/8", "10.9.0.0/16", "10.9.0.1", "denied"),  # deny wins
        ("10.0.0.0/8", "", "::ffff:10.0.0.1", None),  # v4-mapped is the v4 address
        ("", "10.0.0.1", "::ffff:10.0.0.1", "denied"),
        ("2001:db8::/32", "", "2001:db8::1", None),
        ("2001:db8::/32", "", "10.0.0.1", "not in the allow list"),
        ("127.0.0.1, 127.0.0.3", "", "127.0.0.2", "not in the allow list"),
        ("10.0.0.0/8", "", "not-an-ip", "not an IP address"),
    ],
)
def test_address_rules(allow: str, deny: str, ip: str, refused: str | None) -> None:
    got = AddressRules.parse(allow, deny).refusal(ip)
    if refused is None:
        assert got is None
    else:
        assert got is not None and refused in got


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "300.1.1.1", "example.com", "10.0.0.0/33"])
def test_bad_cidrs_are_refused_clearly(bad: str) -> None:
    with pytest.raises(AccessRuleError, match="not an address or CIDR"):
        parse_networks(f"10.0.0.0/8, {bad}")


def test_failures_within_the_window_ban_then_the_ban_ends() -> None:
    bans = MemoryBans(BanPolicy(max_failures=3, window=10, ban_seconds=60))
    assert bans.failed("198.51.100.7", 0) is None
    assert bans.failed("198.51.100.7", 1) is None
    assert bans.banned_until("198.51.100.7", 1) is None
    assert bans.failed("198.51.100.7", 2) == 62
    assert bans.banned_until("198.51.100.7", 30) == 62
    assert bans.banned_until("198.51.100.8", 30) is None  # another address is not affected
    assert bans.failed("198.51.100.7", 40) is None  # attempts while banned do not extend it
    assert bans.banned_until("198.51.100.7", 62) is None
    assert bans.bans == 1


def test_failures_spread_wider_than_the_window_do_not_ban() -> None:
    bans = MemoryBans(BanPolicy(max_failures=3, window=10, ban_seconds=60))
    assert all(bans.failed("198.51.100.7", t * 6.0) is None for t in range(20))


def test_ipv6_is_banned_per_64() -> None:
    bans = MemoryBans(BanPolicy(max_failures=2, window=10, ban_seconds=60))
    bans.failed("2001:db8:1:2::1", 0)
    assert bans.failed("2001:db8:1:2:ffff::9", 1) == 61
    assert bans.banned_until("2001:db8:1:2::77", 2) == 61
    assert bans.banned_until("2001:db8:1:3::1", 2) is None
    assert ban_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_tracked_addresses_are_bounded() -> None:
    bans = MemoryBans(BanPolicy(max_failures=5, window=10, ban_seconds=60, max_tracked=100))
    for i in range(1000):
        bans.failed(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(bans) == 100


def test_ban_seconds_zero_never_bans() -> None:
    bans = MemoryBans(BanPolicy(max_failures=1, window=10, ban_seconds=0))
    assert bans.failed("192.0.2.1", 0) is None and bans.banned_until("192.0.2.1", 0) is None
