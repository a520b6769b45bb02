"""
The DTLS listener against hostile senders: stateless cookies before any
state or any answer larger than the request, caps on handshakes and
sessions in all and per source, deadlines, and sessions without an
allocation closed however much they talk.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_framing import CREDENTIALS, REALM
from txturn.testing import (
    FakeDatagramTransport,
    StunClient,
    binding,
    first_flight,
    make_server,
    pump,
)
from txturn.transports.dtls import DtlsCounter, DtlsListener
from txturn.wire.stun import Attr, Class, Method, decode

CLIENT = ("198.51.100.7", 40000)


def client_connection() -> SSL.Connection:
    client = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
    client.set_connect_state()
    return client


class DtlsGuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = make_server(realm=REALM, clock=self.clock)
        self.make()

    def make(self, **limits: Any) -> None:
        self.listener = DtlsListener(self.server, CREDENTIALS.dtls_context(), self.clock, **limits)
        self.transport = FakeDatagramTransport()
        self.listener.transport = self.transport  # type: ignore[assignment]
        self.listener.startProtocol()

    def sent(self) -> list[bytes]:
        out = [data for data, _ in self.transport.written]
        self.transport.written.clear()
        return out

    def cookied_hello(self, address: Any = CLIENT) -> tuple[SSL.Connection, bytes]:
        """
        A client that has done the cookie exchange from C{address}, and
        its second hello (with the cookie), not yet delivered.
        """
        client = client_connection()
        self.sent()
        self.listener.datagramReceived(first_flight(client), address)
        (verify,) = self.sent()
        client.bio_write(verify)
        return client, first_flight(client)

    def establish(self, address: Any = CLIENT) -> SSL.Connection:
        client = client_connection()
        pump(client, lambda data: self.listener.datagramReceived(data, address), self.sent)
        self.assertTrue(self.listener.sessions[address].established)
        return client

    def test_cookieless_hello(self) -> None:
        """
        A ClientHello without a cookie gets one HelloVerifyRequest, smaller
        than the hello, no retransmission, and leaves no state: before,
        206 bytes bought the whole 6,735-byte flight with retransmissions.
        """
        hello = first_flight(client_connection())
        self.listener.datagramReceived(hello, CLIENT)
        answers = self.sent()
        self.assertEqual(len(answers), 1)
        self.assertLess(len(answers[0]), len(hello))
        self.assertEqual(answers[0][13], 3)  # handshake type hello_verify_request
        self.assertEqual(self.listener.sessions, {})
        self.assertEqual(self.listener.handshakes, 0)
        self.clock.advance(30)
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [self.listener._sweep])

    def test_junk_handshake_records(self) -> None:
        """
        Junk handshake records, 1,200 of them, open nothing and get
        nothing back; a real client then connects at once.
        """
        for port in range(1200):
            junk = b"\x16\xfe\xfd" + os.urandom(60)
            self.listener.datagramReceived(junk, ("203.0.113.9", port))
        self.assertEqual(self.listener.sessions, {})
        self.assertEqual(self.sent(), [])
        self.establish()

    def test_empty_datagram(self) -> None:
        """
        An empty datagram (UDP allows them) to a live session's address is
        ignored; it used to raise from OpenSSL's BIO for every datagram.
        """
        client = self.establish()
        self.listener.datagramReceived(b"", CLIENT)
        client.send(binding())
        pump(client, lambda data: self.listener.datagramReceived(data, CLIENT), self.sent)
        self.assertEqual(decode(client.recv(65536)).cls, Class.SUCCESS)

    def test_cookie_bound_to_address(self) -> None:
        """
        A cookie earned at one address opens nothing from another: the
        hello is answered with a new HelloVerifyRequest.
        """
        _, hello = self.cookied_hello(CLIENT)
        self.listener.datagramReceived(hello, ("198.51.100.8", 40000))
        self.assertEqual(self.listener.sessions, {})
        self.assertEqual(len(self.sent()), 1)
        self.listener.datagramReceived(hello, CLIENT)
        self.assertIn(CLIENT, self.listener.sessions)

    def test_cookie_expires(self) -> None:
        """
        A cookie verifies for one to two lifetimes (the secret rotates),
        not forever.
        """
        _, hello = self.cookied_hello()
        self.clock.advance(120)
        self.listener.datagramReceived(hello, CLIENT)
        self.assertEqual(self.listener.sessions, {})

    def test_handshake_caps(self) -> None:
        """
        Handshakes in progress are capped per source address (past it a
        hello with a valid cookie is dropped and counted) and in all (where
        the oldest handshake makes room for the newcomer).
        """
        self.make(max_handshakes=3, max_handshakes_per_source=2)
        for port in range(3):
            _, hello = self.cookied_hello(("198.51.100.1", port))
            self.listener.datagramReceived(hello, ("198.51.100.1", port))
        self.assertEqual(len(self.listener.sessions), 2)
        self.assertEqual(self.listener.counters[DtlsCounter.REFUSED_HANDSHAKES_FROM_ONE_ADDRESS], 1)
        for host in ("198.51.100.2", "198.51.100.3"):
            _, hello = self.cookied_hello((host, 1))
            self.listener.datagramReceived(hello, (host, 1))
        self.assertEqual(self.listener.handshakes, 3)
        self.assertEqual(
            sorted(self.listener.sessions),
            [("198.51.100.1", 1), ("198.51.100.2", 1), ("198.51.100.3", 1)],
        )
        self.assertEqual(self.listener.counters[DtlsCounter.EVICTED_HANDSHAKES], 1)

    def test_handshake_deadline(self) -> None:
        """
        A handshake that stops after the cookie is forgotten after the
        deadline (10 s), its timers cancelled, its place free again.
        """
        _, hello = self.cookied_hello()
        self.listener.datagramReceived(hello, CLIENT)
        self.assertEqual(self.listener.handshakes, 1)
        self.clock.advance(10)
        self.assertEqual(self.listener.sessions, {})
        self.assertEqual(self.listener.handshakes, 0)
        self.assertEqual(self.listener._handshakes_from, {})
        self.assertEqual(self.clock.getDelayedCalls(), [self.listener._sweep])

    def test_session_caps(self) -> None:
        """
        Sessions are capped per source address (the next is refused); in
        all, the oldest session holding no allocation makes room, and when
        every session holds one the newcomer is refused.
        """
        self.make(max_sessions=3, max_sessions_per_source=2)
        first = self.establish(("198.51.100.1", 0))
        self.allocate(first, ("198.51.100.1", 0))
        self.establish(("198.51.100.1", 1))
        _, hello = self.cookied_hello(("198.51.100.1", 2))
        self.listener.datagramReceived(hello, ("198.51.100.1", 2))
        self.assertNotIn(("198.51.100.1", 2), self.listener.sessions)
        self.assertEqual(self.listener.counters[DtlsCounter.REFUSED_SESSIONS_FROM_ONE_ADDRESS], 1)
        third = self.establish(("198.51.100.2", 1))
        self.establish(("198.51.100.3", 1))
        self.assertEqual(
            sorted(self.listener.sessions),
            [("198.51.100.1", 0), ("198.51.100.2", 1), ("198.51.100.3", 1)],
        )
        self.assertEqual(self.listener.counters[DtlsCounter.EVICTED_SESSIONS], 1)
        self.allocate(third, ("198.51.100.2", 1))
        last = self.establish(("198.51.100.4", 1))
        self.allocate(last, ("198.51.100.4", 1))
        _, hello = self.cookied_hello(("198.51.100.5", 1))
        self.listener.datagramReceived(hello, ("198.51.100.5", 1))
        self.assertNotIn(("198.51.100.5", 1), self.listener.sessions)
        self.assertEqual(self.listener.counters[DtlsCounter.REFUSED_SESSIONS], 1)

    def allocate(self, client: SSL.Connection, address: Any) -> None:
        stun = StunClient("u", "p")
        for _ in range(2):
            client.send(stun.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
            pump(client, lambda d: self.listener.datagramReceived(d, address), self.sent)
            stun.learn(client.recv(65536))
        self.assertTrue(self.server.has_allocation(self.listener.sessions[address]))

    def test_talking_without_allocation(self) -> None:
        """
        A session that keeps sending Bindings but never allocates is closed
        60-70 s after its handshake; one holding an allocation is not.
        """
        talker = self.establish(("198.51.100.1", 1))
        allocating = self.establish(("198.51.100.2", 1))
        self.allocate(allocating, ("198.51.100.2", 1))
        for _ in range(13):
            talker.send(binding())
            pump(
                talker, lambda d: self.listener.datagramReceived(d, ("198.51.100.1", 1)), self.sent
            )
            if ("198.51.100.1", 1) in self.listener.sessions:
                self.assertEqual(decode(talker.recv(65536)).cls, Class.SUCCESS)
            self.clock.advance(5)
        self.assertEqual(list(self.listener.sessions), [("198.51.100.2", 1)])
        self.assertEqual(self.listener.counters[DtlsCounter.CLOSED_WITHOUT_ALLOCATION], 1)


class DtlsRecordsTests(SynchronousTestCase):
    """
    What one datagram carries after the handshake.
    """

    def test_records_in_one_datagram(self) -> None:
        """
        Two Binding requests in two records of one datagram are both
        answered (the session reads until OpenSSL has no more); one record
        is answered with one read.
        """
        guard = DtlsGuardTests("test_cookieless_hello")
        guard.setUp()
        client = guard.establish()
        guard.sent()
        stun = StunClient("u", "p")
        first, second = binding(), stun.request(Method.BINDING, authenticate=False)
        client.send(first)
        client.send(second)
        both = client.bio_read(65536)
        self.assertGreater(len(both), 2 * 13 + len(first) + len(second))
        guard.listener.datagramReceived(both, CLIENT)
        answers = [data for data in guard.sent()]
        for data in answers:
            client.bio_write(data)
        replies = []
        for _ in range(2):
            replies.append(decode(client.recv(65536)))
        self.assertEqual([r.transaction_id for r in replies], [first[8:20], second[8:20]])
        client.send(binding())
        guard.listener.datagramReceived(client.bio_read(65536), CLIENT)
        [answer] = guard.sent()
        client.bio_write(answer)
        self.assertEqual(decode(client.recv(65536)).cls, Class.SUCCESS)
