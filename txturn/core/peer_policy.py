# -*- test-case-name: tests.test_policy -*-
"""
Which peers a relay may reach.

Every path that names a peer (CreatePermission, ChannelBind, Send,
Connect, incoming TCP connections) asks L{PeerPolicy.allows}, after
L{canonical_peer} has turned every IPv4-in-IPv6 spelling into the IPv4
address it carries: the field's worst TURN bugs (relays into 127.0.0.1 via
C{::ffff:127.0.0.1}, C{0.0.0.0}, C{[::]}) were all a check that looked at
one spelling and a socket that accepted another.  Incoming UDP from peers
needs a permission, and permissions are only installed for addresses this
policy allowed.

By default a relay reaches only public unicast addresses: loopback,
unspecified, link-local (with the cloud metadata address), private,
unique-local, site-local, CGNAT, benchmarking, documentation, multicast,
reserved and broadcast ranges are refused.  C{allowed} ranges lift the
default refusal; C{denied} ranges win over everything.

The server's own addresses are refused on every port outside the relay
port range: its listeners, its metrics, anything else on the host.  Its
relay ports stay reachable, because two clients of one TURN server (two
browsers in one call, both relay-only) reach each other exactly there.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: NAT64 prefixes unwrapped by default: the well-known prefix (RFC 6052)
#: and the local-use prefix (RFC 8215).  Operators add their own network's.
DEFAULT_NAT64: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
_COMPATIBLE = ipaddress.ip_network("::/96")
#: IPv4-translated addresses of SIIT (RFC 2765, C{::ffff:0:a.b.c.d}).
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
#: RFC 6052 prefix lengths, the only ones an IPv4 address embeds after.
_NAT64_LENGTHS = frozenset([32, 40, 48, 56, 64, 96])

#: Refused unless explicitly allowed.  Loopback is listed apart so that
#: C{allow_loopback} can lift just it.
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
DEFAULT_DENIED: list[IPNetwork] = [
    ipaddress.ip_network(n)
    for n in [
        "0.0.0.0/8",  # "this network"; Linux delivers 0.x to the host itself
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "169.254.0.0/16",  # link-local, with 169.254.169.254 cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, with 255.255.255.255 broadcast
        "::/128",
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local
        "ff00::/8",  # multicast
    ]
]


def nat64_embedded(
    address: ipaddress.IPv6Address, prefix: ipaddress.IPv6Network
) -> ipaddress.IPv4Address:
    """
    The IPv4 address embedded in C{address} after NAT64 C{prefix}, as
    RFC 6052 section 2.2 lays it out: right after the prefix, skipping
    bits 64-71 (the "u" octet).
    """
    packed = address.packed
    start = prefix.prefixlen // 8
    octets = [i for i in range(start, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(packed[i] for i in octets))


def canonical_peer(host: str, nat64: Iterable[ipaddress.IPv6Network] = DEFAULT_NAT64) -> IPAddress:
    """
    Parse C{host} and unwrap IPv4-mapped (C{::ffff:a.b.c.d}), SIIT
    (C{::ffff:0:a.b.c.d}), IPv4-compatible (C{::a.b.c.d}), 6to4
    (C{2002:AABB:CCDD::/48}), NAT64 (C{64:ff9b::/96}, C{64:ff9b:1::/48}
    and any prefix in C{nat64}) and Teredo (C{2001::/32}, the client
    address) forms.

    @raise ValueError: if C{host} is not an IP address literal.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _SIIT or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    for prefix in nat64:
        if address in prefix:
            return nat64_embedded(address, prefix)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return address


def parse_range(text: str) -> list[IPNetwork]:
    """
    A CIDR (C{10.0.0.0/8}), a single address, or an inclusive range
    C{A-B}, as networks.

    @raise ValueError: naming what is wrong.
    """
    text = text.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        first = ipaddress.ip_address(first_text.strip())
        last = ipaddress.ip_address(last_text.strip())
        if first.version != last.version:
            raise ValueError(f"{text}: both ends must be of one family")
        if int(first) > int(last):
            raise ValueError(f"{text}: the range ends before it starts")
        return list(ipaddress.summarize_address_range(first, last))
    return [ipaddress.ip_network(text, strict=False)]


