"""
Tests for L{txturn.app.service.TurnService} on real sockets on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from typing import Any, Callable, cast

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ClientCreator, DatagramProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from txturn.app import host_watch
from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.forwarding import NO_FORWARDING
from txturn.core.interfaces import RelayUnavailable
from txturn.core.peer_policy import PeerPolicy, parse_range
from txturn.core.server import ServerConfig
from txturn.fastpath import forwarding
from txturn.testing import StunClient, needs_ipv6, self_signed_certificate
from txturn.transports.sockets import RELAY_RECEIVE_BUFFER
from txturn.transports.tls import TlsCredentials
from txturn.transports.udp_relay import UdpRelayAllocator
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import Attr, Class, Message, Method, decode, encode, encode_channel_data

REALM = "test"

reactor: Any = _reactor


class Collector(DatagramProtocol):
    """
    Collects datagrams, firing a Deferred per expected one.
    """

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[tuple[bytes, Any]]] = []
        self.received: list[tuple[bytes, Any]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.waiting:
            self.waiting.pop(0).callback((data, addr))
        else:
            self.received.append((data, addr))

    def next(self, timeout: float = 5.0) -> defer.Deferred[tuple[bytes, Any]]:
        if self.received:
            return defer.succeed(self.received.pop(0))
        d: defer.Deferred[tuple[bytes, Any]] = defer.Deferred()
        d.addTimeout(timeout, reactor)
        self.waiting.append(d)
        return d


def free_udp_port(host: str = "127.0.0.1") -> int:
    """
    A port free for UDP and for TCP on C{host}: servers given it listen
    on both (a port free for UDP alone once failed a coturn start in CI
    on its TCP listener).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
        return port
    raise OSError("no port free for both UDP and TCP")


def make_service(port: int = 0, **kwargs: Any) -> TurnService:
    return TurnService(
        reactor,
        StaticCredentials(REALM, {"alice": "secret"}),
        [("127.0.0.1", port)],
        ["127.0.0.1"],
        policy=PeerPolicy(allow_loopback=True),
        config=ServerConfig(realm=REALM),
        **kwargs,
    )


@defer.inlineCallbacks
def in_order(
    send: Callable[[bytes], object],
    frames: list[bytes],
    receive: Callable[[], defer.Deferred[tuple[bytes, Any]]],
) -> Any:
    """
    Send C{frames}, and return as many datagrams as C{receive} gets.
    """
    for frame in frames:
        send(frame)
    got = []
    for _ in frames:
        data, _ = yield receive()
        got.append(data)
    return got


class StreamCollector(Protocol):
    """
    A TCP client's side: frames what arrives, as L{Collector} does
    datagrams.
    """

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.datagrams = Collector()

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            self.datagrams.datagramReceived(frame, None)


@defer.inlineCallbacks
def dtls_client(test: TestCase, host: str, port: int) -> Any:
    """
    (send a message, the next message received) for a DTLS client of
    the server on C{(host, port)}: pyOpenSSL over a memory BIO, its
    records carried by a real UDP socket, the handshake done first.
    """
    collector = Collector()
    listening = reactor.listenUDP(0, collector, interface=host)
    test.addCleanup(listening.stopListening)
    client = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
    client.set_connect_state()

    def flush() -> None:
        while True:
            try:
                data = client.bio_read(65536)
            except SSL.WantReadError:
                return
            listening.write(data, (host, port))

    for _ in range(20):
        try:
            client.do_handshake()
            break
        except SSL.WantReadError:
            flush()
            data, _ = yield collector.next()
            client.bio_write(data)
    flush()

    def send(message: bytes) -> None:
        client.send(message)
        flush()

    @defer.inlineCallbacks
    def receive() -> Any:
        while True:
            data, source = yield collector.next()
            client.bio_write(data)
            try:
                return (client.recv(65536), source)
            except SSL.WantReadError:
                continue

    return send, receive


