"""Client addresses: who a request really comes from, and which proxies may say so.

A request's client is its socket's peer address, unless that peer is one of the
configured trusted proxies (``trusted_proxies``: CIDRs, e.g. the edge's
address). Then ``X-Forwarded-For`` is read from the right: every hop a trusted
proxy added is skipped, and the first address a trusted proxy did not vouch
for is the client. Anything to its left was written by the client itself and
is never believed, so a spoofed header from anyone else changes nothing::

    >>> p = TrustedProxies.parse("10.0.0.0/8")
    >>> p.client_ip("10.0.0.5", "6.6.6.6, 203.0.113.7")
    '203.0.113.7'
    >>> p.client_ip("203.0.113.9", "1.2.3.4")
    '203.0.113.9'

Every per-address rule (HTTP connection caps, chat sockets and bans, download
limits) keys on ``client_ip``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32  # X-Forwarded-For entries looked at, from the right


class ProxyError(ValueError):
    """A trusted_proxies or listen setting tidecast cannot use."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is one host) -> networks."""
    out: list[Network] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ProxyError(f"trusted_proxies: {item!r} is not an address or CIDR ({exc})") from None
    return tuple(out)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ProxyError(f"listen address must be HOST:PORT, got {text!r}")
    return host, int(port)


def _addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        return cls(parse_networks(text))

    def trusts(self, ip: str) -> bool:
        addr = _addr(ip)
        return addr is not None and any(addr in n for n in self.networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: ``peer``, or what trusted proxies say it is."""
        if not forwarded_for or not self.networks or not self.trusts(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")][-MAX_HOPS:]
        client = peer
        for hop in reversed(hops):
            addr = _addr(hop)
            if addr is None:  # garbage: stop at the last address we could believe
                break
            client = str(addr)
            if not any(addr in n for n in self.networks):
                break
        return client
