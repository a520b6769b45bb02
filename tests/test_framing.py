"""
Tests for stream framing (L{txturn.wire.framing}), and one behaviour suite run
over every client transport (UDP, TCP, TLS, DTLS) in memory, with a
L{Clock} and fake relays.
"""

from __future__ import annotations

import tempfile
from typing import Any

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from txturn.core.server import TurnServer
from txturn.testing import (
    FakeDatagramTransport,
    FakeRelayAllocator,
    RecordingClientChannel,
    StunClient,
    binding,
    exchange,
    make_server,
    pump,
    self_signed_certificate,
)
from txturn.transports.dtls import DtlsListener
from txturn.transports.stream import TurnStreamFactory, TurnStreamProtocol
from txturn.transports.tls import TlsCredentials
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import Attr, Class, Message, Method, StunDecodeError, decode

CLIENT = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 5000)
REALM = "framing"

_CERT_DIR = tempfile.mkdtemp()
CERT, KEY = self_signed_certificate(_CERT_DIR)
CREDENTIALS = TlsCredentials(CERT, KEY)


class FramerTests(SynchronousTestCase):
    """
    Tests for L{StreamFramer}.
    """

    def test_several_per_segment(self) -> None:
        """
        Several messages in one segment come out as several frames, with
        ChannelData padding kept on the frame.
        """
        stun = binding()
        channel = b"\x40\x00\x00\x03abc\x00"
        self.assertEqual(StreamFramer().feed(stun + channel + stun), [stun, channel, stun])

    def test_split(self) -> None:
        """
        A message split across segments, down to single bytes, comes out
        whole once its last byte arrives, and nothing before.
        """
        framer = StreamFramer()
        data = binding() + b"\x40\x01\x00\x05hello\x00\x00\x00"
        frames: list[bytes] = []
        for i in range(len(data)):
            frames += framer.feed(data[i : i + 1])
        self.assertEqual(frames, [data[:28], data[28:]])
        self.assertEqual(framer.buffered, 0)

    def test_broken(self) -> None:
        """
        A byte that starts neither STUN nor ChannelData, or a STUN length
        not a multiple of 4, is a decode error.
        """
        error = self.assertRaises(StunDecodeError, StreamFramer().feed, b"\x80\x00\x00\x00")
        self.assertEqual(str(error), "stream byte 0x80 starts neither STUN nor ChannelData")
        error = self.assertRaises(StunDecodeError, StreamFramer().feed, b"\x00\x01\x00\x03")
        self.assertEqual(str(error), "STUN message length is not a multiple of 4")


class StreamProtocolTests(SynchronousTestCase):
    """
    Tests for L{TurnStreamProtocol} on a StringTransport.
    """

    def setUp(self) -> None:
        self.server = make_server(realm=REALM)

    def connect(self) -> tuple[TurnStreamProtocol, StringTransport]:
        protocol = TurnStreamFactory(self.server, "tcp").buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", *CLIENT))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_broken_frame_closes_only_that_connection(self) -> None:
        """
        Garbage on one connection closes it; another connection keeps
        being answered.
        """
        bad, bad_transport = self.connect()
        good, good_transport = self.connect()
        bad.dataReceived(b"\xff\xff\xff\xff")
        self.assertTrue(bad_transport.disconnecting)
        good.dataReceived(binding())
        self.assertFalse(good_transport.disconnecting)
        response = decode(good_transport.value())
        self.assertEqual(response.get(Attr.XOR_MAPPED_ADDRESS), CLIENT)


# -- one behaviour suite, four transports ------------------------------------