@defer.inlineCallbacks
def client_side(test: TestCase, service: TurnService, host: str, transport: str) -> Any:
    """
    (send a frame, the next frame received) for a client of C{service} on
    C{host} over C{transport} (C{"udp"} or C{"tcp"}).
    """
    port = service.port_of(transport, host)
    if transport == "dtls":
        return (yield dtls_client(test, host, port))
    if transport == "udp":
        collector = Collector()
        listening = reactor.listenUDP(0, collector, interface=host)
        test.addCleanup(listening.stopListening)
        return (lambda frame: listening.write(frame, (host, port))), collector.next
    stream = yield ClientCreator(reactor, StreamCollector).connectTCP(host, port)
    test.addCleanup(stream.transport.loseConnection)
    return stream.transport.write, stream.datagrams.next


@defer.inlineCallbacks
def carry(
    test: TestCase, service: TurnService, client_host: str, peer_host: str, transport: str = "udp"
) -> Any:
    """
    50 Send indications, Data indications and ChannelData each way between
    a client on C{client_host} over C{transport} and a peer on
    C{peer_host}, through C{service}: all arrive in order (ChannelData
    padded on a stream), the Python path relays only the first of each
    kind when the fast path is built, and the fast path's counts reach
    the allocation.
    """
    fast = service.forwarding is not NO_FORWARDING
    pad = transport == "tcp"
    up, receive = yield client_side(test, service, client_host, transport)
    peer_proto = Collector()
    peer_port = reactor.listenUDP(0, peer_proto, interface=peer_host)
    test.addCleanup(peer_port.stopListening)
    client = StunClient("alice", "secret")

    @defer.inlineCallbacks
    def request(method: int, attrs: list[tuple[int, Any]]) -> Any:
        for _ in range(2):
            up(client.request(method, attrs))
            data, _ = yield receive()
            response = client.learn(data)
            if not client.challenged(response):
                break
        return response

    allocate: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17)]
    if ":" in peer_host:
        allocate.append((Attr.REQUESTED_ADDRESS_FAMILY, 2))
    response = yield request(Method.ALLOCATE, allocate)
    relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
    test.assertEqual(":" in relayed[0], ":" in peer_host, relayed)
    peer = (peer_host, peer_port.getHost().port)
    yield request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
    [allocation] = service.server.allocations.values()
    count = 50

    def down(data: bytes) -> None:
        peer_port.write(data, relayed)

    sends = []
    for i in range(count):
        send = Message(Method.SEND, Class.INDICATION, b"s" * 12)
        sends.append(encode(send.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, b"send %d" % i)))
    got = yield in_order(up, sends, peer_proto.next)
    test.assertEqual(got, [b"send %d" % i for i in range(count)])
    got = yield in_order(down, [b"data %d" % i for i in range(count)], receive)
    indications = [decode(data) for data in got]
    test.assertEqual(
        [(m.get(Attr.XOR_PEER_ADDRESS), m.get(Attr.DATA)) for m in indications],
        [(peer, b"data %d" % i) for i in range(count)],
    )
    yield request(
        Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peer)]
    )
    frames = [encode_channel_data(0x4000, b"up %d" % i, pad) for i in range(count)]
    got = yield in_order(up, frames, peer_proto.next)
    test.assertEqual(got, [b"up %d" % i for i in range(count)])
    got = yield in_order(down, [b"down %d" % i for i in range(count)], receive)
    test.assertEqual(got, [encode_channel_data(0x4000, b"down %d" % i, pad) for i in range(count)])
    # The Python path's own counts: the first of each kind when fast.
    python = (allocation.to_peers_packets, allocation.to_client_packets)
    test.assertEqual(python, (1, 2) if fast else (2 * count, 2 * count))
    allocation.take_counters()
    test.assertEqual(
        (allocation.to_peers_packets, allocation.to_client_packets), (2 * count, 2 * count)
    )
    yield request(Method.REFRESH, [(Attr.LIFETIME, 0)])


