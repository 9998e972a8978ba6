"""Client addresses: X-Forwarded-For is believed only from trusted proxies, read from the right."""

from __future__ import annotations

import pytest

from tidecast.limits import Refusal, Slots
from tidecast.netaddr import ProxyError, TrustedProxies, parse_listen, parse_networks


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "client"),
    [
        ("", "203.0.113.9", "1.2.3.4", "203.0.113.9"),  # nobody trusted: the socket's address
        ("10.0.0.0/8", "203.0.113.9", "1.2.3.4", "203.0.113.9"),  # a spoof from an untrusted client
        ("10.0.0.0/8", "10.0.0.5", "203.0.113.7", "203.0.113.7"),  # the edge says who it is
        ("10.0.0.0/8", "10.0.0.5", "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the client's own prefix ignored
        ("10.0.0.0/8", "10.0.0.5", "203.0.113.7, 10.0.0.9", "203.0.113.7"),  # two trusted hops
        ("10.0.0.0/8", "10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # all trusted: the leftmost
        ("10.0.0.0/8", "10.0.0.5", "garbage", "10.0.0.5"),
        ("10.0.0.0/8", "10.0.0.5", "203.0.113.7, garbage", "10.0.0.5"),
        ("10.0.0.0/8", "10.0.0.5", "", "10.0.0.5"),
        ("10.0.0.0/8", "10.0.0.5", "203.0.113.7:5555", "203.0.113.7"),
        ("::1, 127.0.0.1", "::1", "[2001:db8::1]:80", "2001:db8::1"),
        ("127.0.0.1", "::ffff:127.0.0.1", "198.51.100.2", "198.51.100.2"),  # v4-mapped peer
    ],
)
def test_client_ip(trusted: str, peer: str, xff: str, client: str) -> None:
    assert TrustedProxies.parse(trusted).client_ip(peer, xff) == client


def test_bad_settings_are_refused_clearly() -> None:
    with pytest.raises(ProxyError, match="'10.0.0/33'"):
        parse_networks("127.0.0.1, 10.0.0/33")
    assert len(parse_networks(" 10.0.0.0/8 ,, ::1 ")) == 2
    assert parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("9100", "host:", ":9100", "h:99999"):
        with pytest.raises(ProxyError):
            parse_listen(bad)


def test_slots_per_key_and_total() -> None:
    s = Slots(2, 3)
    assert s.take("a") is None and s.take("a") is None
    assert s.take("a") is Refusal.PER_IP
    assert s.take("b") is None
    assert s.take("c") is Refusal.TOTAL
    s.release("a")
    assert s.take("c") is None and s.in_use == 3
    for k in ("a", "b", "c"):
        s.release(k)
    assert s.held == {} and s.in_use == 0
    with pytest.raises(ValueError):
        s.release("a")
