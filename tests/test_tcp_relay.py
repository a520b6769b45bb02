"""
TCP allocations (RFC 6062) on real sockets on loopback: Connect and
incoming connections, data both ways (including what arrives before the
bind) and the buffer limit; and end-to-end flow control between a client
data connection and its peer, in memory.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.peer_policy import PeerPolicy
from txturn.core.server import ServerConfig
from txturn.testing import BufferedTransport, StunClient, make_server
from txturn.transports.stream import TurnStreamFactory
from txturn.transports.tcp_relay import PeerDataConnection, TcpRelay, TcpRelayAllocator
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import Attr, Class, Method, decode

reactor: Any = _reactor


class StreamClient(Protocol):
    """
    A TURN client connection: STUN frames until told to go raw.
    """

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.frames: list[bytes] = []
        self.raw = b""
        self.is_raw = False
        self.waiting: list[defer.Deferred[bytes]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.ready: defer.Deferred[StreamClient] = defer.Deferred()

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self.is_raw:
            self.raw += data
            return
        self.framer.append(data)
        while not self.is_raw and (frame := self.framer.next_frame()) is not None:
            self.frames.append(frame)
            if decode(frame).method == Method.CONNECTION_BIND:
                # After the ConnectionBind answer, the stream is raw.
                self.is_raw = True
                self.raw += self.framer.take_remaining()
        while self.waiting and self.frames:
            self.waiting.pop(0).callback(self.frames.pop(0))

    def next_frame(self) -> defer.Deferred[bytes]:
        if self.frames:
            return defer.succeed(self.frames.pop(0))
        d: defer.Deferred[bytes] = defer.Deferred()
        d.addTimeout(10, reactor)
        self.waiting.append(d)
        return d

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)


class Peer(Protocol):
    """
    A peer that greets on connect and echoes everything back uppercased.
    """

    greeting = b"hello from peer"

    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += data
        self.transport.write(data.upper())

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)


def dial(address: tuple[str, int], raw: bool = False) -> StreamClient:
    """
    Connect a L{StreamClient} to C{address}; C{raw} for a plain TCP peer
    that speaks no TURN.  Wait on its C{ready} or C{lost}.
    """
    client = StreamClient()
    client.is_raw = raw
    factory = ClientFactory.forProtocol(StreamClient)
    factory.noisy = False
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]
    reactor.connectTCP(address[0], address[1], factory)
    return client


def wait_until(condition: Any, timeout: float = 10.0) -> defer.Deferred[None]:
    """
    Poll C{condition} on the real reactor; real sockets leave no clock to
    advance.
    """

    async def poll() -> None:
        for _ in range(int(timeout / 0.02)):
            if condition():
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("condition not reached in time")

    return defer.ensureDeferred(poll())


class TcpRelayBase(TestCase):
    """
    A TurnService with TCP allocations on 127.0.0.1, and client helpers.
    """

    tcp_buffer = 64 * 1024

    def setUp(self) -> None:
        self.service = TurnService(
            reactor,
            StaticCredentials("tcp", {"alice": "secret"}),
            [("127.0.0.1", 0)],
            ["127.0.0.1"],
            policy=PeerPolicy(allow_loopback=True),
            config=ServerConfig(realm="tcp"),
            transports={"tcp"},
            tcp_buffer=self.tcp_buffer,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.server_port = self.service.port_of("tcp")
        self.client = StunClient("alice", "secret")
        self.peers: list[Peer] = []
        factory = Factory.forProtocol(self.make_peer)
        self.peer_port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.peer_port.stopListening)

    def make_peer(self) -> Peer:
        peer = Peer()
        self.peers.append(peer)
        return peer

    @defer.inlineCallbacks
    def open(self) -> Any:
        connection = dial(("127.0.0.1", self.server_port))
        yield connection.ready
        self.addCleanup(self.close, connection)
        return connection

    def close(self, connection: StreamClient) -> Any:
        if connection.transport is not None:
            connection.transport.loseConnection()
        return connection.lost

    @defer.inlineCallbacks
    def request(
        self,
        connection: StreamClient,
        method: int,
        attrs: list[tuple[int, Any]],
        extra: bytes = b"",
    ) -> Any:
        for _ in range(2):
            assert connection.transport is not None
            connection.transport.write(self.client.request(method, attrs) + extra)
            frame = yield connection.next_frame()
            response = self.client.learn(frame)
            if not self.client.challenged(response):
                break
            connection.is_raw = False
        return response

    @defer.inlineCallbacks
    def allocate(self) -> Any:
        control = yield self.open()
        response = yield self.request(control, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)])
        self.assertEqual(response.cls, Class.SUCCESS)
        return control, response.get(Attr.XOR_RELAYED_ADDRESS)

    @defer.inlineCallbacks
    def bind(self, connection_id: int, extra: bytes = b"") -> Any:
        data = yield self.open()
        response = yield self.request(
            data, Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, connection_id)], extra
        )
        self.assertEqual(response.cls, Class.SUCCESS)
        return data


class TcpRelayTests(TcpRelayBase):
    """
    Both directions of RFC 6062.
    """

    @defer.inlineCallbacks
    def test_active(self) -> Any:
        """
        Connect reaches the peer from the relayed address; after
        ConnectionBind the client gets what the peer sent before the bind,
        bytes sent right behind the ConnectionBind reach the peer, and
        closing the client data connection closes the peer's.
        """
        control, relayed = yield self.allocate()
        peer_address = ("127.0.0.1", self.peer_port.getHost().port)
        response = yield self.request(
            control, Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer_address)]
        )
        self.assertEqual(response.cls, Class.SUCCESS)
        [peer] = self.peers
        assert peer.transport is not None
        remote: Any = peer.transport.getPeer()
        self.assertEqual(remote.port, relayed[1])
        yield wait_until(lambda: self.service.server.peer_connections.entries)
        data = yield self.bind(response.get(Attr.CONNECTION_ID), extra=b"right behind")
        yield wait_until(lambda: data.raw == Peer.greeting + b"RIGHT BEHIND")
        assert data.transport is not None
        data.transport.write(b"more")
        yield wait_until(lambda: data.raw.endswith(b"MORE"))
        self.assertEqual(peer.received, b"right behindmore")
        data.transport.loseConnection()
        yield peer.lost

    @defer.inlineCallbacks
    def test_passive(self) -> Any:
        """
        A peer connecting to the relayed address is announced with a
        ConnectionAttempt once it has a permission; the client binds and
        data flows both ways, and when the peer closes, so does the client
        data connection.  Without a permission it is closed at once.
        """
        control, relayed = yield self.allocate()
        stranger = dial(relayed, raw=True)
        yield stranger.lost
        yield self.request(control, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, relayed)])
        peer = dial(relayed, raw=True)
        yield peer.ready
        self.addCleanup(self.close, peer)
        assert peer.transport is not None
        peer.transport.write(b"early")
        frame = yield control.next_frame()
        attempt = decode(frame)
        self.assertEqual(attempt.method, Method.CONNECTION_ATTEMPT)
        local: Any = peer.transport.getHost()
        self.assertEqual(attempt.get(Attr.XOR_PEER_ADDRESS)[1], local.port)
        data = yield self.bind(attempt.get(Attr.CONNECTION_ID))
        yield wait_until(lambda: data.raw == b"early")
        assert data.transport is not None
        data.transport.write(b"reply")
        yield wait_until(lambda: peer.raw == b"reply")
        peer.transport.loseConnection()
        yield data.lost

    @defer.inlineCallbacks
    def test_quiet(self) -> Any:
        """
        A TCP allocation with a peer connection each way, from Allocate to
        deletion, logs its lifecycle events and nothing from Twisted: no
        "starting on", "(TCP Port N Closed)" or "Starting protocol".
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        control, relayed = yield self.allocate()
        yield self.request(control, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, relayed)])
        incoming = dial(relayed, raw=True)
        yield incoming.ready
        attempt = decode((yield control.next_frame()))
        yield self.bind(attempt.get(Attr.CONNECTION_ID))
        peer_address = ("127.0.0.1", self.peer_port.getHost().port)
        response = yield self.request(
            control, Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer_address)]
        )
        yield self.bind(response.get(Attr.CONNECTION_ID))
        yield self.request(control, Method.REFRESH, [(Attr.LIFETIME, 0)])
        yield incoming.lost
        lines = [formatEvent(e) for e in events]
        self.assertTrue(lines[0].startswith("Allocated 127.0.0.1:"), lines)
        self.assertTrue(any("deleted (refresh)" in line for line in lines), lines)
        chatter = [
            line
            for line in lines
            if "starting on" in line or "Closed)" in line or "protocol" in line.lower()
        ]
        self.assertEqual(chatter, [])


