"""Address rules for publishers: CIDR allow and deny lists (sans-I/O).

    rules = AddressRules.parse(allow="10.0.0.0/8, 192.168.1.7", deny="10.9.0.0/16")
    rules.refusal("10.9.1.2")   # -> "address 10.9.1.2 is denied (10.9.0.0/16)"
    rules.refusal("10.1.1.1")   # -> None: may publish

A deny entry always wins; a non-empty allow list admits only the addresses it
lists. IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket
reports) are checked as the IPv4 address they carry. The same rules serve the
global lists (settings ``ingest_allow`` / ``ingest_deny``) and each stream's own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_RULES = 1024  # entries per list


class AccessRuleError(ValueError):
    """A CIDR list that cannot be parsed."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 2001:db8::/32 192.168.1.7"`` (commas or spaces) -> networks. A bare
    address is a /32 (or /128); host bits set under the prefix are refused, not dropped."""
    out: list[Network] = []
    for item in text.replace(",", " ").split():
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise AccessRuleError(f"not an address or CIDR network: {item!r} ({exc})") from None
    if len(out) > MAX_RULES:
        raise AccessRuleError(f"at most {MAX_RULES} entries per list, got {len(out)}")
    return tuple(out)


def parse_address(text: str) -> Address | None:
    """A peer address as the socket gives it; None when it is not an IP address."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class AddressRules:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, allow: str = "", deny: str = "") -> AddressRules:
        return cls(parse_networks(allow), parse_networks(deny))

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny

    def refusal(self, ip: str) -> str | None:
        """Why ``ip`` may not publish, or None when it may."""
        if self.empty:
            return None
        addr = parse_address(ip)
        if addr is None:
            return f"address {ip!r} is not an IP address"
        for net in self.deny:
            if addr.version == net.version and addr in net:
                return f"address {addr} is denied ({net})"
        if self.allow and not any(addr.version == n.version and addr in n for n in self.allow):
            return f"address {addr} is not in the allow list"
        return None
