"""
Tests for L{txturn.core.peer_policy}: every default-refused range, in every
IPv4-in-IPv6 spelling, on every path a peer address takes.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txturn.core.counters import Counter
from txturn.core.peer_policy import DEFAULT_DENIED, PeerPolicy, canonical_peer, parse_range
from txturn.testing import (
    FakeRelayAllocator,
    FakeTcpRelayAllocator,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
)
from txturn.wire.stun import Attr, Class, Method

#: One address inside every range refused by default, with its name.
REFUSED_V4 = {
    "this network": "0.1.2.3",
    "unspecified": "0.0.0.0",
    "loopback": "127.0.0.1",
    "loopback range": "127.255.255.254",
    "private 10/8": "10.1.2.3",
    "CGNAT": "100.64.0.1",
    "link-local": "169.254.1.1",
    "cloud metadata": "169.254.169.254",
    "private 172.16/12": "172.31.255.1",
    "IETF assignments": "192.0.0.9",
    "TEST-NET-1": "192.0.2.1",
    "6to4 anycast": "192.88.99.1",
    "private 192.168/16": "192.168.1.1",
    "benchmarking": "198.19.0.1",
    "TEST-NET-2": "198.51.100.1",
    "TEST-NET-3": "203.0.113.1",
    "multicast": "224.0.0.1",
    "reserved": "240.0.0.1",
    "broadcast": "255.255.255.255",
}
REFUSED_V6 = {
    "v6 unspecified": "::",
    "v6 loopback": "::1",
    "v6 discard": "100::1",
    "v6 documentation": "2001:db8::1",
    "v6 documentation 3fff": "3fff::1",
    "v6 unique-local": "fd00::1",
    "v6 link-local": "fe80::1",
    "v6 site-local": "fec0::1",
    "v6 multicast": "ff02::1",
}
PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "93.184.216.34"]
PUBLIC_V6 = ["2606:4700:4700::1111", "2a00:1450:4001::200e"]


def embedded(v4: str) -> dict[str, str]:
    """
    Every IPv6 spelling that carries the IPv4 address C{v4}.
    """
    value = int(ipaddress.IPv4Address(v4))
    teredo_server = int(ipaddress.IPv4Address("65.54.227.120"))
    return {
        "mapped": f"::ffff:{v4}",
        "compatible": str(ipaddress.IPv6Address(value)) if value > 1 else f"::{v4}",
        "nat64": str(ipaddress.IPv6Address((0x64FF9B << 96) | value)),
        # RFC 8215 local-use prefix, /48: the address straddles the u octet.
        "nat64 local-use": str(
            ipaddress.IPv6Address(
                (0x0064FF9B0001 << 80) | ((value >> 16) << 64) | ((value & 0xFFFF) << 40)
            )
        ),
        "siit": f"::ffff:0:{v4}",
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1)),
        "teredo": str(
            ipaddress.IPv6Address(
                (0x20010000 << 96) | (teredo_server << 64) | (0xFFFF << 32) | (value ^ 0xFFFFFFFF)
            )
        ),
    }


def all_refused() -> dict[str, str]:
    """
    Every refused sample, plain and embedded, by a descriptive name.
    """
    table = {f"{name} {addr}": addr for name, addr in {**REFUSED_V4, **REFUSED_V6}.items()}
    for name, addr in REFUSED_V4.items():
        for form, spelled in embedded(addr).items():
            if addr == "0.0.0.0" and form == "compatible":
                continue  # that is "::", listed already
            table[f"{name} as {form} {spelled}"] = spelled
    return table


class CanonicalTests(SynchronousTestCase):
    """
    Tests for L{canonical_peer}.
    """

    def test_embedded_forms(self) -> None:
        """
        Mapped, compatible, NAT64, 6to4 and Teredo forms unwrap to IPv4.
        """
        for v4 in ["192.0.2.33", "8.8.8.8", "127.0.0.1"]:
            for form, spelled in embedded(v4).items():
                self.assertEqual(canonical_peer(spelled), ipaddress.IPv4Address(v4), form)

    def test_nat64_prefix_layouts(self) -> None:
        """
        An operator's NAT64 prefix of any RFC 6052 length unwraps, skipping
        the u octet.
        """
        examples = {
            "2001:db8::/32": "2001:db8:c000:221::",
            "2001:db8:100::/40": "2001:db8:1c0:2:21::",
            "2001:db8:122::/48": "2001:db8:122:c000:2:2100::",
            "2001:db8:122:300::/56": "2001:db8:122:3c0:0:221::",
            "2001:db8:122:344::/64": "2001:db8:122:344:c0:2:2100:0",
            "2001:db8:122:344::/96": "2001:db8:122:344::192.0.2.33",
        }  # RFC 6052 section 2.4's table
        for prefix, spelled in examples.items():
            network = ipaddress.IPv6Network(prefix)
            self.assertEqual(
                canonical_peer(spelled, [network]), ipaddress.IPv4Address("192.0.2.33"), prefix
            )
            policy = PeerPolicy(nat64_prefixes=[network])
            self.assertFalse(policy.allows(spelled), prefix)
        with self.assertRaises(ValueError):
            PeerPolicy(nat64_prefixes=[ipaddress.IPv6Network("2001:db8::/80")])

    def test_plain(self) -> None:
        """
        Plain IPv4 and IPv6 addresses stay as they are.
        """
        self.assertEqual(str(canonical_peer("2001:db8::1")), "2001:db8::1")
        self.assertEqual(str(canonical_peer("::1")), "::1")


class PolicyTests(SynchronousTestCase):
    """
    Tests for L{PeerPolicy} on its own.
    """

    def test_host_addresses(self) -> None:
        """
        The host's interface addresses are its own, in every spelling,
        until a refresh no longer lists them.
        """
        policy = PeerPolicy(allowed=parse_range("192.0.2.0/24"))
        policy.set_host_addresses(["192.0.2.80", "0.0.0.0"])
        for spelled in ["192.0.2.80", "::ffff:192.0.2.80", "64:ff9b::192.0.2.80"]:
            self.assertFalse(policy.allows_peer(spelled, 3478), spelled)
            self.assertTrue(policy.allows_peer(spelled, 50000), spelled)
        policy.set_host_addresses([])
        self.assertTrue(policy.allows_peer("192.0.2.80", 3478))

    def test_every_range_covered(self) -> None:
        """
        Every default-refused range has a sample in the table.
        """
        samples = [ipaddress.ip_address(a) for a in {**REFUSED_V4, **REFUSED_V6}.values()]
        for network in DEFAULT_DENIED:
            self.assertTrue(any(a in network for a in samples), str(network))

    def test_refused(self) -> None:
        """
        Every refused sample, in every spelling, is refused by default.
        """
        policy = PeerPolicy()
        for name, host in all_refused().items():
            self.assertFalse(policy.allows(host), name)
        self.assertFalse(policy.allows("not an address"))
        self.assertFalse(policy.allows("::1%lo"))

    def test_public(self) -> None:
        """
        Public addresses, and their embedded spellings, are allowed.
        """
        policy = PeerPolicy()
        for host in PUBLIC_V4 + PUBLIC_V6:
            self.assertTrue(policy.allows(host), host)
        for form, spelled in embedded("8.8.8.8").items():
            self.assertTrue(policy.allows(spelled), form)

    def test_allow_loopback(self) -> None:
        """
        allow_loopback lets loopback through, in any spelling, but never
        the unspecified address.
        """
        policy = PeerPolicy(allow_loopback=True)
        for host in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"]:
            self.assertTrue(policy.allows(host), host)
        for host in ["0.0.0.0", "::", "::ffff:0.0.0.0"]:
            self.assertFalse(policy.allows(host), host)

    def test_allowed_and_denied(self) -> None:
        """
        An allowed range wins over the default refusal; an explicit deny
        wins over everything, in any spelling.
        """
        policy = PeerPolicy(
            allowed=parse_range("10.0.0.0/8"),
            denied=parse_range("10.9.0.0-10.9.255.255") + parse_range("8.8.8.8"),
        )
        self.assertTrue(policy.allows("10.1.2.3"))
        self.assertTrue(policy.allows("::ffff:10.1.2.3"))
        self.assertFalse(policy.allows("10.9.1.1"))
        self.assertFalse(policy.allows("64:ff9b::a09:101"))
        self.assertFalse(policy.allows("8.8.8.8"))
        self.assertTrue(policy.allows("1.1.1.1"))
        denying_loopback = PeerPolicy(allow_loopback=True, denied=parse_range("127.0.0.0/8"))
        self.assertFalse(denying_loopback.allows("127.0.0.1"))

    def test_parse_range(self) -> None:
        """
        Ranges are CIDR, single addresses or A-B; bad ones are named.
        """
        self.assertEqual(parse_range("10.0.0.0-10.0.0.255"), [ipaddress.ip_network("10.0.0.0/24")])
        self.assertEqual(parse_range("2001:db8::1"), [ipaddress.ip_network("2001:db8::1/128")])
        for bad, text in [
            ("10.0.0.9-10.0.0.1", "10.0.0.9-10.0.0.1: the range ends before it starts"),
            ("10.0.0.1-::1", "10.0.0.1-::1: both ends must be of one family"),
        ]:
            error = self.assertRaises(ValueError, parse_range, bad)
            self.assertEqual(str(error), text)
        self.assertRaises(ValueError, parse_range, "bogus")

    def test_own_addresses(self) -> None:
        """
        The server's own addresses are reachable only on relay ports, in
        any spelling.
        """
        policy = PeerPolicy(own_addresses=["8.8.4.4"], relay_ports=range(50000, 60000))
        self.assertTrue(policy.allows("8.8.4.4"))
        self.assertTrue(policy.allows_peer("8.8.4.4", 50001))
        self.assertFalse(policy.allows_peer("8.8.4.4", 3478))
        self.assertFalse(policy.allows_peer("::ffff:8.8.4.4", 9090))
        self.assertTrue(policy.allows_peer("8.8.8.8", 3478))

    def test_cache_bounded(self) -> None:
        """
        The decision cache never grows past its size.
        """
        policy = PeerPolicy()
        policy.CACHE_SIZE = 100
        for i in range(1000):
            policy.allows(f"8.8.{i // 256}.{i % 256}")
        self.assertLessEqual(len(policy._cache), 100)


class EveryPathTests(SynchronousTestCase):
    """
    The same refusals on every path: CreatePermission, ChannelBind, Send,
    Connect, incoming TCP connections and incoming UDP datagrams.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.relays = FakeRelayAllocator(hosts={1: "8.8.4.4", 2: "2606:4700::4"})
        self.tcp_relays = FakeTcpRelayAllocator(hosts={1: "8.8.4.4", 2: "2606:4700::4"})
        self.server = make_server(
            realm="p",
            clock=self.clock,
            relays=self.relays,
            tcp_relays=self.tcp_relays,
            policy=PeerPolicy(own_addresses=["8.8.4.4"], relay_ports=range(50000, 60000)),
            max_lifetime=100000,
        )
        self.udp = RecordingClientChannel("udp")
        self.tcp = RecordingClientChannel("tcp")
        self.client = StunClient("u", "p")
        self.request(
            self.udp,
            Method.ALLOCATE,
            [(Attr.REQUESTED_TRANSPORT, 17), (Attr.ADDITIONAL_ADDRESS_FAMILY, 2)],
        )
        self.request(self.tcp, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)])

    def request(self, channel: RecordingClientChannel, method: int, attrs: list[Any]) -> Any:
        return authenticated_request(
            self.server, channel, self.client, method, attrs, ("9.9.9.9", 1000)
        )

    def code(self, response: Any) -> int:
        return 0 if response.cls == Class.SUCCESS else response.get(Attr.ERROR_CODE)[0]

    def test_refused_everywhere(self) -> None:
        """
        Every refused address, in every spelling, gets 403 from
        CreatePermission, ChannelBind and Connect, is never sent to by a
        Send indication, and is closed (unannounced) when it connects to a
        TCP relay; UDP from it is dropped.
        """
        udp_relay = self.relays.opened[0]
        tcp_relay = self.tcp_relays.opened[0]
        channel = 0x4000
        for name, host in all_refused().items():
            peer = (host, 5000)
            for response in [
                self.request(self.udp, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)]),
                self.request(
                    self.udp,
                    Method.CHANNEL_BIND,
                    [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)],
                ),
            ]:
                self.assertEqual(self.code(response), 403, name)
            if ":" not in host:
                response = self.request(self.tcp, Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer)])
                self.assertEqual(self.code(response), 403, name)
                connection = tcp_relay.peer_connects(peer)
                self.assertTrue(connection.closed, name)
            self.server.datagram_received(
                self.udp,
                self.client.request(
                    Method.SEND,
                    [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, b"x")],
                    authenticate=False,
                    cls=Class.INDICATION,
                ),
                ("9.9.9.9", 1000),
            )
            udp_relay.receiver(b"from a refused peer", peer)
        self.assertEqual(udp_relay.sent, [])
        self.assertEqual(tcp_relay.connects, [])
        self.assertEqual(self.udp.sent + self.tcp.sent, [])
        self.assertGreater(self.server.counters[Counter.REFUSED_PEER], len(all_refused()))

    def test_public_allowed(self) -> None:
        """
        A public peer passes on every path.
        """
        peer = ("8.8.8.8", 5000)
        self.assertEqual(
            self.code(
                self.request(self.udp, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
            ),
            0,
        )
        self.server.datagram_received(
            self.tcp,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer)]),
            ("9.9.9.9", 1000),
        )
        self.assertEqual(self.tcp.sent, [])  # no refusal: the connect is under way
        self.assertEqual(self.tcp_relays.opened[0].connects[0][0], peer)

    def test_own_listeners(self) -> None:
        """
        The server's own address is a permitted peer IP (two clients of one
        server reach each other's relays there), but ChannelBind, Send and
        Connect to its non-relay ports are refused.
        """
        own = ("8.8.4.4", 3478)
        self.assertEqual(
            self.code(
                self.request(self.udp, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, own)])
            ),
            0,
        )
        self.assertEqual(
            self.code(
                self.request(
                    self.udp,
                    Method.CHANNEL_BIND,
                    [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, own)],
                )
            ),
            403,
        )
        relay_port = ("8.8.4.4", 50001)
        self.assertEqual(
            self.code(
                self.request(
                    self.udp,
                    Method.CHANNEL_BIND,
                    [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, relay_port)],
                )
            ),
            0,
        )
        self.assertEqual(
            self.code(self.request(self.tcp, Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, own)])),
            403,
        )