class FamiliesTests(TestCase):
    """
    The fast path carries IPv6 clients and relays, and both cross-family
    cases, as it carries IPv4.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        self.service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("127.0.0.1", 0), ("::1", 0)],
            ["127.0.0.1", "::1"],
            policy=PeerPolicy(allow_loopback=True),
            config=ServerConfig(realm=REALM),
            tls=TlsCredentials(*self_signed_certificate(directory)),
            tls_port=0,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    @needs_ipv6
    def test_ipv6(self) -> Any:
        """
        An IPv6 client with an IPv6 relay to an IPv6 peer.
        """
        return carry(self, self.service, "::1", "::1")

    @needs_ipv6
    def test_ipv4_client_ipv6_relay(self) -> Any:
        """
        An IPv4 client with an IPv6 relay (REQUESTED-ADDRESS-FAMILY).
        """
        return carry(self, self.service, "127.0.0.1", "::1")

    @needs_ipv6
    def test_ipv6_client_ipv4_relay(self) -> Any:
        """
        An IPv6 client with an IPv4 relay (the default family).
        """
        return carry(self, self.service, "::1", "127.0.0.1")

    def test_tcp_client(self) -> Any:
        """
        A TCP client: its connection frames, the fast path forwards whole
        frames from its buffer and frames peers' datagrams (padded) for its
        transport to write.
        """
        return carry(self, self.service, "127.0.0.1", "127.0.0.1", "tcp")

    @needs_ipv6
    def test_tcp_client_ipv6(self) -> Any:
        """
        The same over IPv6.
        """
        return carry(self, self.service, "::1", "::1", "tcp")

    def test_dtls_client(self) -> Any:
        """
        A DTLS client: its session decrypts and the fast path forwards each
        message; what peers send comes back one message per record, as
        over UDP (unpadded).
        """
        return carry(self, self.service, "127.0.0.1", "127.0.0.1", "dtls")


class ServiceTests(TestCase):
    """
    A TurnService relays between a client and a peer on loopback.
    """

    def setUp(self) -> None:
        self.service = make_service()
        self.service.startService()
        self.addCleanup(self.stop)
        self.server_address = ("127.0.0.1", self.service.port_of("udp"))
        self.client_proto = Collector()
        self.client_port = reactor.listenUDP(0, self.client_proto, interface="127.0.0.1")
        self.addCleanup(self.client_port.stopListening)
        self.peer_proto = Collector()
        self.peer_port = reactor.listenUDP(0, self.peer_proto, interface="127.0.0.1")
        self.addCleanup(self.peer_port.stopListening)
        self.client = StunClient("alice", "secret")

    def stop(self) -> defer.Deferred[Any] | None:
        if self.service.running:
            return self.service.stopService()
        return None

    @defer.inlineCallbacks
    def request(self, method: int, attrs: list[tuple[int, Any]] | None = None) -> Any:
        for _ in range(2):
            self.client_port.write(self.client.request(method, attrs), self.server_address)
            data, _ = yield self.client_proto.next()
            response = self.client.learn(data)
            if not self.client.challenged(response):
                break
        return response

    @defer.inlineCallbacks
    def test_relay_round_trip(self) -> Any:
        """
        Allocate, CreatePermission and a Send indication reach a real peer
        socket, whose answer comes back as a Data indication; a bound
        channel then carries ChannelData both ways.
        """
        response = yield self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.assertEqual(response.cls, Class.SUCCESS)
        relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
        peer = ("127.0.0.1", self.peer_port.getHost().port)
        response = yield self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
        self.assertEqual(response.cls, Class.SUCCESS)
        send = Message(Method.SEND, Class.INDICATION, b"s" * 12)
        send.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, b"ping")
        self.client_port.write(encode(send), self.server_address)
        data, source = yield self.peer_proto.next()
        self.assertEqual((data, source), (b"ping", relayed))
        self.peer_port.write(b"pong", relayed)
        data, _ = yield self.client_proto.next()
        indication = decode(data)
        self.assertEqual(indication.get(Attr.DATA), b"pong")
        self.assertEqual(indication.get(Attr.XOR_PEER_ADDRESS), peer)

        response = yield self.request(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peer)]
        )
        self.assertEqual(response.cls, Class.SUCCESS)
        self.client_port.write(b"\x40\x00\x00\x02hi", self.server_address)
        data, _ = yield self.peer_proto.next()
        self.assertEqual(data, b"hi")
        self.peer_port.write(b"back", relayed)
        data, _ = yield self.client_proto.next()
        self.assertEqual(data, b"\x40\x00\x00\x04back")

    def test_fast_path_carries(self) -> Any:
        """
        With the fast path built, after the first datagram of each kind
        (which the Python path relays and teaches it) the compiled loop
        carries Send indications, Data indications and ChannelData both
        ways, in order; its counts reach the allocation.  Without it
        (C{TXTURN_FAST_PATH=off}) the Python path carries them all.
        """
        fast = self.service.forwarding is not NO_FORWARDING
        self.assertEqual(fast, forwarding.compiled_module() is not None)
        return carry(self, self.service, "127.0.0.1", "127.0.0.1")

    @defer.inlineCallbacks
    def test_drain(self) -> Any:
        """
        While draining, a new Allocate gets 508 and the existing
        allocation keeps relaying and refreshing; drain fires when it
        ends.
        """
        response = yield self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
        drained = self.service.drain(60)
        self.assertFalse(drained.called)
        other = StunClient("alice", "secret")
        other_port = reactor.listenUDP(0, (collector := Collector()), interface="127.0.0.1")
        self.addCleanup(other_port.stopListening)
        for _ in range(2):
            other_port.write(
                other.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                self.server_address,
            )
            data, _ = yield collector.next()
            refused = other.learn(data)
        self.assertEqual(refused.get(Attr.ERROR_CODE)[0], 508)
        peer = ("127.0.0.1", self.peer_port.getHost().port)
        yield self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
        send = Message(Method.SEND, Class.INDICATION, b"s" * 12)
        send.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, b"still here")
        self.client_port.write(encode(send), self.server_address)
        data, source = yield self.peer_proto.next()
        self.assertEqual((data, source), (b"still here", relayed))
        response = yield self.request(Method.REFRESH, [(Attr.LIFETIME, 600)])
        self.assertEqual(response.cls, Class.SUCCESS)
        self.assertFalse(drained.called)
        yield self.request(Method.REFRESH, [(Attr.LIFETIME, 0)])
        self.assertTrue(drained.called)

    @defer.inlineCallbacks
    def test_quiet_relays(self) -> Any:
        """
        An allocation made and deleted logs its two lifecycle lines and
        nothing else: no "UdpRelay starting on" or "(UDP Port N Closed)"
        from Twisted for the relay port.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        yield self.request(Method.REFRESH, [(Attr.LIFETIME, 0)])
        yield deferLater(reactor, 0.05, lambda: None)  # the relay port closes
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("Allocated 127.0.0.1:"), lines)
        self.assertIn("deleted (refresh)", lines[1])

    @defer.inlineCallbacks
    def test_stop_closes_everything(self) -> Any:
        """
        stopService's Deferred fires once the listener and every relay port
        are closed: both can be bound again afterwards, and no timer is
        left on the reactor.
        """
        response = yield self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
        before = len(reactor.getDelayedCalls())
        yield self.service.stopService()
        self.assertEqual(self.service.server.allocations, {})
        self.assertLess(len(reactor.getDelayedCalls()), before)
        for address in [self.server_address, relayed]:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(address)

    @defer.inlineCallbacks
    def test_icmp(self) -> Any:
        """
        A datagram relayed to a closed port earns an ICMP port unreachable,
        which reaches the client as a Data indication with ICMP (3, 3);
        the relay keeps working afterwards.
        """
        yield self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        closed = ("127.0.0.1", free_udp_port())
        peer = ("127.0.0.1", self.peer_port.getHost().port)
        yield self.request(
            Method.CREATE_PERMISSION,
            [(Attr.XOR_PEER_ADDRESS, closed), (Attr.XOR_PEER_ADDRESS, peer)],
        )
        for target, data in [(closed, b"nobody"), (peer, b"somebody")]:
            send = Message(Method.SEND, Class.INDICATION, b"s" * 12)
            send.add(Attr.XOR_PEER_ADDRESS, target).add(Attr.DATA, data)
            self.client_port.write(encode(send), self.server_address)
            if target == closed:
                raw, _ = yield self.client_proto.next()
                indication = decode(raw)
                self.assertEqual(indication.get(Attr.XOR_PEER_ADDRESS), closed)
                self.assertEqual(indication.get(Attr.ICMP), (3, 3, 0))
        data, _ = yield self.peer_proto.next()
        self.assertEqual(data, b"somebody")

    def test_bind_failure(self) -> None:
        """
        A listener that cannot bind stops startup with an error naming the
        address, and leaves nothing bound.
        """
        other = make_service(port=self.server_address[1])
        error = self.assertRaises(RuntimeError, other.privilegedStartService)
        self.assertIn(f"cannot listen on UDP 127.0.0.1 port {self.server_address[1]}", str(error))
        self.assertEqual(other.ports, [])
        self.assertFalse(other.running)