class PeerPolicy:
    """
    The peer address check, in one place, with its decisions cached.

    @param allowed: ranges reachable despite the default refusal.
    @param denied: ranges never reachable, whatever else is allowed.
    @param own_addresses: the server's own addresses (listening, relay,
        metrics): as peers, reachable only on C{relay_ports}.
    @param relay_ports: the relay port range.
    """

    #: Decisions remembered; the cache is emptied when it fills, so its
    #: memory is bounded whatever addresses peers use.
    CACHE_SIZE = 65536

    def __init__(
        self,
        allow_loopback: bool = False,
        allowed: Iterable[IPNetwork] = (),
        denied: Iterable[IPNetwork] = (),
        own_addresses: Iterable[str] = (),
        relay_ports: range = range(49152, 65536),
        nat64_prefixes: Iterable[ipaddress.IPv6Network] = (),
    ) -> None:
        self.allow_loopback = allow_loopback
        self.allowed = list(allowed)
        if allow_loopback:
            self.allowed += LOOPBACK
        self.denied = list(denied)
        self.relay_ports = relay_ports
        self.nat64 = tuple(DEFAULT_NAT64) + tuple(nat64_prefixes)
        for prefix in self.nat64:
            if prefix.prefixlen not in _NAT64_LENGTHS:
                raise ValueError(
                    f"NAT64 prefix {prefix}: the length must be 32, 40, 48, 56, 64 or 96"
                )
        self.own: set[IPAddress] = set()
        #: Own addresses found on the host's interfaces (a wildcard
        #: listener listens on all of them), replaced at each refresh.
        self.host_addresses: set[IPAddress] = set()
        self._cache: dict[str, tuple[bool, bool]] = {}
        for host in own_addresses:
            self.add_own_address(host)

    def for_server(self, own_addresses: Iterable[str], relay_ports: range) -> "PeerPolicy":
        """
        A copy of this policy for one server, with its own addresses and
        relay ports added; this policy is left as it is, so two servers
        built from one policy do not change each other's.
        """
        policy = PeerPolicy(
            allowed=[n for n in self.allowed if not (self.allow_loopback and n in LOOPBACK)],
            denied=self.denied,
            relay_ports=relay_ports,
            nat64_prefixes=self.nat64[len(DEFAULT_NAT64) :],
            allow_loopback=self.allow_loopback,
        )
        policy.own = set(self.own)
        policy.host_addresses = set(self.host_addresses)
        for host in own_addresses:
            policy.add_own_address(host)
        return policy

    def add_own_address(self, host: str) -> None:
        """
        Refuse C{host} as a peer: one of the server's own addresses.
        Wildcards are not addresses a peer can have and are skipped.
        """
        address = canonical_peer(host, self.nat64)
        if not address.is_unspecified:
            self.own.add(address)
        self._cache.clear()

    def set_host_addresses(self, hosts: Iterable[str]) -> None:
        """
        The addresses on the host's interfaces now: with a wildcard
        listener each of them reaches the server, so each is its own.
        """
        addresses = {canonical_peer(h, self.nat64) for h in hosts}
        addresses = {a for a in addresses if not a.is_unspecified}
        if addresses != self.host_addresses:
            self.host_addresses = addresses
            self._cache.clear()

    def _lookup(self, host: str) -> tuple[bool, bool]:
        decision = self._cache.get(host)
        if decision is None:
            decision = self._decide(host)
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[host] = decision
        return decision

    def allows(self, host: str) -> bool:
        """
        Whether a relay may exchange traffic with IP C{host} at all (the
        question CreatePermission asks).
        """
        return self._lookup(host)[0]

    def allows_peer(self, host: str, port: int) -> bool:
        """
        Whether a relay may reach C{(host, port)}: L{allows}, and for the
        server's own addresses only their relay ports.
        """
        allowed, own = self._lookup(host)
        return allowed and (not own or port in self.relay_ports)

    def explain(self, host: str, port: int) -> str:
        """
        Why C{(host, port)} is refused, and what would allow it, for the
        log (the cold path: only called once a peer is refused).
        """
        try:
            address = canonical_peer(host, self.nat64)
        except ValueError:
            return "not an IP address"
        if any(address in network for network in self.denied):
            return "in a --denied-peer-ip range"
        if address.is_unspecified:
            return "an unspecified address (0.0.0.0 or ::), never a peer"
        own = address in self.own or address in self.host_addresses
        allowed = any(address in network for network in self.allowed)
        if own and (allowed or self.allow_loopback) and port not in self.relay_ports:
            return "this server's own address, reachable as a peer only on relay ports"
        if any(address in network for network in LOOPBACK):
            return "loopback; --allow-loopback-peers allows it (testing only)"
        if own:
            return "this server's own address, reachable as a peer only on relay ports"
        return (
            f"in the default-refused range of {address} (private, link-local, reserved...); "
            f"--allowed-peer-ip {address} allows it"
        )

    def _decide(self, host: str) -> tuple[bool, bool]:
        """
        (allowed, one of the server's own addresses) for C{host}.
        """
        try:
            address = canonical_peer(host, self.nat64)
        except ValueError:
            return False, False
        # With loopback peers allowed (same-host testing), the host's own
        # loopback services are fair game too.
        own = (address in self.own or address in self.host_addresses) and not (
            self.allow_loopback and address.is_loopback
        )
        if any(address in network for network in self.denied):
            return False, own
        if address.is_unspecified:
            return False, own
        if any(address in network for network in self.allowed):
            return True, own
        if any(address in network for network in LOOPBACK):
            return False, own
        return not any(address in network for network in DEFAULT_DENIED), own
