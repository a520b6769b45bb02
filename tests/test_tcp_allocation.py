"""
Tests for TCP allocations (RFC 6062) in the core, with a L{Clock} and
fake TCP relays: every error code and timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txturn.core.counters import Counter
from txturn.core.server import TurnServer
from txturn.testing import (
    FakePeerConnection,
    FakeTcpRelayAllocator,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
)
from txturn.wire.stun import Attr, Class, Message, Method, decode

REALM = "tcp"
CONTROL = ("198.51.100.7", 40000)
DATA = ("198.51.100.7", 40001)
PEER = ("203.0.113.5", 5000)


class TcpAllocationTests(SynchronousTestCase):
    """
    Allocate, Connect, ConnectionBind and ConnectionAttempt.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.tcp_relays = FakeTcpRelayAllocator()
        self.server = self.make_server()
        self.control = RecordingClientChannel("tcp")
        self.client = StunClient("alice", "secret")

    def make_server(self, **config: Any) -> TurnServer:
        return make_server(
            {"alice": "secret", "bob": "pw"},
            realm=REALM,
            clock=self.clock,
            tcp_relays=self.tcp_relays,
            **config,
        )

    def request(
        self,
        method: int,
        attrs: list[tuple[int, Any]] | None = None,
        channel: RecordingClientChannel | None = None,
        address: tuple[str, int] = CONTROL,
        client: StunClient | None = None,
    ) -> Message:
        return authenticated_request(
            self.server, channel or self.control, client or self.client, method, attrs, address
        )

    def allocate(self, **kwargs: Any) -> Message:
        return self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)], **kwargs)

    def assertError(self, message: Message, code: int) -> None:
        self.assertEqual(message.cls, Class.ERROR)
        self.assertEqual(message.get(Attr.ERROR_CODE)[0], code)

    def bind(
        self, connection_id: int, client: StunClient | None = None
    ) -> tuple[Message, RecordingClientChannel]:
        """
        ConnectionBind on a new TCP connection; the answer and the channel.
        """
        data = RecordingClientChannel("tcp")
        response = self.request(
            Method.CONNECTION_BIND,
            [(Attr.CONNECTION_ID, connection_id)],
            channel=data,
            address=DATA,
            client=client,
        )
        return response, data

    def connect(self, peer: tuple[str, int] = PEER) -> tuple[Any, FakePeerConnection]:
        """
        Send Connect, succeed the relay's connect; return the response and
        the peer connection.
        """
        self.server.datagram_received(
            self.control,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer)]),
            CONTROL,
        )
        relay = self.tcp_relays.opened[0]
        target, attempt = relay.connects[-1]
        connection = FakePeerConnection(target)
        attempt.callback(connection)
        return self.client.learn(self.control.pop()), connection

    def test_allocate(self) -> None:
        """
        REQUESTED-TRANSPORT TCP on a TCP connection opens a TCP relay and
        answers with its address and no RESERVATION-TOKEN.
        """
        response = self.allocate()
        self.assertEqual(response.cls, Class.SUCCESS)
        self.assertEqual(response.get(Attr.XOR_RELAYED_ADDRESS), ("192.0.2.1", 60000))
        self.assertIsNone(response.get(Attr.RESERVATION_TOKEN))
        self.assertTrue(self.server.allocations[(self.control, CONTROL)].tcp)

    def test_allocate_over_udp(self) -> None:
        """
        A TCP allocation over UDP (or DTLS) is a 400.
        """
        for name in ("udp", "dtls"):
            self.assertError(self.allocate(channel=RecordingClientChannel(name)), 400)
        self.assertEqual(self.tcp_relays.opened, [])

    def test_forbidden_attributes(self) -> None:
        """
        DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN in a TCP Allocate is a 400.
        """
        for attr in [
            (Attr.DONT_FRAGMENT, True),
            (Attr.EVEN_PORT, False),
            (Attr.RESERVATION_TOKEN, b"t" * 8),
        ]:
            response = self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6), attr])
            self.assertError(response, 400)

    def test_policy_switches(self) -> None:
        """
        A UDP relay forbidden by local policy is a 403; a TCP one a 442.
        """
        self.server = self.make_server(udp_relay=False)
        self.assertError(self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]), 403)
        self.server = self.make_server(tcp_relay=False)
        self.assertError(self.allocate(), 442)

    def test_connect_success(self) -> None:
        """
        Connect opens a connection from the relay to the peer and answers
        with a CONNECTION-ID.
        """
        self.allocate()
        response, connection = self.connect()
        self.assertEqual(response.cls, Class.SUCCESS)
        connection_id = response.get(Attr.CONNECTION_ID)
        self.assertIs(self.server.peer_connections.entries[connection_id].connection, connection)
        self.assertEqual(self.tcp_relays.opened[0].connects[0][0], PEER)

    def test_connect_errors(self) -> None:
        """
        Connect without an allocation is 437, on a UDP allocation 400,
        without XOR-PEER-ADDRESS 400, to a forbidden peer 403.
        """
        self.assertError(self.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, PEER)]), 437)
        udp = RecordingClientChannel("udp")
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], channel=udp)
        self.assertError(
            self.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, PEER)], channel=udp), 400
        )
        self.allocate()
        self.assertError(self.request(Method.CONNECT), 400)
        for forbidden in [("127.0.0.1", 80), ("::ffff:127.0.0.1", 80), ("0.0.0.0", 80)]:
            response = self.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, forbidden)])
            self.assertError(response, 403 if ":" not in forbidden[0] else 443)
        self.assertEqual(self.tcp_relays.opened[0].connects, [])

    def test_connect_duplicate(self) -> None:
        """
        A second Connect to a peer already connecting, pending or bound is
        a 446; another peer can connect concurrently.
        """
        self.allocate()
        for _ in range(2):
            self.server.datagram_received(
                self.control,
                self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, PEER)]),
                CONTROL,
            )
        self.assertError(decode(self.control.pop()), 446)
        other = ("203.0.113.6", 80)
        self.server.datagram_received(
            self.control,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, other)]),
            CONTROL,
        )
        relay = self.tcp_relays.opened[0]
        self.assertEqual([peer for peer, _ in relay.connects], [PEER, other])
        relay.connects[0][1].callback(FakePeerConnection(PEER))
        self.assertEqual(decode(self.control.pop()).cls, Class.SUCCESS)
        self.assertError(self.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, PEER)]), 446)

    def test_connect_failure(self) -> None:
        """
        A refused connection is a 447.
        """
        self.allocate()
        self.server.datagram_received(
            self.control,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, PEER)]),
            CONTROL,
        )
        self.tcp_relays.opened[0].connects[0][1].errback(ConnectionRefusedError())
        self.assertError(decode(self.control.pop()), 447)

    def test_connect_timeout(self) -> None:
        """
        A connection that takes longer than the timeout (30 s) is a 447,
        and the attempt is cancelled.
        """
        self.allocate()
        self.server.datagram_received(
            self.control,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, PEER)]),
            CONTROL,
        )
        self.clock.advance(29)
        self.assertEqual(self.control.sent, [])
        self.clock.advance(1)
        self.assertError(decode(self.control.pop()), 447)
        self.assertTrue(self.tcp_relays.opened[0].connects[0][1].called)

    def test_bind(self) -> None:
        """
        ConnectionBind on a new connection with the CONNECTION-ID makes it
        the client data connection of the peer connection.
        """
        self.allocate()
        response, connection = self.connect()
        bound, data = self.bind(response.get(Attr.CONNECTION_ID))
        self.assertEqual(bound.cls, Class.SUCCESS)
        self.assertIs(data.attached, connection)
        self.clock.advance(60)
        self.assertFalse(connection.closed)

    def test_bind_errors(self) -> None:
        """
        ConnectionBind over UDP, without CONNECTION-ID, with an unknown or
        already bound one, or from the control connection is a 400; by
        another user a 441.
        """
        self.allocate()
        response, connection = self.connect()
        connection_id = response.get(Attr.CONNECTION_ID)
        cases: list[tuple[Any, tuple[str, int], list[tuple[int, Any]]]] = [
            (RecordingClientChannel("udp"), DATA, [(Attr.CONNECTION_ID, connection_id)]),
            (RecordingClientChannel("tcp"), DATA, []),
            (RecordingClientChannel("tcp"), DATA, [(Attr.CONNECTION_ID, connection_id ^ 1)]),
            (self.control, CONTROL, [(Attr.CONNECTION_ID, connection_id)]),
        ]
        for channel, address, attrs in cases:
            self.assertError(
                self.request(Method.CONNECTION_BIND, attrs, channel=channel, address=address),
                400,
            )
        bob = StunClient("bob", "pw")
        self.assertError(self.bind(connection_id, client=bob)[0], 441)
        self.bind(connection_id)
        self.assertError(self.bind(connection_id)[0], 400)

    def test_unbound_timeout(self) -> None:
        """
        A peer connection with no ConnectionBind after 30 s is closed and
        its CONNECTION-ID forgotten.
        """
        self.allocate()
        response, connection = self.connect()
        self.clock.advance(29.9)
        self.assertFalse(connection.closed)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed)
        self.assertEqual(self.server.peer_connections.entries, {})

    def test_incoming_without_permission(self) -> None:
        """
        A peer connecting to the relay without a permission is closed at
        once, and the client hears nothing.
        """
        self.allocate()
        connection = self.tcp_relays.opened[0].peer_connects(PEER)
        self.assertTrue(connection.closed)
        self.assertEqual(self.control.sent, [])

    def test_connection_attempt(self) -> None:
        """
        With a permission, an incoming peer connection is announced by a
        ConnectionAttempt indication carrying its address and a
        CONNECTION-ID that ConnectionBind then claims.
        """
        self.allocate()
        self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        connection = self.tcp_relays.opened[0].peer_connects(PEER)
        indication = decode(self.control.pop())
        self.assertEqual(
            (indication.method, indication.cls), (Method.CONNECTION_ATTEMPT, Class.INDICATION)
        )
        self.assertEqual(indication.get(Attr.XOR_PEER_ADDRESS), PEER)
        bound, data = self.bind(indication.get(Attr.CONNECTION_ID))
        self.assertEqual(bound.cls, Class.SUCCESS)
        self.assertIs(data.attached, connection)

    def test_allocation_end_closes_connections(self) -> None:
        """
        When the allocation ends (control connection lost, or expiry) its
        pending and bound data connections are closed and forgotten, and a
        Connect still in progress is closed when it completes.
        """
        self.allocate()
        response, bound = self.connect()
        self.bind(response.get(Attr.CONNECTION_ID))
        _, pending = self.connect(("203.0.113.9", 1))
        self.server.datagram_received(
            self.control,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, ("203.0.113.10", 1))]),
            CONTROL,
        )
        relay = self.tcp_relays.opened[0]
        self.server.connection_lost(self.control)
        self.assertTrue(bound.closed)
        self.assertTrue(pending.closed)
        self.assertTrue(relay.closed)
        self.assertEqual(self.server.peer_connections.entries, {})
        late = FakePeerConnection(("203.0.113.10", 1))
        relay.connects[-1][1].callback(late)
        self.assertTrue(late.closed)

    def test_expiry_closes_connections(self) -> None:
        """
        Allocation expiry closes its data connections too.
        """
        self.allocate()
        _, connection = self.connect()
        self.clock.advance(600)
        self.assertTrue(connection.closed)
        self.assertEqual(self.server.allocations, {})

    def test_no_channels_or_send(self) -> None:
        """
        ChannelBind on a TCP allocation is a 400; Send indications are dropped.
        """
        self.allocate()
        response = self.request(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)]
        )
        self.assertError(response, 400)

    def test_pending_connections_capped(self) -> None:
        """
        Unbound connections and Connects in progress per allocation are
        capped (32 by default): the next Connect gets 508 and the next
        incoming peer is closed unannounced.  A bound connection frees its
        place.
        """
        self.allocate()
        self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        ids = []
        for port in range(1, 33):
            response, _ = self.connect(("203.0.113.5", port))
            self.assertEqual(response.cls, Class.SUCCESS)
            ids.append(response.get(Attr.CONNECTION_ID))
        self.server.datagram_received(
            self.control,
            self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, ("203.0.113.5", 99))]),
            CONTROL,
        )
        self.assertError(self.client.learn(self.control.pop()), 508)
        incoming = self.tcp_relays.opened[0].peer_connects(("203.0.113.5", 100))
        self.assertTrue(incoming.closed)
        self.assertEqual(self.control.sent, [])
        self.assertEqual(self.server.counters[Counter.MAX_PENDING_CONNECTIONS], 2)
        bound, _ = self.bind(ids[0])
        self.assertEqual(bound.cls, Class.SUCCESS)
        response, _ = self.connect(("203.0.113.5", 101))
        self.assertEqual(response.cls, Class.SUCCESS)