class DualStackTests(TestCase):
    """
    IPv4 and IPv6 listeners share a port, and IPv4 clients stay IPv4.
    """

    @needs_ipv6
    @defer.inlineCallbacks
    def test_wildcards(self) -> Any:
        """
        With listeners on 0.0.0.0 and :: on one port (UDP and TCP), a client
        on 127.0.0.1 is mapped as 127.0.0.1 (not ::ffff:127.0.0.1) and one
        on ::1 as ::1.
        """
        port = free_udp_port()
        service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("0.0.0.0", port), ("::", port)],
            ["127.0.0.1"],
            transports={"udp", "tcp"},
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(service.ports), 4)
        for host in ["127.0.0.1", "::1"]:
            proto = Collector()
            client_port = reactor.listenUDP(0, proto, interface=host)
            self.addCleanup(client_port.stopListening)
            client_port.write(
                StunClient("a", "b").request(Method.BINDING, authenticate=False), (host, port)
            )
            raw, _ = yield proto.next()
            mapped = decode(raw).get(Attr.XOR_MAPPED_ADDRESS)
            self.assertEqual(mapped, (host, client_port.getHost().port))

    def test_policy_not_changed(self) -> None:
        """
        Two services built from one policy each get a copy with their own
        addresses; the caller's policy is left as it was.
        """
        shared = PeerPolicy(allowed=parse_range("192.0.2.0/24"))
        services = [
            TurnService(
                reactor,
                StaticCredentials(REALM, {"alice": "secret"}),
                [(host, 3478)],
                [host],
                policy=shared,
                min_port=60000 + i,
                max_port=60000 + i,
                transports={"udp"},
            )
            for i, host in enumerate(["192.0.2.1", "192.0.2.2"])
        ]
        self.assertEqual(shared.own, set())
        self.assertEqual(shared.relay_ports, range(49152, 65536))
        self.assertFalse(services[0].policy.allows_peer("192.0.2.1", 3478))
        self.assertTrue(services[0].policy.allows_peer("192.0.2.2", 3478))
        self.assertFalse(services[1].policy.allows_peer("192.0.2.2", 3478))
        self.assertTrue(services[1].policy.allows_peer("192.0.2.2", 60001))

    def test_wildcard_owns_every_host_address(self) -> None:
        """
        A wildcard listener answers on every address of the host, so each
        is the server's own: refused as a peer except on relay ports, and
        read again every minute (the timer stops with the service).
        """
        listed = ["192.0.2.80", "2001:db8::80"]
        self.patch(host_watch, "host_addresses", lambda: list(listed))
        policy = PeerPolicy(allowed=parse_range("192.0.2.0/24") + parse_range("2001:db8::/32"))
        service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("0.0.0.0", 0)],
            ["127.0.0.1"],
            policy=policy,
            transports={"udp"},
        )
        service.startService()
        policy = service.policy
        for host in listed:
            self.assertFalse(policy.allows_peer(host, 3478), host)
            self.assertTrue(policy.allows_peer(host, 50000), host)
        listed[:] = ["192.0.2.81"]
        service.host_addresses.refresh()
        self.assertTrue(policy.allows_peer("192.0.2.80", 3478))
        self.assertFalse(policy.allows_peer("192.0.2.81", 3478))
        service.stopService()
        self.assertIsNone(service.host_addresses._timer)
        self.assertEqual([c for c in reactor.getDelayedCalls() if "refresh" in repr(c.func)], [])


