"""
Tests for L{txturn.core.events} and L{txturn.observers.event_log}: the core announces
every lifecycle event to its observers, and the log observer writes one
readable line for each that matters.
"""

from __future__ import annotations

from typing import Any, Iterator, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txturn.auth.credentials import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRefreshed,
    AuthenticationFailed,
    ChannelBound,
    ChannelExpired,
    DataConnectionClosed,
    DataConnectionOpened,
    IServerObserver,
    PermissionExpired,
    PermissionInstalled,
    RequestAnswered,
    Traffic,
)
from txturn.core.interfaces import Address
from txturn.observers.event_log import EventLog
from txturn.testing import (
    FakePeerConnection,
    FakeTcpRelayAllocator,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
)
from txturn.util.log_level import log_level, set_log_level
from txturn.wire.stun import Attr, Class, Method

REALM = "events"
CLIENT = ("198.51.100.1", 4000)
PEER = ("203.0.113.5", 5000)


@implementer(IServerObserver)
class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def observe(self, event: object) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.recorder = Recorder()
        self.server = make_server(
            realm=REALM,
            clock=self.clock,
            credentials=CredentialChain(
                [StaticCredentials(REALM, {"u": "p"}), RestApiCredentials("s")]
            ),
            tcp_relays=FakeTcpRelayAllocator(),
            observers=[self.recorder],
        )
        self.channel = RecordingClientChannel()
        self.client = StunClient("u", "p")

    def request(self, method: int, attrs: Any = None, **kwargs: Any) -> Any:
        return authenticated_request(
            self.server,
            kwargs.get("channel", self.channel),
            kwargs.get("client", self.client),
            method,
            attrs,
            kwargs.get("address", CLIENT),
        )

    def test_interface(self) -> None:
        verifyObject(IServerObserver, self.recorder)
        verifyObject(IServerObserver, EventLog())

    def test_allocation_lifecycle(self) -> None:
        """
        Created, permission and channel installed, refreshed, traffic
        counted each way, deleted by the client with its duration,
        totals and drops; every request answered is announced with its
        code.
        """
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        (created,) = self.recorder.of(AllocationCreated)
        self.assertEqual(
            (created.username, created.client, created.transport, created.lifetime),
            ("u", CLIENT, "udp", 600.0),
        )
        self.request(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)]
        )
        self.assertEqual(
            self.recorder.of(ChannelBound), [ChannelBound(created.allocation, 0x4000, PEER)]
        )
        self.assertEqual(
            self.recorder.of(PermissionInstalled),
            [PermissionInstalled(created.allocation, PEER[0])],
        )
        self.server.datagram_received(self.channel, b"\x40\x00\x00\x05hello", CLIENT)
        allocation = self.server.allocations[(self.channel, CLIENT)]
        relay = allocation.relays[1]
        relay.receiver(b"from the peer", PEER)
        relay.receiver(b"again", PEER)
        relay.receiver(b"stranger", ("203.0.113.99", 1))
        self.server.datagram_received(self.channel, b"\x40\x01\x00\x01x", CLIENT)
        self.channel.sent.clear()
        self.clock.advance(100)
        self.request(Method.REFRESH, [(Attr.LIFETIME, 900)])
        self.assertEqual(
            self.recorder.of(AllocationRefreshed),
            [AllocationRefreshed(created.allocation, "u", CLIENT, 900.0)],
        )
        self.request(Method.REFRESH, [(Attr.LIFETIME, 0)])
        (deleted,) = self.recorder.of(AllocationDeleted)
        self.assertEqual(deleted.reason, "refresh")
        self.assertEqual(deleted.duration, 100.0)
        self.assertEqual(deleted.to_peers, Traffic(1, 5))
        self.assertEqual(deleted.to_client, Traffic(2, 18))
        self.assertEqual(
            deleted.dropped, {"dropped_no_permission": 1, "dropped_unbound_channel": 1}
        )
        codes = [(e.method, e.code) for e in self.recorder.of(RequestAnswered)]
        self.assertEqual(
            codes,
            [
                (Method.ALLOCATE, 401),
                (Method.ALLOCATE, 0),
                (Method.CHANNEL_BIND, 0),
                (Method.REFRESH, 0),
                (Method.REFRESH, 0),
            ],
        )

    def test_expiry_reasons(self) -> None:
        """
        Permissions and channels expire with events; an allocation that
        expires, or whose connection closes, says so.  (Deleting an
        allocation takes its permissions and channels with it: the
        deletion event stands for theirs.)
        """
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 900)])
        self.request(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)]
        )
        self.clock.advance(300)
        self.assertEqual(len(self.recorder.of(PermissionExpired)), 1)
        self.assertEqual(len(self.recorder.of(ChannelExpired)), 0)
        self.clock.advance(300)
        self.assertEqual(len(self.recorder.of(ChannelExpired)), 1)
        self.assertEqual(self.recorder.of(AllocationDeleted), [])
        self.clock.advance(300)
        self.assertEqual(self.recorder.of(AllocationDeleted)[0].reason, "expired")
        stream = RecordingClientChannel("tcp")
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], channel=stream)
        self.server.connection_lost(stream)
        self.assertEqual(self.recorder.of(AllocationDeleted)[1].reason, "connection closed")

    def test_authentication_failures(self) -> None:
        """
        Each failure is announced once per nonce, with why.
        """
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        nonce = self.client.nonce
        for i, (name, password) in enumerate(
            [("u", "wrong"), ("nobody", "p"), ("1000:x", "p"), ("u", "wrong")]
        ):
            client = StunClient(name, password)
            client.realm = REALM
            client.nonce = self.server.nonces.issue(CLIENT[0], self.clock.seconds() + i + 1)
            request = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
            self.server.datagram_received(self.channel, request, CLIENT)
            self.server.datagram_received(self.channel, request, CLIENT)  # the same nonce
        self.clock.advance(601)
        self.client.nonce = nonce
        self.server.datagram_received(self.channel, self.client.request(Method.REFRESH, []), CLIENT)
        reasons = [e.reason for e in self.recorder.of(AuthenticationFailed)]
        self.assertEqual(
            reasons,
            ["bad integrity", "unknown user", "expired credential", "bad integrity", "stale nonce"],
        )

    def test_data_connections(self) -> None:
        """
        An RFC 6062 data connection is announced when bound and when
        closed.
        """
        control = RecordingClientChannel("tcp")
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)], channel=control)
        self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)], channel=control)
        allocation = self.server.allocations[(control, CLIENT)]
        tcp_relays: Any = self.server.state.tcp_relays
        connection: FakePeerConnection = tcp_relays.opened[0].peer_connects(PEER)
        connection_id = self.server.peer_connections.by_allocation[allocation].copy().pop()
        data = RecordingClientChannel("tcp")
        response = self.request(
            Method.CONNECTION_BIND,
            [(Attr.CONNECTION_ID, connection_id)],
            channel=data,
            address=("198.51.100.1", 4001),
        )
        self.assertEqual(response.cls, Class.SUCCESS)
        self.assertEqual(
            self.recorder.of(DataConnectionOpened),
            [DataConnectionOpened(allocation.id, connection_id, PEER)],
        )
        connection.close()
        self.assertEqual(
            self.recorder.of(DataConnectionClosed),
            [DataConnectionClosed(allocation.id, connection_id, PEER)],
        )

    def test_observer_failure_contained(self) -> None:
        """
        An observer that raises is logged; the others and the server go
        on.
        """

        @implementer(IServerObserver)
        class Broken:
            def observe(self, event: object) -> None:
                raise RuntimeError("observer bug")

        self.server.state.observers.insert(0, Broken())
        response = self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.assertEqual(response.cls, Class.SUCCESS)
        self.assertEqual(len(self.recorder.of(AllocationCreated)), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class EventLogTests(SynchronousTestCase):
    def lines(self, *events: object) -> list[str]:
        logged: list[LogEvent] = []
        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        log = EventLog()
        for event in events:
            log.observe(event)
        return [str(formatEvent(e)) for e in logged if e.get("log_source") is log]

    def test_lines(self) -> None:
        """
        One line per allocation created or deleted, per data connection
        and per authentication failure, with host:port addresses;
        permissions, channels and answered requests make no line.
        """
        v6 = ("2001:db8::7", 4000)
        lines = self.lines(
            AllocationCreated(7, "u", v6, "tls", (("192.0.2.1", 50000),), 600.0),
            PermissionInstalled(7, "203.0.113.5"),
            ChannelBound(7, 0x4000, PEER),
            RequestAnswered(Method.REFRESH, 0, v6, "tls", "u"),
            AllocationDeleted(7, "u", v6, "tls", "expired", 612.4, Traffic(3, 30), Traffic(4, 40)),
            AllocationDeleted(
                9, "u", v6, "udp", "refresh", 1, Traffic(0, 0), Traffic(0, 0), {"refused_peer": 2}
            ),
            DataConnectionOpened(8, 99, PEER),
            AuthenticationFailed(("198.51.100.1", 7), "mallory", "unknown user"),
        )
        self.assertEqual(
            lines,
            [
                "Allocated 192.0.2.1:50000 for u from [2001:db8::7]:4000 over tls for 600s",
                "Allocation 7 of u from [2001:db8::7]:4000 deleted (expired) after 612s: "
                "3 packets, 30 bytes to peers; 4 packets, 40 bytes to the client",
                "Allocation 9 of u from [2001:db8::7]:4000 deleted (refresh) after 1s: "
                "0 packets, 0 bytes to peers; 0 packets, 0 bytes to the client; "
                "dropped: 2 refused_peer",
                "TCP data connection 99 to 203.0.113.5:5000 of allocation 8 opened",
                "Authentication failed for user 'mallory' from 198.51.100.1:7: unknown user",
            ],
        )

    def test_braces_stay_text(self) -> None:
        """
        A username holding format syntax is logged as written (the lines
        are rendered before C{twisted.logger} sees them), and the event
        still carries every value as a field.
        """
        logged: list[LogEvent] = []
        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        name = "{user} {0} {relays!r:>9} }{"
        EventLog().observe(AllocationCreated(7, name, PEER, "udp", (PEER,), 600.0))
        [event] = [e for e in logged if e.get("allocation") == 7]
        self.assertEqual(
            formatEvent(event),
            f"Allocated 203.0.113.5:5000 for {name} from 203.0.113.5:5000 over udp for 600s",
        )
        self.assertEqual(
            (event["user"], event["client"], event["lifetime"]), (name, "203.0.113.5:5000", 600.0)
        )

    def test_not_rendered_below_level(self) -> None:
        """
        Under C{--log-level warn} the allocation lines are not rendered at
        all (their addresses are not even formatted), and at C{info} they
        are.
        """
        formatted: list[int] = []

        class Relays(tuple[Address, ...]):
            def __iter__(self) -> Iterator[Address]:
                formatted.append(len(self))
                return super().__iter__()

        event = AllocationCreated(7, "u", PEER, "udp", Relays((PEER,)), 600.0)
        self.addCleanup(set_log_level, log_level())
        set_log_level(LogLevel.warn)
        self.assertEqual(self.lines(event), [])
        self.assertEqual(formatted, [])
        set_log_level(LogLevel.info)
        self.assertEqual(len(self.lines(event)), 1)
        self.assertEqual(len(formatted), 1)
