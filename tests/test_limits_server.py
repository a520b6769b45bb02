"""
Quotas and limits in the core, and a soak of 10,000 allocations, all on a
L{Clock}.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txturn.core.counters import Counter
from txturn.testing import (
    FakeRelayAllocator,
    FastClock,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
)
from txturn.transports.stream import TurnStreamFactory
from txturn.wire.stun import Attr, Class, Message, Method

REALM = "limits"
PEER = ("203.0.113.5", 5000)


class LimitTestCase(SynchronousTestCase):
    def make(self, **config: Any) -> None:
        self.clock = FastClock()
        self.relays = FakeRelayAllocator(capacity=100000)
        users = {"alice": "a", "bob": "b"}
        self.server = make_server(
            users, realm=REALM, clock=self.clock, relays=self.relays, **config
        )
        self.channel = RecordingClientChannel()
        self.clients = {name: StunClient(name, password) for name, password in users.items()}

    def request(
        self,
        method: int,
        attrs: Any = None,
        address: tuple[str, int] = ("198.51.100.1", 1),
        user: str = "alice",
    ) -> Message:
        return authenticated_request(
            self.server, self.channel, self.clients[user], method, attrs, address
        )

    def code(self, response: Message) -> int:
        return 0 if response.cls == Class.SUCCESS else response.get(Attr.ERROR_CODE)[0]


class QuotaTests(LimitTestCase):
    """
    --user-quota, --total-quota, --max-permissions, --max-bps.
    """

    def test_user_quota(self) -> None:
        """
        A user past their quota gets 486; another user does not; a freed
        allocation frees a place.
        """
        self.make(user_quota=2)
        allocate = [(Attr.REQUESTED_TRANSPORT, 17)]
        codes = [
            self.code(self.request(Method.ALLOCATE, allocate, ("198.51.100.1", p)))
            for p in (1, 2, 3)
        ]
        self.assertEqual(codes, [0, 0, 486])
        self.assertEqual(
            self.code(self.request(Method.ALLOCATE, allocate, ("198.51.100.1", 9), "bob")), 0
        )
        self.request(Method.REFRESH, [(Attr.LIFETIME, 0)], ("198.51.100.1", 1))
        self.assertEqual(self.code(self.request(Method.ALLOCATE, allocate, ("198.51.100.1", 3))), 0)

    def test_total_quota(self) -> None:
        """
        Past the server's total, Allocate gets 508, whoever asks.
        """
        self.make(total_quota=1)
        allocate = [(Attr.REQUESTED_TRANSPORT, 17)]
        self.assertEqual(self.code(self.request(Method.ALLOCATE, allocate)), 0)
        self.assertEqual(
            self.code(self.request(Method.ALLOCATE, allocate, ("198.51.100.1", 2), "bob")), 508
        )

    def test_max_permissions(self) -> None:
        """
        Permissions past the limit get 508, whether by CreatePermission or
        ChannelBind; refreshing an existing one is fine.
        """
        self.make(max_permissions=2)
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        peers = [("203.0.113.1", 1), ("203.0.113.2", 1), ("203.0.113.3", 1)]
        both = [(Attr.XOR_PEER_ADDRESS, p) for p in peers[:2]]
        self.assertEqual(self.code(self.request(Method.CREATE_PERMISSION, both)), 0)
        self.assertEqual(self.code(self.request(Method.CREATE_PERMISSION, both)), 0)
        third = [(Attr.XOR_PEER_ADDRESS, peers[2])]
        self.assertEqual(self.code(self.request(Method.CREATE_PERMISSION, third)), 508)
        bind = [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peers[2])]
        self.assertEqual(self.code(self.request(Method.CHANNEL_BIND, bind)), 508)
        self.assertEqual(self.server.counters[Counter.MAX_PERMISSIONS], 2)

    def test_max_bps(self) -> None:
        """
        Past --max-bps, relayed datagrams are dropped both ways until the
        bucket refills on the clock.
        """
        self.make(max_bps=1000)
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.request(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)]
        )
        relay = self.relays.opened[0]
        frame = b"\x40\x00\x01\x90" + b"x" * 400
        for _ in range(5):
            self.server.datagram_received(self.channel, frame, ("198.51.100.1", 1))
        self.assertEqual(len(relay.sent), 2)
        relay.receiver(b"y" * 400, PEER)
        self.assertEqual(self.channel.sent, [])
        self.clock.advance(1)
        relay.receiver(b"y" * 400, PEER)
        self.assertEqual(len(self.channel.sent), 1)
        self.assertEqual(self.server.counters[Counter.DROPPED_BANDWIDTH], 4)


class ChallengeLimitTests(LimitTestCase):
    """
    401/438 answers to one source are rate limited, with bounded memory.
    """

    def test_limited(self) -> None:
        """
        A source gets its burst of 401s, then silence until the clock
        refills its bucket; other sources are unaffected.
        """
        self.make(challenge_rate=1, challenge_burst=3)
        request = self.clients["alice"].request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        for _ in range(10):
            self.server.datagram_received(self.channel, request, ("198.51.100.1", 1))
        self.assertEqual(len(self.channel.sent), 3)
        self.server.datagram_received(self.channel, request, ("198.51.100.2", 1))
        self.assertEqual(len(self.channel.sent), 4)
        self.clock.advance(1)
        self.server.datagram_received(self.channel, request, ("198.51.100.1", 1))
        self.assertEqual(len(self.channel.sent), 5)
        self.assertEqual(self.server.counters[Counter.CHALLENGES_LIMITED], 7)

    def test_flood_leaves_no_state(self) -> None:
        """
        20,000 unauthenticated Allocates from as many addresses create no
        allocation and no relay, and the limiter remembers at most its
        bound of sources.
        """
        self.make()
        request = self.clients["alice"].request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        for i in range(20000):
            address = (f"198.51.{100 + i // 65536}.{(i // 256) % 256}", 1000 + i % 256)
            self.server.datagram_received(self.channel, request, address)
        self.assertEqual(self.server.allocations, {})
        self.assertEqual(self.relays.opened, [])
        self.assertLessEqual(
            len(self.server.authenticator.challenges),
            self.server.authenticator.challenges.max_sources,
        )


class CongestionTests(SynchronousTestCase):
    """
    A stream client that does not read loses relayed frames instead of
    making the server buffer them.
    """

    def test_congested_drops(self) -> None:
        """
        While the transport has paused its producer (buffer full), frames
        sent to the client are dropped and counted; after it resumes they
        flow again.
        """
        server = make_server({}, realm=REALM)
        protocol = TurnStreamFactory(server, "tcp").buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.1", 1))
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol)
        protocol.send(b"one", ("198.51.100.1", 1))
        producer: Any = transport.producer
        producer.pauseProducing()
        protocol.send(b"two", ("198.51.100.1", 1))
        producer.resumeProducing()
        protocol.send(b"three", ("198.51.100.1", 1))
        self.assertEqual(transport.value(), b"onethree")
        self.assertEqual(server.counters[Counter.DROPPED_CONGESTED], 1)


class SoakTests(LimitTestCase):
    """
    10,000 allocations through their whole life on a Clock.
    """

    def test_soak(self) -> None:
        """
        10,000 allocations are created, refreshed, given a permission and a
        channel; half are deleted by Refresh and half left to expire.
        Afterwards every count is zero, every relay is closed, no timer is
        left, and memory is back where it was.
        """
        self.make(challenge_rate=1e9, challenge_burst=1e9, user_quota=0)
        client = self.clients["alice"]
        client.realm = REALM
        self.server.nonces.lifetime = 3600
        client.nonce = self.server.nonces.issue("198.51.100.1", self.clock.seconds())
        send = self.server.datagram_received
        channel = self.channel

        def lifecycle(count: int, offset: int) -> None:
            steps: list[tuple[int, list[tuple[int, Any]]]] = [
                (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                (Method.REFRESH, [(Attr.LIFETIME, 900)]),
                (Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)]),
                (
                    Method.CHANNEL_BIND,
                    [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)],
                ),
            ]
            for i in range(count):
                address = ("198.51.100.1", offset + i)
                for method, attrs in steps:
                    send(channel, client.request(method, attrs), address)
                if i % 2:
                    send(channel, client.request(Method.REFRESH, [(Attr.LIFETIME, 0)]), address)
            channel.sent.clear()

        def round_trip() -> int:
            """
            One full round; returns the interpreter's allocated blocks after.
            """
            client.nonce = self.server.nonces.issue("198.51.100.1", self.clock.seconds())
            lifecycle(10000, 0)
            self.assertEqual(len(self.server.allocations), 5000)
            self.assertEqual(len(self.relays.open_relays), 5000)
            self.clock.advance(900)
            self.assertEqual(self.server.allocations, {})
            self.assertEqual(self.relays.open_relays, set())
            self.assertEqual(self.server.state.table.users, {})
            self.clock.advance(300)  # channel cooldowns
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.relays.opened.clear()
            gc.collect()
            return sys.getallocatedblocks()

        # The first round grows dicts and free lists to their working size;
        # a leak would show as growth from the first round to the second.
        first = round_trip()
        second = round_trip()
        self.assertLess(second - first, 2000, f"{second - first} more blocks after round two")


class CrowdTests(LimitTestCase):
    """
    A crowd refused by the per-user limit is told apart in the log.
    """

    def test_refused_crowd_logged(self) -> None:
        """
        The 486 is logged once, naming the user, the limit, and what to
        do if many clients share the credential.
        """
        from typing import cast

        from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.make(user_quota=2)
        allocate = [(Attr.REQUESTED_TRANSPORT, 17)]
        for port in range(1, 6):
            self.request(Method.ALLOCATE, allocate, ("198.51.100.1", port))
        lines = [formatEvent(e) for e in events if "486" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("alice", lines[0])
        self.assertIn("the 2 allocations", lines[0])
        self.assertIn("raise --user-quota", lines[0])
