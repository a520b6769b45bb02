"""
Tests for L{txturn.transports.admission} and L{txturn.app.descriptors}: TCP and TLS
connections that never authenticate, stall mid-frame or never finish
their handshake are closed on time, and admission is capped in all and
per source address, on a L{Clock} with in-memory transports.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txturn.app import descriptors
from txturn.testing import StunClient, binding, make_server
from txturn.transports.admission import (
    AdmissionCounter,
    AdmissionFactory,
    ConnectionLimits,
    StreamGuard,
)
from txturn.transports.stream import TurnStreamFactory, TurnStreamProtocol
from txturn.wire.stun import Attr, Method

REALM = "guard"


class GuardTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_server(realm=REALM, clock=self.clock)
        self.make()

    def make(self, max_connections: int = 100, **limits: Any) -> None:
        self.guard = StreamGuard(
            self.clock, self.server, ConnectionLimits(**limits), max_connections
        )
        self.guard.start()
        self.addCleanup(self.guard.stop)
        self.factory = TurnStreamFactory(self.server, "tcp", guard=self.guard)
        self.tls_factory = TurnStreamFactory(self.server, "tls", guard=self.guard)
        self.admission = AdmissionFactory(self.guard, self.factory)

    def connect(
        self, host: str = "198.51.100.1", port: int = 1, tls: bool = False
    ) -> tuple[TurnStreamProtocol, StringTransport] | None:
        address = IPv4Address("TCP", host, port)
        if tls:
            protocol = self.tls_factory.buildProtocol(address)
        else:
            built = self.admission.buildProtocol(address)
            if built is None:
                return None
            protocol = built
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def allocate(self, protocol: TurnStreamProtocol) -> None:
        client = StunClient("u", "p")
        for _ in range(2):
            protocol.dataReceived(client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
            transport: Any = protocol.transport
            client.learn(transport.value())
            transport.clear()
        self.assertTrue(self.server.has_allocation(protocol))


class AdmissionTests(GuardTestCase):
    def test_cap_in_all(self) -> None:
        """
        At max_connections, a new connection evicts the oldest one that
        holds no allocation; when every connection holds one, the newcomer
        is refused (no protocol, so Twisted closes it) and counted.
        """
        self.make(max_connections=3)
        held = [self.connect(f"198.51.100.{port}", port) for port in range(3)]
        assert held[0] is not None and held[1] is not None and held[2] is not None
        self.allocate(held[0][0])
        newcomer = self.connect("198.51.100.9", 9)
        self.assertIsNotNone(newcomer)
        self.assertFalse(held[0][1].disconnecting)
        self.assertTrue(held[1][1].disconnecting)
        self.assertEqual(self.guard.counters[AdmissionCounter.EVICTED], 1)
        self.assertEqual(len(self.guard), 3)
        assert newcomer is not None
        self.allocate(held[2][0])
        self.allocate(newcomer[0])
        self.assertIsNone(self.connect("198.51.100.10", 10))
        self.assertEqual(self.guard.counters[AdmissionCounter.REFUSED], 1)

    def test_cap_per_source_counts_only_unallocated(self) -> None:
        """
        One address may hold max_unallocated_per_source connections
        without an allocation; connections that allocated do not count, so
        a crowd behind one NAT is not limited once it has authenticated.
        """
        self.make(max_unallocated_per_source=2)
        first = self.connect(port=1)
        self.assertIsNotNone(self.connect(port=2))
        self.assertIsNone(self.connect(port=3))
        self.assertIsNotNone(self.connect("198.51.100.2", 1))
        assert first is not None
        self.allocate(first[0])
        self.assertIsNotNone(self.connect(port=4))
        self.assertIsNone(self.connect(port=5))

    def test_closed_connections_free_their_place(self) -> None:
        self.make(max_connections=1)
        connected = self.connect()
        assert connected is not None
        connected[0].connectionLost()
        self.assertEqual(len(self.guard), 0)
        self.assertIsNotNone(self.connect())


class DeadlineTests(GuardTestCase):
    def test_idle_without_allocation(self) -> None:
        """
        A connection that talks (Bindings every 5 s) but never allocates is
        aborted 60-62 s after it connected; one with an allocation is not.
        Before, both stayed open for ever.
        """
        talker = self.connect(port=1)
        allocating = self.connect(port=2)
        assert talker is not None and allocating is not None
        self.allocate(allocating[0])
        for _ in range(11):
            talker[0].dataReceived(binding())
            self.clock.pump([1] * 5)
        self.assertFalse(talker[1].disconnecting)
        self.clock.pump([1] * 7)
        self.assertTrue(talker[1].disconnecting)
        self.assertEqual(self.guard.counters[AdmissionCounter.IDLE_TIMEOUT], 1)
        self.clock.advance(600)
        self.assertFalse(allocating[1].disconnecting)

    def test_allocation_ended(self) -> None:
        """
        The idle clock starts again when the allocation goes: 60 s later
        the connection is closed.
        """
        connected = self.connect()
        assert connected is not None
        self.allocate(connected[0])
        self.clock.pump([1] * 100)
        self.server.connection_lost(connected[0])  # the allocation is deleted
        self.clock.pump([1] * 58)
        self.assertFalse(connected[1].disconnecting)
        self.clock.pump([1] * 6)
        self.assertTrue(connected[1].disconnecting)

    def test_tls_handshake_deadline(self) -> None:
        """
        A TLS connection whose handshake has not finished after 10 s is
        aborted; one that finished is left to the idle rule.
        """
        stalled = self.connect(port=1, tls=True)
        done = self.connect(port=2, tls=True)
        assert stalled is not None and done is not None
        done[0].handshakeCompleted()
        self.clock.advance(12)
        self.assertTrue(stalled[1].disconnecting)
        self.assertFalse(done[1].disconnecting)
        self.assertEqual(self.guard.counters[AdmissionCounter.HANDSHAKE_TIMEOUT], 1)

    def test_stalled_frame(self) -> None:
        """
        A frame whose header arrived and whose rest does not within 10 s
        closes the connection, allocation or not; a client finishing its
        frames, however slowly it starts new ones, is not closed.
        """
        stalled = self.connect(port=1)
        steady = self.connect(port=2)
        assert stalled is not None and steady is not None
        self.allocate(stalled[0])
        self.allocate(steady[0])
        request = binding()
        # A header announcing 100 bytes of attributes, and then nothing.
        stalled[0].dataReceived(b"\x00\x01\x00\x64\x21\x12\xa4\x42" + b"t" * 12)
        for _ in range(8):
            steady[0].dataReceived(request[:10])
            self.clock.advance(1.5)
            steady[0].dataReceived(request[10:] + request[:10])
            self.clock.advance(1.5)
            steady[0].dataReceived(request[10:])
        self.assertTrue(stalled[1].disconnecting)
        self.assertFalse(steady[1].disconnecting)
        self.assertEqual(self.guard.counters[AdmissionCounter.FRAME_TIMEOUT], 1)

    def test_stop_cancels_the_sweep(self) -> None:
        self.guard.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DescriptorTests(SynchronousTestCase):
    def test_budget(self) -> None:
        """
        Connections get a quarter of the descriptors after the reserve,
        allocations the rest: at 1,024, 240 connections and 720
        allocations, so connections can never starve relays.
        """
        self.assertEqual(descriptors.connection_budget(1024), 240)
        self.assertEqual(descriptors.allocation_budget(1024), 720)
        self.assertLessEqual(
            descriptors.connection_budget(1024)
            + descriptors.allocation_budget(1024)
            + descriptors.RESERVED,
            1024,
        )

    def test_raise_limit(self) -> None:
        """
        The soft limit is raised to the hard limit (within the ceiling).
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard != resource.RLIM_INFINITY and hard <= 64:
            raise self.skipTest("hard descriptor limit too low to test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        limit = descriptors.raise_limit()
        expected = descriptors.CEILING if hard == resource.RLIM_INFINITY else hard
        self.assertEqual(limit, min(expected, descriptors.CEILING))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], limit)
