"""
The classes of coturn's 2026 security fixes, held against txturn: each
test names the coturn advisory whose class it guards.

 - CVE-2026-73213: denied ranges that are not prefix-aligned, compared
   bytewise;
 - CVE-2026-68552: a STUN length truncated to 16 bits, desynchronising
   TCP and TLS framing;
 - CVE-2026-73214: DTLS state from fragmented pre-cookie ClientHellos;
 - CVE-2026-68554: attributes after MESSAGE-INTEGRITY acted upon;
 - CVE-2026-73215: EVEN-PORT reservations exhausting the relay pool.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_dtls_guard import client_connection
from tests.test_framing import CREDENTIALS, REALM
from tests.test_interop import alice_service
from tests.test_server import ServerTestCase
from txturn.core.peer_policy import PeerPolicy, parse_range
from txturn.testing import (
    FakeDatagramTransport,
    StunClient,
    first_flight,
    make_server,
    pump,
)
from txturn.transports.dtls import DtlsListener
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import Attr, Class, Message, Method, decode, encode, encode_channel_data

reactor: Any = _reactor


class UnalignedRangeTests(SynchronousTestCase):
    """
    CVE-2026-73213: a denied range given as a span or as a CIDR with host
    bits set covers exactly its addresses, in both families.
    """

    def policy(self, *ranges: str) -> PeerPolicy:
        return PeerPolicy(denied=[n for r in ranges for n in parse_range(r)])

    def test_ipv4(self) -> None:
        policy = self.policy("8.8.4.7/22", "1.1.1.5-1.1.2.3")
        for host in ["8.8.4.0", "8.8.5.9", "8.8.7.255", "1.1.1.5", "1.1.1.200", "1.1.2.3"]:
            self.assertFalse(policy.allows(host), host)
        for host in ["8.8.3.255", "8.8.8.0", "1.1.1.4", "1.1.2.4"]:
            self.assertTrue(policy.allows(host), host)

    def test_ipv6(self) -> None:
        policy = self.policy("2a00:1450:4001:81c::7/63", "2a00:1450::5-2a00:1450::1:3")
        denied = [
            "2a00:1450:4001:81c::",
            "2a00:1450:4001:81d:ffff::1",
            "2a00:1450::5",
            "2a00:1450::ffff",
            "2a00:1450::1:3",
        ]
        for host in denied:
            self.assertFalse(policy.allows(host), host)
        for host in ["2a00:1450:4001:81b::1", "2a00:1450:4001:81e::", "2a00:1450::4"]:
            self.assertTrue(policy.allows(host), host)
        # IPv4-mapped forms are the IPv4 address, for the IPv4 range.
        self.assertFalse(self.policy("8.8.4.7/22").allows("::ffff:8.8.5.1"))


class FrameLengthTests(TestCase):
    """
    CVE-2026-68552: frames at the largest lengths STUN and ChannelData
    allow, on TCP and on TLS, leave the framing in step: the request that
    follows each is answered.  And a message too long for its 16-bit
    length is never written with a truncated one.
    """

    def setUp(self) -> None:
        self.service, self.cert = alice_service(self, {"tcp", "tls"})

    def exchange(self, transport: str) -> list[tuple[int, int]]:
        """
        On one connection: the largest ChannelData (unbound: dropped), the
        largest STUN request, then a Binding; the methods answered.
        """
        raw = socket.create_connection(("127.0.0.1", self.service.port_of(transport)), timeout=10)
        if transport == "tls":
            context = ssl.create_default_context(cafile=self.cert)
            context.check_hostname = False
            raw = context.wrap_socket(raw)
        with raw as s:
            client = StunClient("alice", "secret")
            client.fingerprint = False
            largest = client.request(
                Method.BINDING, [(0x8123, b"x" * (65_532 - 4))], authenticate=False
            )
            assert len(largest) == 20 + 65_532, len(largest)
            s.sendall(encode_channel_data(0x4000, b"y" * 65_535, pad=True))
            s.sendall(largest)
            s.sendall(client.request(Method.BINDING, authenticate=False))
            frames, answers = StreamFramer(), list[Message]()
            while len(answers) < 2:
                data = s.recv(65536)
                if not data:
                    break
                answers += [decode(f) for f in frames.feed(data)]
            return [(a.method, a.cls) for a in answers]

    @defer.inlineCallbacks
    def test_in_step(self) -> Any:
        for transport in ("tcp", "tls"):
            answers = yield threads.deferToThread(self.exchange, transport)
            self.assertEqual(answers, [(Method.BINDING, Class.SUCCESS)] * 2, transport)

    def test_never_truncated(self) -> None:
        """
        A message whose attributes pass 65,535 bytes cannot be encoded:
        the encoder refuses it instead of writing a truncated length.
        """
        message = Message(Method.BINDING, Class.SUCCESS, b"t" * 12)
        for _ in range(2):
            message.add_raw(0x8123, b"z" * 40_000)
        self.assertRaises(struct.error, encode, message)


class FragmentedHelloTests(SynchronousTestCase):
    """
    CVE-2026-73214: ClientHellos before the cookie exchange, fragmented or
    oversized, leave no state and get no more than a HelloVerifyRequest.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.listener = DtlsListener(
            make_server(realm=REALM, clock=self.clock), CREDENTIALS.dtls_context(), self.clock
        )
        self.transport = FakeDatagramTransport()
        self.listener.transport = self.transport  # type: ignore[assignment]
        self.listener.startProtocol()
        self.addCleanup(self.listener.stopProtocol)

    def sent(self) -> list[bytes]:
        out = [data for data, _ in self.transport.written]
        self.transport.written.clear()
        return out

    def fragments(self, hello: bytes) -> list[bytes]:
        """
        C{hello}'s handshake message cut into two fragments, each in its
        own record (RFC 6347 section 4.2.3).
        """
        record, body = hello[:13], hello[13:]
        header, message = body[:12], body[12:]
        length = int.from_bytes(header[1:4], "big")
        half = length // 2
        out = []
        for offset, size in ((0, half), (half, length - half)):
            fragment = (header[:6] + offset.to_bytes(3, "big") + size.to_bytes(3, "big")) + message[
                offset : offset + size
            ]
            out.append(record[:11] + len(fragment).to_bytes(2, "big") + fragment)
        return out

    def test_fragmented_and_oversized(self) -> None:
        sent = 0
        for port in range(2000):
            address = ("198.51.100.9", 10_000 + port)
            first, second = self.fragments(first_flight(client_connection()))
            self.listener.datagramReceived(first, address)
            if port % 2:
                self.listener.datagramReceived(second, address)
            self.listener.datagramReceived(first[:13] + os.urandom(16_000), address)
            sent += len(first) + 16_013
        answered = sum(len(data) for data in self.sent())
        self.assertLess(answered, sent / 10)
        self.assertEqual((self.listener.handshakes, len(self.listener.sessions)), (0, 0))
        # A real client still gets through.
        client = client_connection()
        address = ("198.51.100.10", 40000)
        pump(client, lambda data: self.listener.datagramReceived(data, address), self.sent)
        self.assertTrue(self.listener.sessions[address].established)