class ExplainTests(SynchronousTestCase):
    """
    Why a peer is refused, and what would allow it, for the log.
    """

    def test_reasons(self) -> None:
        policy = PeerPolicy(denied=parse_range("203.0.113.0/24")).for_server(
            ["192.0.2.10"], range(50000, 60000)
        )
        self.assertEqual(policy.explain("203.0.113.5", 1), "in a --denied-peer-ip range")
        self.assertIn("unspecified", policy.explain("0.0.0.0", 1))
        self.assertEqual(
            policy.explain("::ffff:127.0.0.1", 1),
            "loopback; --allow-loopback-peers allows it (testing only)",
        )
        self.assertEqual(
            policy.explain("10.1.2.3", 1),
            "in the default-refused range of 10.1.2.3 (private, link-local, reserved...); "
            "--allowed-peer-ip 10.1.2.3 allows it",
        )
        self.assertIn("own address", policy.explain("192.0.2.10", 3478))


class RefusalLogTests(SynchronousTestCase):
    def test_one_line_a_minute(self) -> None:
        """
        300 CreatePermissions to 300 different refused addresses log one
        line, however the reasons differ; a minute later, one more.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        clock = Clock()
        server = make_server(clock=clock, policy=PeerPolicy())
        channel, client = RecordingClientChannel(), StunClient("u", "p")
        address = ("198.51.100.1", 1)

        def ask(method: int, attrs: list[Any]) -> Any:
            return authenticated_request(server, channel, client, method, attrs, address)

        ask(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        for i in range(300):
            peer = (f"10.0.{i // 250}.{i % 250 + 1}", 1)
            ask(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
        clock.advance(61)
        ask(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, ("10.9.9.9", 1))])
        lines = [e for e in events if str(e.get("log_format", "")).startswith("Refused peer")]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["suppressed"], 299)
