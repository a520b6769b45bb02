# -*- test-case-name: tests.test_policy -*-
"""
Which peers a relay may reach.

Every path that names a peer (CreatePermission, ChannelBind, Send, and
later Connect and inbound traffic) asks L{PeerPolicy.allows}, after
L{canonical_peer} has turned every IPv4-in-IPv6 spelling into the IPv4
address it carries: the field's worst TURN bugs (relays into 127.0.0.1 via
C{::ffff:127.0.0.1}, C{0.0.0.0}, C{[::]}) were all a check that looked at
one spelling and a socket that accepted another.
"""

from __future__ import annotations

import ipaddress
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
#: "This network": Linux delivers 0.0.0.0/8 to the host itself.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def canonical_peer(host: str) -> IPAddress:
    """
    Parse C{host} and unwrap IPv4-mapped (C{::ffff:a.b.c.d}),
    IPv4-compatible (C{::a.b.c.d}), 6to4 (C{2002:AABB:CCDD::/48}), NAT64
    (C{64:ff9b::/96}) and Teredo (C{2001::/32}, the client address) forms.

    @raise ValueError: if C{host} is not an IP address literal.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return address


class PeerPolicy:
    """
    The peer address check, in one place.

    For now the refusals are loopback and unspecified addresses, lifted by
    C{allow_loopback} (for tests and same-host deployments).
    """

    def __init__(self, allow_loopback: bool = False) -> None:
        self.allow_loopback = allow_loopback

    def allows(self, host: str) -> bool:
        """
        Whether a relay may exchange traffic with C{host}.
        """
        try:
            address = canonical_peer(host)
        except ValueError:
            return False
        if address.is_unspecified or address in _THIS_NETWORK:
            return False
        if address.is_loopback:
            return self.allow_loopback
        return True