class AfterIntegrityTests(ServerTestCase):
    """
    CVE-2026-68554: attributes after MESSAGE-INTEGRITY (but FINGERPRINT)
    are not acted upon (RFC 8489 section 14.5).
    """

    def test_lifetime_after_integrity_ignored(self) -> None:
        self.assertSuccess(self.allocate())
        # A Refresh signed without LIFETIME, then LIFETIME 0 appended after
        # the integrity (and a FINGERPRINT over it all).
        self.client.fingerprint = False
        signed = decode(self.client.request(Method.REFRESH, []))
        self.assertEqual(signed.attributes[-1][0], Attr.MESSAGE_INTEGRITY)
        signed.attributes.append((Attr.LIFETIME, struct.pack("!I", 0)))
        forged = encode(signed, add_fingerprint=True)
        answer = self.exchange(forged)
        self.assertSuccess(answer)
        self.assertGreater(answer.get(Attr.LIFETIME), 0)
        self.assertEqual(len(self.server.allocations), 1)


class EvenPortQuotaTests(SynchronousTestCase):
    """
    CVE-2026-73215: an EVEN-PORT reservation holds a port like an
    allocation, so it counts against the user's quota: one user cannot
    take the relay pool through reservations.
    """

    def test_reservations_counted(self) -> None:
        from tests.test_server import CLIENT
        from txturn.testing import FakeRelayAllocator, RecordingClientChannel

        server = make_server(
            {"alice": "secret"}, realm=REALM, relays=FakeRelayAllocator(), user_quota=4
        )
        codes = []
        for port in range(6):
            channel, client = RecordingClientChannel(), StunClient("alice", "secret")
            address = (CLIENT[0], 20_000 + port)
            for _ in range(2):
                request = client.request(
                    Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True)]
                )
                server.datagram_received(channel, request, address)
                answer = client.learn(channel.sent.pop()[0])
                if not client.challenged(answer):
                    break
            codes.append(0 if answer.cls == Class.SUCCESS else answer.get(Attr.ERROR_CODE)[0])
        # Two allocations, each with its reserved port: four places.
        self.assertEqual(codes, [0, 0, 486, 486, 486, 486])
        self.assertEqual(server.state.table.places.held_by("alice"), 4)