class Link:
    """
    A client's view of one transport to the server: send bytes, get back
    the frames the server sent.
    """

    padded = False

    def __init__(self, server: TurnServer, clock: Clock) -> None:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def receive(self) -> list[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def channel(self) -> Any:
        raise NotImplementedError


class UdpLink(Link):
    def __init__(self, server: TurnServer, clock: Clock) -> None:
        self.server = server
        self._channel = RecordingClientChannel()

    def send(self, data: bytes) -> None:
        self.server.datagram_received(self._channel, data, CLIENT)

    def receive(self) -> list[bytes]:
        out = [data for data, _ in self._channel.sent]
        self._channel.sent.clear()
        return out

    def close(self) -> None:
        pass

    @property
    def channel(self) -> Any:
        return self._channel


class TcpLink(Link):
    padded = True

    def __init__(self, server: TurnServer, clock: Clock) -> None:
        self.protocol = TurnStreamFactory(server, "tcp").buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", *CLIENT))
        self.protocol.makeConnection(self.transport)
        self.framer = StreamFramer()

    def send(self, data: bytes) -> None:
        # Odd-sized pieces, so every message crosses segment boundaries.
        for i in range(0, len(data), 7):
            self.protocol.dataReceived(data[i : i + 7])

    def receive(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        return self.framer.feed(data)

    def close(self) -> None:
        self.protocol.connectionLost()

    @property
    def channel(self) -> Any:
        return self.protocol


class TlsLink(Link):
    padded = True

    def __init__(self, server: TurnServer, clock: Clock) -> None:
        self.inner = TurnStreamFactory(server, "tls")
        self.clock = clock
        factory = TLSMemoryBIOFactory(
            CREDENTIALS.connection_creator(), False, self.inner, clock=clock
        )
        self.protocol = factory.buildProtocol(IPv4Address("TCP", *CLIENT))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", *CLIENT))
        self.protocol.makeConnection(self.transport)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_alpn_protos([b"stun.turn"])
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        self.framer = StreamFramer()
        self._pump()

    def _collect(self) -> list[bytes]:
        self.clock.advance(0)  # flush the TLS layer's write batching
        reply = self.transport.value()
        self.transport.clear()
        return [reply] if reply else []

    def _pump(self) -> None:
        pump(self.client, self.protocol.dataReceived, self._collect)

    def send(self, data: bytes) -> None:
        self.client.sendall(data)
        self._pump()

    def receive(self) -> list[bytes]:
        self._pump()
        plain = b""
        while True:
            try:
                plain += self.client.recv(65536)
            except SSL.WantReadError:
                break
        return self.framer.feed(plain)

    def close(self) -> None:
        self.protocol.connectionLost(None)

    @property
    def channel(self) -> Any:
        return next(iter(self.inner.connections))


class DtlsLink(Link):
    def __init__(self, server: TurnServer, clock: Clock) -> None:
        self.listener = DtlsListener(server, CREDENTIALS.dtls_context(), clock)
        self.transport = FakeDatagramTransport()
        self.listener.transport = self.transport  # type: ignore[assignment]
        self.listener.startProtocol()
        context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        self._pump()
        assert self.listener.sessions[CLIENT].established

    def _collect(self) -> list[bytes]:
        out = [data for data, _ in self.transport.written]
        self.transport.written.clear()
        return out

    def _pump(self) -> None:
        pump(self.client, lambda data: self.listener.datagramReceived(data, CLIENT), self._collect)

    def send(self, data: bytes) -> None:
        self.client.send(data)
        self._pump()

    def receive(self) -> list[bytes]:
        self._pump()
        out = []
        while True:
            try:
                out.append(self.client.recv(65536))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
        return out

    def close(self) -> None:
        self.client.shutdown()
        self._pump()

    @property
    def channel(self) -> Any:
        return self.listener.sessions[CLIENT]


class BehaviourMixin:
    """
    Allocate, Refresh, CreatePermission, ChannelBind, Send and Data over
    one transport.  Subclasses name the L{Link}.
    """

    link_class: type[Link]

    def setUp(self) -> None:
        self.clock = Clock()
        self.relays = FakeRelayAllocator()
        self.server = make_server(realm=REALM, clock=self.clock, relays=self.relays)
        self.link = self.link_class(self.server, self.clock)
        self.client = StunClient("u", "p")

    def request(self, method: int, attrs: list[tuple[int, Any]] | None = None) -> Message:
        return exchange(self.client, method, attrs, self.link.send, self.receive_one)

    def receive_one(self) -> bytes:
        [raw] = self.link.receive()
        return raw

    def test_allocate_refresh(self) -> None:
        """
        Allocate succeeds after the 401 round, Refresh extends it, and
        Refresh with LIFETIME 0 deletes it.
        """
        t: Any = self
        response = self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        t.assertEqual(response.cls, Class.SUCCESS)
        t.assertEqual(response.get(Attr.XOR_MAPPED_ADDRESS), CLIENT)
        t.assertEqual(
            self.request(Method.REFRESH, [(Attr.LIFETIME, 1200)]).get(Attr.LIFETIME), 1200
        )
        t.assertEqual(self.request(Method.REFRESH, [(Attr.LIFETIME, 0)]).cls, Class.SUCCESS)
        t.assertEqual(self.server.allocations, {})

    def test_send_and_data(self) -> None:
        """
        Send indications reach the peer; the peer's answer comes back as a
        Data indication.
        """
        t: Any = self
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        self.link.send(
            self.client.request(
                Method.SEND,
                [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"ping")],
                authenticate=False,
                cls=Class.INDICATION,
            )
        )
        relay = self.relays.opened[0]
        t.assertEqual(relay.sent, [(b"ping", PEER)])
        relay.receiver(b"pong", PEER)
        [raw] = self.link.receive()
        t.assertEqual(decode(raw).get(Attr.DATA), b"pong")

    def test_channels(self) -> None:
        """
        ChannelBind, then ChannelData both ways; padded to 4 bytes on
        stream transports, unpadded on datagram ones.
        """
        t: Any = self
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        response = self.request(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4001), (Attr.XOR_PEER_ADDRESS, PEER)]
        )
        t.assertEqual(response.cls, Class.SUCCESS)
        pad = b"\x00" if self.link.padded else b""
        self.link.send(b"\x40\x01\x00\x03abc" + pad)
        relay = self.relays.opened[0]
        t.assertEqual(relay.sent, [(b"abc", PEER)])
        relay.receiver(b"xyz", PEER)
        t.assertEqual(self.link.receive(), [b"\x40\x01\x00\x03xyz" + pad])

    def test_close_deletes_allocation(self) -> None:
        """
        On connection-oriented transports, closing the connection deletes
        the allocation and closes its relay.
        """
        t: Any = self
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        t.assertEqual(len(self.server.allocations), 1)
        self.link.close()
        if isinstance(self.link, UdpLink):
            t.assertEqual(len(self.server.allocations), 1)
        else:
            t.assertEqual(self.server.allocations, {})
            t.assertTrue(self.relays.opened[0].closed)


class UdpBehaviourTests(BehaviourMixin, SynchronousTestCase):
    """
    The behaviour suite over UDP.
    """

    link_class = UdpLink


class TcpBehaviourTests(BehaviourMixin, SynchronousTestCase):
    """
    The behaviour suite over TCP, every message split into 7-byte pieces.
    """

    link_class = TcpLink


class TlsBehaviourTests(BehaviourMixin, SynchronousTestCase):
    """
    The behaviour suite over TLS.
    """

    link_class = TlsLink

    def test_tls_version_and_alpn(self) -> None:
        """
        The session is TLS 1.2 or newer and ALPN chose stun.turn.
        """
        link: Any = self.link
        self.assertIn(link.client.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(link.client.get_alpn_proto_negotiated(), b"stun.turn")


class DtlsBehaviourTests(BehaviourMixin, SynchronousTestCase):
    """
    The behaviour suite over DTLS.
    """

    link_class = DtlsLink