class BufferLimitTests(TcpRelayBase):
    """
    The pre-bind buffer limit.
    """

    tcp_buffer = 1000

    @defer.inlineCallbacks
    def test_limit(self) -> Any:
        """
        A peer that sends more than the limit before the client binds is
        disconnected, and its CONNECTION-ID forgotten.
        """
        control, relayed = yield self.allocate()
        yield self.request(control, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, relayed)])
        peer = dial(relayed, raw=True)
        yield peer.ready
        yield control.next_frame()
        assert peer.transport is not None
        peer.transport.write(b"x" * 5000)
        yield peer.lost
        yield wait_until(lambda: not self.service.server.peer_connections.entries)


class FlowControlTests(SynchronousTestCase):
    """
    A bound client data connection and its peer data connection, each on
    a L{BufferedTransport}: whichever side stops reading makes the server
    stop reading from the other, rather than buffer.
    """

    chunk = 64 * 1024
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB

    def setUp(self) -> None:
        clock = Clock()
        relay = TcpRelay(
            TcpRelayAllocator(clock, ["127.0.0.1"]), clock, "127.0.0.1", 50000, "127.0.0.1"
        )
        relay.on_connection = lambda connection: None
        self.peer = PeerDataConnection(relay, relay.buffer_limit)
        self.peer_side = BufferedTransport()
        self.peer_side.connect(self.peer)
        self.peer_side.receive(b"early")
        self.client = TurnStreamFactory(make_server(), "tcp").buildProtocol(None)
        self.client_side = BufferedTransport()
        self.client_side.connect(self.client)
        self.client.attach(self.peer)
        self.assertEqual(self.client_side.read(), b"early")

    def send(self, towards: BufferedTransport) -> None:
        for offset in range(0, len(self.payload), self.chunk):
            towards.receive(self.payload[offset : offset + self.chunk])

    def drain(self, reader: BufferedTransport, sender: BufferedTransport) -> bytes:
        received = []
        while reader.unread or sender.held_back:
            received.append(reader.read())
        return b"".join(received)

    def test_client_stops_reading(self) -> None:
        """
        A client that stops reading makes the server stop reading from the
        peer: with 8 MiB sent by the peer, what the server holds stays
        under 1 MiB; when the client reads again, all 8 MiB arrive intact.
        """
        self.send(self.peer_side)
        self.assertEqual(self.peer_side.producerState, "paused")
        self.assertLess(self.client_side.unread, 1024 * 1024)
        self.assertGreater(self.peer_side.held_back, 6 * 1024 * 1024)
        received = self.drain(self.client_side, self.peer_side)
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(self.payload).digest())
        self.assertEqual(self.peer_side.producerState, "producing")

    def test_peer_stops_reading(self) -> None:
        """
        The same the other way: a peer that stops reading makes the server
        stop reading from the client.
        """
        self.send(self.client_side)
        self.assertEqual(self.client_side.producerState, "paused")
        self.assertLess(self.peer_side.unread, 1024 * 1024)
        received = self.drain(self.peer_side, self.client_side)
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(self.payload).digest())