class ExternalAddressTests(TestCase):
    """
    --external-ip: relays behind a 1:1 NAT advertise the public address.
    """

    @defer.inlineCallbacks
    def test_advertised(self) -> Any:
        """
        XOR-RELAYED-ADDRESS carries the public address with the relay's
        real port.
        """
        service = make_service(external_ips={"127.0.0.1": "203.0.113.77"})
        service.startService()
        self.addCleanup(service.stopService)
        proto = Collector()
        port = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = StunClient("alice", "secret")
        server = ("127.0.0.1", service.port_of("udp"))
        for _ in range(2):
            port.write(client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]), server)
            raw, _ = yield proto.next()
            response = client.learn(raw)
        host, relay_port = response.get(Attr.XOR_RELAYED_ADDRESS)
        self.assertEqual(host, "203.0.113.77")
        [allocation] = service.server.allocations.values()
        self.assertEqual(allocation.relays[1].address, ("127.0.0.1", relay_port))


class AnnounceTests(TestCase):
    """
    A generated user is logged once with an iceServers snippet.
    """

    def test_snippet(self) -> None:
        """
        The startup log carries the user, password and a JSON iceServers
        list naming the relay address and port.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        service = make_service(announce=("turn-user", "pw123"))
        service.startService()
        self.addCleanup(service.stopService)
        [event] = [e for e in events if "snippet" in e]
        snippet = json.loads(event["snippet"])
        udp, tcp = service.port_of("udp"), service.port_of("tcp")
        self.assertEqual(
            snippet,
            {
                "iceServers": [
                    {
                        "urls": [
                            f"turn:127.0.0.1:{udp}?transport=udp",
                            f"turn:127.0.0.1:{tcp}?transport=tcp",
                        ],
                        "username": "turn-user",
                        "credential": "pw123",
                    }
                ]
            },
        )
        # Each value alone on its line: a double click copies it exactly.
        line = formatEvent(event)
        self.assertIn("\n  username: turn-user\n  password: pw123\n", line)

    def snippet_urls(self, **kwargs: Any) -> list[str]:
        service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("0.0.0.0", 0)],
            ["127.0.0.1"],
            transports={"udp"},
            **kwargs,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service.ice_urls()

    def test_external_and_server_name(self) -> None:
        """
        Behind a 1:1 NAT the snippet names the public address; with a
        server name, the name (what a turns: client checks).
        """
        [url] = self.snippet_urls(external_ips={"127.0.0.1": "203.0.113.10"})
        self.assertRegex(url, r"^turn:203\.0\.113\.10:\d+\?transport=udp$")
        [url] = self.snippet_urls(config=ServerConfig(realm=REALM, server_name="turn.example.org"))
        self.assertRegex(url, r"^turn:turn\.example\.org:\d+\?transport=udp$")


class RelayAddressTests(TestCase):
    """
    A relay address the host does not have is said at once, at startup
    and (had it started) at Allocate time, instead of a 508 for every
    Allocate and nothing in the log.
    """

    def test_startup(self) -> None:
        service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("127.0.0.1", 0)],
            ["203.0.113.8"],
            transports={"udp"},
        )
        with self.assertRaises(RuntimeError) as caught:
            service.privilegedStartService()
        self.assertEqual(
            str(caught.exception),
            "relay address 203.0.113.8 (--relay-ip) is not an address of this host",
        )

    def test_allocate(self) -> None:
        relays = UdpRelayAllocator(reactor, ["203.0.113.8"])
        with self.assertRaises(RelayUnavailable) as caught:
            relays.open(1, even=False, reserve_next=False)
        self.assertEqual(
            str(caught.exception), "--relay-ip 203.0.113.8 is not an address of this host"
        )
        port = free_udp_port()
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", port))
        self.addCleanup(taken.close)
        full = UdpRelayAllocator(reactor, ["127.0.0.1"], min_port=port, max_port=port)
        with self.assertRaises(RelayUnavailable) as caught:
            full.open(1, even=False, reserve_next=False)
        self.assertIn(f"relay ports {port}-{port} of 127.0.0.1 exhausted", str(caught.exception))

    def test_relay_receive_buffer(self) -> None:
        """
        A relay socket holds a burst of 1 MiB (doubled by the kernel, as
        for every SO_RCVBUF), forced past net.core.rmem_max where the
        process may; at the default 208 KiB a DTLS client's burst of
        echoes overflowed it.
        """
        relays = UdpRelayAllocator(reactor, ["127.0.0.1"])
        relay, _ = relays.open(1, even=False, reserve_next=False)
        self.addCleanup(relay.close)
        transport: Any = relay.transport
        size = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as f:
            allowed = int(f.read())
        expected = 2 * (
            RELAY_RECEIVE_BUFFER if os.getuid() == 0 else min(allowed, RELAY_RECEIVE_BUFFER)
        )
        self.assertEqual(size, expected)


class MetricsAddressTests(TestCase):
    def test_refused_as_peer(self) -> None:
        """
        The metrics endpoint's address joins the server's own: a relay
        cannot reach it, even where --allowed-peer-ip lets peers in.
        """
        service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("127.0.0.1", 3478)],
            ["127.0.0.1"],
            policy=PeerPolicy(allowed=parse_range("192.0.2.0/24")),
            metrics_listen=("192.0.2.5", 9641),
        )
        self.assertFalse(service.policy.allows_peer("192.0.2.5", 9641))
        self.assertTrue(service.policy.allows_peer("192.0.2.6", 9641))


class DefaultUserQuotaTests(TestCase):
    """
    With no --user-quota, one user may hold half of what the server can:
    its relay ports or its total quota, whichever is fewer.
    """

    def start(self, config: ServerConfig, **kwargs: Any) -> TurnService:
        service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("127.0.0.1", 0)],
            ["127.0.0.1"],
            config=config,
            transports={"udp"},
            **kwargs,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_half_the_relay_ports(self) -> None:
        """
        Ten relay ports: five allocations per user.  A reload with no
        quota set keeps the rule; the full default range gives up to 8,192.
        """
        service = self.start(ServerConfig(realm=REALM), min_port=50000, max_port=50009)
        self.assertEqual(service.server.config.user_quota, 5)
        service.reload(config=ServerConfig(realm=REALM))
        self.assertEqual(service.server.config.user_quota, 5)
        wide = self.start(ServerConfig(realm=REALM)).server.config
        self.assertEqual(wide.user_quota, min(16384, wide.total_quota) // 2)

    def test_half_the_total(self) -> None:
        """
        A total quota smaller than the ports decides; an explicit
        --user-quota is kept exactly.
        """
        self.assertEqual(self.start(ServerConfig(total_quota=40)).server.config.user_quota, 20)
        exact = self.start(ServerConfig(total_quota=40, user_quota=3))
        self.assertEqual(exact.server.config.user_quota, 3)
