"""
Tests for L{txturn.core.server.TurnServer}, the sans-io core, driven with a
L{Clock}, a recording client channel and fake relays.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txturn.auth.credentials import (
    CredentialChain,
    RestApiCredentials,
    StaticCredentials,
    long_term_key,
    rest_api_password,
    userhash,
)
from txturn.core.allocation import MAX_KEPT_PEER_ATTRIBUTES
from txturn.core.counters import Counter
from txturn.testing import (
    FakeRelayAllocator,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
)
from txturn.wire.stun import (
    CHANNEL_DATA_FIRST_BYTE_MAX,
    CHANNEL_DATA_FIRST_BYTE_MIN,
    CHANNEL_HEADER_LENGTH,
    FAMILY_IPV4,
    FAMILY_IPV6,
    NONCE_COOKIE,
    Attr,
    Class,
    Message,
    Method,
    PasswordAlgorithm,
    decode,
    encode,
)

REALM = "example.org"
CLIENT = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 5000)
PEER2 = ("203.0.113.6", 6000)


class ServerTestCase(SynchronousTestCase):
    """
    A server with two static users and a REST secret, one client channel.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.relays = FakeRelayAllocator()
        self.credentials = CredentialChain(
            [
                StaticCredentials(REALM, {"alice": "secret", "bob": "hunter2"}),
                RestApiCredentials("rest-secret"),
            ]
        )
        self.server = make_server(
            realm=REALM,
            clock=self.clock,
            credentials=self.credentials,
            relays=self.relays,
            software="txturn test",
        )
        self.channel = RecordingClientChannel()
        self.client = StunClient("alice", "secret")

    def send(self, data: bytes, address: tuple[str, int] = CLIENT) -> None:
        self.server.datagram_received(self.channel, data, address)

    def exchange(
        self,
        data: bytes,
        address: tuple[str, int] = CLIENT,
        client: StunClient | None = None,
    ) -> Message:
        """
        Send one request; return the one response, decoded.
        """
        self.send(data, address)
        self.assertEqual(len(self.channel.sent), 1, "expected exactly one response")
        raw, to = self.channel.sent.pop()
        self.assertEqual(to, address)
        return (client or self.client).learn(raw)

    def authed(
        self,
        method: int,
        attributes: list[tuple[int, Any]] | None = None,
        address: tuple[str, int] = CLIENT,
        client: StunClient | None = None,
        **kwargs: Any,
    ) -> Message:
        """
        An authenticated request, after a 401 round trip if needed.
        """
        client = client or self.client
        if client.nonce is None:
            challenge = self.exchange(client.request(method, attributes), address, client)
            self.assertEqual(challenge.get(Attr.ERROR_CODE)[0], 401)
        return self.exchange(client.request(method, attributes, **kwargs), address, client)

    def fresh_nonce(self) -> None:
        """
        Get a new nonce, as a client does after a long pause.
        """
        self.exchange(self.client.request(Method.REFRESH, authenticate=False))

    def allocate(self, extra: list[tuple[int, Any]] | None = None, **kwargs: Any) -> Message:
        return self.authed(
            Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)] + (extra or []), **kwargs
        )

    def assertError(self, message: Message, code: int) -> None:
        self.assertEqual(message.cls, Class.ERROR)
        self.assertEqual(message.get(Attr.ERROR_CODE)[0], code)

    def assertSuccess(self, message: Message) -> None:
        self.assertEqual(message.cls, Class.SUCCESS, message.get(Attr.ERROR_CODE))

    @property
    def allocation(self) -> Any:
        return self.server.allocations[(self.channel, CLIENT)]


class BindingTests(ServerTestCase):
    """
    Binding requests need no credentials.
    """

    def test_binding(self) -> None:
        """
        A Binding request gets the client's address in XOR-MAPPED-ADDRESS,
        and SOFTWARE and FINGERPRINT (the request had one).
        """
        response = self.exchange(self.client.request(Method.BINDING, authenticate=False))
        self.assertSuccess(response)
        self.assertEqual(response.get(Attr.XOR_MAPPED_ADDRESS), CLIENT)
        self.assertEqual(response.get(Attr.SOFTWARE), "txturn test")
        self.assertTrue(response.has_fingerprint)

    def test_classic_binding(self) -> None:
        """
        An RFC 3489 Binding (no magic cookie) gets MAPPED-ADDRESS and its
        whole 128-bit transaction id back.
        """
        txid = b"0123456789abcdef"
        self.send(struct.pack("!HH16s", 0x0001, 0, txid))
        raw, _ = self.channel.sent.pop()
        self.assertEqual(raw[4:20], txid)
        response = decode(raw)
        self.assertEqual(response.cls, Class.SUCCESS)
        self.assertEqual(response.get(Attr.MAPPED_ADDRESS), CLIENT)

    def test_unknown_required_attribute(self) -> None:
        """
        An unknown comprehension-required attribute gets 420 listing it.
        """
        message = Message(Method.BINDING, Class.REQUEST, os.urandom(12))
        message.add_raw(0x0024, b"\x00\x00\x00\x01")
        message.add_raw(0xC001, b"opt")
        response = self.exchange(encode(message))
        self.assertError(response, 420)
        self.assertEqual(response.get(Attr.UNKNOWN_ATTRIBUTES), [0x0024])

    def test_garbage_is_dropped(self) -> None:
        """
        Malformed datagrams and responses sent to the server get no answer.
        """
        for data in [b"", b"\x00", b"\x00\x01\x00\x04" + b"x" * 16, b"\xff" * 40, b"\x40\x00"]:
            self.send(data)
        response = Message(Method.BINDING, Class.SUCCESS, os.urandom(12))
        self.send(encode(response))
        self.assertEqual(self.channel.sent, [])

    def test_unknown_method(self) -> None:
        """
        A request for a method the server does not know gets 400 (methods
        above 0x0FF put the first byte outside STUN's 0-3 and are not
        STUN at all on a multiplexed port).
        """
        self.assertError(self.exchange(self.client.request(0x0FF, authenticate=False)), 400)


class AuthenticationTests(ServerTestCase):
    """
    Long-term credentials (RFC 8489 section 9.2).
    """

    def test_challenge(self) -> None:
        """
        A request without MESSAGE-INTEGRITY gets 401 with REALM, a NONCE
        carrying the RFC 8489 cookie, and PASSWORD-ALGORITHMS; no state
        is kept and no relay opened.
        """
        response = self.exchange(
            self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        )
        self.assertError(response, 401)
        self.assertEqual(response.get(Attr.REALM), REALM)
        self.assertTrue(response.get(Attr.NONCE).startswith(NONCE_COOKIE))
        self.assertEqual(
            response.get(Attr.PASSWORD_ALGORITHMS),
            [(PasswordAlgorithm.SHA256, b""), (PasswordAlgorithm.MD5, b"")],
        )
        self.assertIsNone(response.raw_value(Attr.MESSAGE_INTEGRITY))
        self.assertEqual(self.server.allocations, {})
        self.assertEqual(self.relays.opened, [])

    def test_wrong_password_and_unknown_user_alike(self) -> None:
        """
        A wrong password and an unknown user both get 401 with the same
        attribute types, so a client cannot tell which it was.
        """
        self.allocate()  # learn a nonce
        answers = []
        for name, password in [("alice", "wrong"), ("mallory", "secret")]:
            client = StunClient(name, password)
            client.realm, client.nonce = self.client.realm, self.client.nonce
            response = self.exchange(
                client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                address=("198.51.100.7", 40001),
                client=client,
            )
            self.assertError(response, 401)
            answers.append([t for t, _ in response.attributes])
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(len(self.server.allocations), 1)

    def test_missing_credentials(self) -> None:
        """
        MESSAGE-INTEGRITY without USERNAME, REALM or NONCE is a 400.
        """
        message = Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12))
        message.add(Attr.REQUESTED_TRANSPORT, 17)
        message.add(Attr.USERNAME, "alice")
        self.assertError(self.exchange(encode(message, b"k" * 16)), 400)

    def test_stale_nonce(self) -> None:
        """
        After the nonce lifetime the server answers 438 with a fresh nonce,
        which then works.
        """
        self.assertSuccess(self.allocate([(Attr.LIFETIME, 3600)]))
        old = self.client.nonce
        self.clock.advance(601)
        response = self.authed(Method.REFRESH)
        self.assertError(response, 438)
        self.assertNotEqual(self.client.nonce, old)
        self.assertEqual(response.get(Attr.REALM), REALM)
        self.assertSuccess(self.authed(Method.REFRESH))

    def test_nonce_bound_to_address(self) -> None:
        """
        A nonce issued to one IP address is stale from another.
        """
        self.allocate()
        response = self.exchange(
            self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
            address=("198.51.100.99", 40000),
        )
        self.assertError(response, 438)

    def test_forged_nonce(self) -> None:
        """
        A nonce the server did not issue is stale.
        """
        self.allocate()
        self.client.nonce = NONCE_COOKIE + "wAAA" + "A" * 27
        response = self.authed(Method.REFRESH)
        self.assertError(response, 438)

    def test_sha256(self) -> None:
        """
        A client that picks SHA-256 from PASSWORD-ALGORITHMS and signs
        with MESSAGE-INTEGRITY-SHA256 gets a response signed the same way.
        """
        self.client = StunClient("alice", "secret", algorithm=PasswordAlgorithm.SHA256)
        response = self.allocate(sha256=True)
        self.assertSuccess(response)
        self.assertIsNotNone(response.integrity_sha256_offset)
        self.assertIsNone(response.integrity_offset)
        key = long_term_key("alice", REALM, "secret", PasswordAlgorithm.SHA256)
        self.assertTrue(response.check_integrity(key))

    def test_algorithm_mismatch(self) -> None:
        """
        PASSWORD-ALGORITHMS that differ from what was offered, or
        PASSWORD-ALGORITHM without it, is a 400.
        """
        self.allocate()
        self.client.algorithm = PasswordAlgorithm.SHA256
        self.client.algorithms = [(PasswordAlgorithm.SHA256, b"")]
        self.assertError(self.authed(Method.REFRESH, sha256=True), 400)

    def test_userhash(self) -> None:
        """
        USERHASH in place of USERNAME identifies a static user.
        """
        self.allocate()
        message = Message(Method.REFRESH, Class.REQUEST, os.urandom(12))
        message.add(Attr.USERHASH, userhash("alice", REALM))
        message.add(Attr.REALM, REALM)
        message.add(Attr.NONCE, self.client.nonce)
        response = self.exchange(encode(message, self.client.key))
        self.assertSuccess(response)

    def test_rest_api(self) -> None:
        """
        TURN REST API credentials work beside static users until their
        timestamp passes.
        """
        username = f"{int(self.clock.seconds()) + 60}:carol"
        self.client = StunClient(username, rest_api_password("rest-secret", username))
        self.assertSuccess(self.allocate())
        self.assertSuccess(self.authed(Method.REFRESH))
        self.clock.advance(61)
        self.assertError(self.authed(Method.REFRESH), 401)

    def test_rest_api_rotation(self) -> None:
        """
        With two secrets (a rotation in progress) names signed with
        either work; a name signed with a third secret does not.
        """
        self.credentials.sources[1] = RestApiCredentials(["old-secret", "new-secret"])
        for i, secret in enumerate(["old-secret", "new-secret", "other"]):
            username = f"{int(self.clock.seconds()) + 60}:user{i}"
            self.client = StunClient(username, rest_api_password(secret, username))
            response = self.allocate(address=("198.51.100.1", 7000 + i))
            if secret == "other":
                self.assertError(response, 401)
            else:
                self.assertSuccess(response)

    def test_other_user_allocation(self) -> None:
        """
        A request on a 5-tuple allocated by another user gets 441.
        """
        self.allocate()
        bob = StunClient("bob", "hunter2")
        bob.realm, bob.nonce = self.client.realm, self.client.nonce
        self.assertError(self.exchange(bob.request(Method.REFRESH), client=bob), 441)


class AllocateTests(ServerTestCase):
    """
    Allocate, Refresh and allocation lifetimes.
    """

    def test_allocate(self) -> None:
        """
        A successful Allocate returns the relayed and mapped addresses and
        a lifetime of 600 s, signed with the user's key.
        """
        response = self.allocate()
        self.assertSuccess(response)
        self.assertEqual(response.get(Attr.XOR_RELAYED_ADDRESS), ("192.0.2.1", 50000))
        self.assertEqual(response.get(Attr.XOR_MAPPED_ADDRESS), CLIENT)
        self.assertEqual(response.get(Attr.LIFETIME), 600)
        self.assertTrue(response.check_integrity(self.client.key))

    def test_missing_transport(self) -> None:
        """
        Allocate without REQUESTED-TRANSPORT is a 400.
        """
        self.assertError(self.authed(Method.ALLOCATE), 400)

    def test_unsupported_transport(self) -> None:
        """
        Any transport but UDP gets 442.
        """
        self.assertError(self.authed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 99)]), 442)
        self.assertEqual(self.relays.opened, [])

    def test_retransmission(self) -> None:
        """
        A retransmitted Allocate gets the very same success response;
        another Allocate on the same 5-tuple gets 437.
        """
        txid = os.urandom(12)
        self.authed(Method.REFRESH)  # learn the nonce
        request = self.client.request(
            Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], transaction_id=txid
        )
        self.send(request)
        first = self.channel.pop()
        self.send(request)
        self.assertEqual(self.channel.pop(), first)
        self.assertEqual(len(self.relays.opened), 1)
        self.assertError(self.allocate(), 437)

    def test_lifetimes(self) -> None:
        """
        The lifetime is the requested one, capped at 3600 s and never
        below the 600 s default.
        """
        for port, (requested, granted) in enumerate([(10, 600), (1200, 1200), (99999, 3600)]):
            address = ("198.51.100.7", port)
            response = self.allocate([(Attr.LIFETIME, requested)], address=address)
            self.assertEqual(response.get(Attr.LIFETIME), granted)

    def test_expiry(self) -> None:
        """
        An allocation expires after its lifetime: it is forgotten, its
        relay closed and no timer is left behind.
        """
        self.allocate()
        relay = self.relays.opened[0]
        self.clock.advance(599)
        self.assertIn((self.channel, CLIENT), self.server.allocations)
        self.clock.advance(1)
        self.assertEqual(self.server.allocations, {})
        self.assertTrue(relay.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refresh(self) -> None:
        """
        Refresh extends the lifetime from now.
        """
        self.allocate()
        self.clock.advance(500)
        response = self.authed(Method.REFRESH, [(Attr.LIFETIME, 900)])
        self.assertEqual(response.get(Attr.LIFETIME), 900)
        self.clock.advance(899)
        self.assertEqual(len(self.server.allocations), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.server.allocations), 0)

    def test_shorter_refresh(self) -> None:
        """
        A Refresh to a shorter lifetime than is left ends the allocation
        at the new time, not the old.
        """
        self.allocate([(Attr.LIFETIME, 3000)])
        self.authed(Method.REFRESH, [(Attr.LIFETIME, 700)])
        self.clock.advance(699)
        self.assertEqual(len(self.server.allocations), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.server.allocations), 0)

    def test_one_timer(self) -> None:
        """
        An allocation holds one timer, whatever it has permissions and
        channels for (one per lifetime cost some 340 bytes each), and each
        still ends on time: the permissions 300 s after they were made or
        refreshed, the channel 600 s after its bind, the allocation at
        its 1,200.
        """
        self.allocate([(Attr.LIFETIME, 1200)])
        peers = [("203.0.113.%d" % i, 9) for i in range(1, 4)]
        self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, p) for p in peers])
        self.clock.advance(100)
        self.authed(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peers[0])]
        )
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        [allocation] = self.server.allocations.values()
        self.clock.advance(199.5)
        self.assertEqual(len(allocation.permissions), 3)
        self.clock.advance(0.5)
        # The channel's bind refreshed its peer's permission at 100 s.
        self.assertEqual(list(allocation.permissions), [peers[0][0]])
        self.clock.advance(100)
        self.assertEqual(allocation.permissions, {})
        self.assertEqual(list(allocation.channels), [0x4000])
        self.clock.advance(299.5)
        self.assertEqual(list(allocation.channels), [0x4000])
        self.clock.advance(0.5)
        self.assertEqual(allocation.channels, {})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(499)
        self.assertEqual(len(self.server.allocations), 1)
        self.clock.advance(1)
        self.assertEqual(self.server.allocations, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refresh_zero_deletes(self) -> None:
        """
        Refresh with LIFETIME 0 deletes the allocation at once.
        """
        self.allocate()
        response = self.authed(Method.REFRESH, [(Attr.LIFETIME, 0)])
        self.assertSuccess(response)
        self.assertEqual(response.get(Attr.LIFETIME), 0)
        self.assertEqual(self.server.allocations, {})
        self.assertTrue(self.relays.opened[0].closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refresh_without_allocation(self) -> None:
        """
        Refresh with no allocation on the 5-tuple is a 437.
        """
        self.assertError(self.authed(Method.REFRESH), 437)

    def test_refresh_wrong_family(self) -> None:
        """
        Refresh naming a family the allocation lacks is a 443.
        """
        self.allocate()
        self.assertError(
            self.authed(Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)]), 443
        )

    def test_capacity(self) -> None:
        """
        When the relay port range is exhausted, Allocate gets 508.
        """
        self.relays.capacity = 1
        self.allocate()
        self.assertError(self.allocate(address=("198.51.100.7", 1)), 508)

    def test_address_family(self) -> None:
        """
        REQUESTED-ADDRESS-FAMILY IPv6 without IPv6 relays, or an unknown
        family, gets 440; with an IPv6 relay address it gets an IPv6 relay.
        """
        self.assertError(self.allocate([(Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)]), 440)
        self.assertError(self.allocate([(Attr.REQUESTED_ADDRESS_FAMILY, 3)]), 440)
        self.relays.hosts[FAMILY_IPV6] = "2001:db8::1"
        self.relays.families = frozenset(self.relays.hosts)
        response = self.allocate([(Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)])
        self.assertEqual(response.get(Attr.XOR_RELAYED_ADDRESS)[0], "2001:db8::1")

    def test_even_port_reservation(self) -> None:
        """
        EVEN-PORT with R set gives an even port and a RESERVATION-TOKEN
        that a second Allocate redeems for the next port up.
        """
        response = self.allocate([(Attr.EVEN_PORT, True)])
        port = response.get(Attr.XOR_RELAYED_ADDRESS)[1]
        self.assertEqual(port % 2, 0)
        token = response.get(Attr.RESERVATION_TOKEN)
        self.assertEqual(len(token), 8)
        second = self.allocate([(Attr.RESERVATION_TOKEN, token)], address=("198.51.100.7", 40002))
        self.assertEqual(second.get(Attr.XOR_RELAYED_ADDRESS)[1], port + 1)
        self.assertError(
            self.allocate([(Attr.RESERVATION_TOKEN, token)], address=("198.51.100.7", 40003)),
            508,
        )

    def test_reservation_expires(self) -> None:
        """
        An unredeemed reservation is released after 30 s.
        """
        self.allocate([(Attr.EVEN_PORT, True)])
        reserved = self.relays.opened[1]
        self.clock.advance(30)
        self.assertTrue(reserved.closed)

    def test_token_with_even_port(self) -> None:
        """
        RESERVATION-TOKEN together with EVEN-PORT is a 400.
        """
        response = self.allocate([(Attr.RESERVATION_TOKEN, b"t" * 8), (Attr.EVEN_PORT, False)])
        self.assertError(response, 400)

    def test_dont_fragment(self) -> None:
        """
        DONT-FRAGMENT sets the DF bit on the relay.
        """
        self.allocate([(Attr.DONT_FRAGMENT, True)])
        self.assertTrue(self.relays.opened[0].dont_fragment)

    def test_unknown_attribute_after_auth(self) -> None:
        """
        An authenticated Allocate with an unknown comprehension-required
        attribute gets a signed 420 and no allocation.
        """
        self.authed(Method.REFRESH)
        message = Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12))
        message.add(Attr.REQUESTED_TRANSPORT, 17)
        message.add_raw(0x7777, b"")
        message.add(Attr.USERNAME, "alice")
        message.add(Attr.REALM, REALM)
        message.add(Attr.NONCE, self.client.nonce)
        response = self.exchange(encode(message, self.client.key))
        self.assertError(response, 420)
        self.assertEqual(response.get(Attr.UNKNOWN_ATTRIBUTES), [0x7777])
        self.assertTrue(response.check_integrity(self.client.key))
        self.assertEqual(self.server.allocations, {})

    def test_malformed_value(self) -> None:
        """
        A well-framed request with a malformed attribute value gets 400.
        """
        self.authed(Method.REFRESH)
        message = Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12))
        message.add(Attr.REQUESTED_TRANSPORT, 17)
        message.add_raw(Attr.LIFETIME, b"\x00\x00\x01")
        message.add(Attr.USERNAME, "alice")
        message.add(Attr.REALM, REALM)
        message.add(Attr.NONCE, self.client.nonce)
        self.assertError(self.exchange(encode(message, self.client.key)), 400)
        self.assertEqual(self.server.allocations, {})

    def test_shutdown(self) -> None:
        """
        shutdown() deletes every allocation and reservation, closing their
        relays and cancelling every timer.
        """
        self.allocate([(Attr.EVEN_PORT, True)])
        self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        self.server.shutdown()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(all(r.closed for r in self.relays.opened))
        self.assertEqual(self.server.allocations, {})


class PermissionTests(ServerTestCase):
    """
    CreatePermission, Send and Data indications.
    """

    def setUp(self) -> None:
        super().setUp()
        self.allocate()
        self.relay = self.relays.opened[0]

    def send_indication(self, peer: tuple[str, int], data: bytes) -> None:
        self.send(
            self.client.request(
                Method.SEND,
                [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, data)],
                authenticate=False,
                cls=Class.INDICATION,
            )
        )

    def test_permission_and_send(self) -> None:
        """
        After CreatePermission (two peers at once), Send indications reach
        those peers; others are dropped.
        """
        response = self.authed(
            Method.CREATE_PERMISSION,
            [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.XOR_PEER_ADDRESS, PEER2)],
        )
        self.assertSuccess(response)
        self.send_indication(PEER, b"hello")
        self.send_indication(("203.0.113.6", 1), b"any port")
        self.send_indication(("203.0.113.77", 1), b"no permission")
        self.assertEqual(self.relay.sent, [(b"hello", PEER), (b"any port", ("203.0.113.6", 1))])
        self.assertEqual(self.channel.sent, [])

    def test_data_indication(self) -> None:
        """
        Data from a permitted peer reaches the client as a Data indication;
        data from anyone else is dropped.
        """
        self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        self.relay.receiver(b"from a stranger", ("203.0.113.99", 1))
        self.assertEqual(self.channel.sent, [])
        self.relay.receiver(b"payload", PEER)
        indication = decode(self.channel.pop())
        self.assertEqual((indication.method, indication.cls), (Method.DATA, Class.INDICATION))
        self.assertEqual(indication.get(Attr.XOR_PEER_ADDRESS), PEER)
        self.assertEqual(indication.get(Attr.DATA), b"payload")
        # From many ports of the permitted host: each told apart, and what
        # the allocation keeps per peer stays bounded.
        ids = set()
        for port in range(1, 200):
            self.relay.receiver(b"p", (PEER[0], port))
            indication = decode(self.channel.pop())
            self.assertEqual(indication.get(Attr.XOR_PEER_ADDRESS), (PEER[0], port))
            ids.add(indication.transaction_id)
        self.assertEqual(len(ids), 199)
        allocation = next(iter(self.server.allocations.values()))
        self.assertLessEqual(len(allocation._peer_attributes), MAX_KEPT_PEER_ATTRIBUTES)

    def test_permission_expires(self) -> None:
        """
        A permission lasts 300 s unless refreshed.
        """
        self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        self.clock.advance(299)
        self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        self.clock.advance(299)
        self.send_indication(PEER, b"still")
        self.clock.advance(1)
        self.send_indication(PEER, b"gone")
        self.assertEqual(self.relay.sent, [(b"still", PEER)])

    def test_missing_peer(self) -> None:
        """
        CreatePermission without XOR-PEER-ADDRESS is a 400.
        """
        self.assertError(self.authed(Method.CREATE_PERMISSION), 400)

    def test_loopback_refused(self) -> None:
        """
        Loopback and unspecified peers, in any spelling, get 403 and
        install nothing, even when listed with an allowed peer.
        """
        for bad in ["127.0.0.1", "0.0.0.0", "127.1.2.3"]:
            response = self.authed(
                Method.CREATE_PERMISSION,
                [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.XOR_PEER_ADDRESS, (bad, 1))],
            )
            self.assertError(response, 403)
        self.assertEqual(self.allocation.permissions, {})

    def test_family_mismatch(self) -> None:
        """
        An IPv6 peer on an IPv4 relay gets 443.
        """
        response = self.authed(
            Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, ("2001:db8::5", 1))]
        )
        self.assertError(response, 443)


class ChannelTests(ServerTestCase):
    """
    ChannelBind and ChannelData.
    """

    def setUp(self) -> None:
        super().setUp()
        self.allocate([(Attr.LIFETIME, 3600)])
        self.relay = self.relays.opened[0]

    def bind(self, channel: int, peer: tuple[str, int]) -> Message:
        return self.authed(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)]
        )

    def test_channel_data_both_ways(self) -> None:
        """
        After ChannelBind, ChannelData from the client reaches the peer,
        and the peer's datagrams come back as ChannelData (unpadded on UDP).
        """
        self.assertSuccess(self.bind(0x4001, PEER))
        self.send(b"\x40\x01\x00\x03abc\x00")
        self.assertEqual(self.relay.sent, [(b"abc", PEER)])
        self.relay.receiver(b"xyz", PEER)
        self.assertEqual(self.channel.pop(), b"\x40\x01\x00\x03xyz")

    def test_channel_range_edges(self) -> None:
        """
        ChannelData on the first and last channel numbers is relayed: the
        hot path's first-byte test agrees with the channel range and with
        the codec's constants.
        """
        self.assertEqual(
            (CHANNEL_DATA_FIRST_BYTE_MIN, CHANNEL_DATA_FIRST_BYTE_MAX, CHANNEL_HEADER_LENGTH),
            (0x40, 0x7F, 4),
        )
        self.assertSuccess(self.bind(0x4000, PEER))
        self.assertSuccess(self.bind(0x7FFF, PEER2))
        self.send(b"\x40\x00\x00\x01a\x00\x00\x00")
        self.send(b"\x7f\xff\x00\x00")
        self.assertEqual(self.relay.sent, [(b"a", PEER), (b"", PEER2)])

    def test_channel_data_checks(self) -> None:
        """
        ChannelData on an unbound channel, or shorter than its length
        field, is dropped.
        """
        self.bind(0x4001, PEER)
        self.send(b"\x40\x02\x00\x01a")
        self.send(b"\x40\x01\x00\x09abc")
        self.send(b"\x40\x01\x00\x01a", address=("198.51.100.7", 1))
        self.assertEqual(self.relay.sent, [])

    def test_invalid_numbers(self) -> None:
        """
        Channel numbers outside 0x4000-0x7FFF, or a missing one, get 400.
        """
        self.assertError(self.bind(0x3FFF, PEER), 400)
        self.assertError(self.bind(0x8000, PEER), 400)
        self.assertError(self.authed(Method.CHANNEL_BIND, [(Attr.XOR_PEER_ADDRESS, PEER)]), 400)
        self.assertError(self.authed(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4001)]), 400)

    def test_rebinding_rules(self) -> None:
        """
        A channel bound to one peer cannot be bound to another, nor the
        peer to another channel; rebinding the same pair refreshes it.
        """
        self.assertSuccess(self.bind(0x4001, PEER))
        self.assertError(self.bind(0x4001, PEER2), 400)
        self.assertError(self.bind(0x4002, PEER), 400)
        self.clock.advance(500)
        self.assertSuccess(self.bind(0x4001, PEER))
        self.clock.advance(500)
        self.assertEqual({c: p for c, (p, _) in self.allocation.channels.items()}, {0x4001: PEER})

    def test_channel_installs_permission(self) -> None:
        """
        ChannelBind installs a permission for the peer's IP.
        """
        self.bind(0x4001, PEER)
        self.assertIn(PEER[0], self.allocation.permissions)

    def test_channel_expiry_and_cooldown(self) -> None:
        """
        A channel expires after 600 s; for 300 s more neither its number
        nor its peer may be bound to anything else, then both are free.
        """
        self.bind(0x4001, PEER)
        self.clock.advance(600)
        self.fresh_nonce()
        self.assertEqual(self.allocation.channels, {})
        self.send(b"\x40\x01\x00\x01a")
        self.assertEqual(self.relay.sent, [])
        self.assertError(self.bind(0x4001, PEER2), 400)
        self.assertError(self.bind(0x4002, PEER), 400)
        self.clock.advance(300)
        self.fresh_nonce()
        self.assertSuccess(self.bind(0x4001, PEER2))
        self.assertSuccess(self.bind(0x4002, PEER))

    def test_same_pair_after_expiry(self) -> None:
        """
        The expired pair itself may be bound again at once.
        """
        self.bind(0x4001, PEER)
        self.clock.advance(600)
        self.fresh_nonce()
        self.assertSuccess(self.bind(0x4001, PEER))

    def test_forbidden_peer(self) -> None:
        """
        ChannelBind to a loopback peer gets 403.
        """
        self.assertError(self.bind(0x4001, ("127.0.0.1", 9)), 403)
        self.assertEqual(self.allocation.channels, {})


PEER6 = ("2001:db8::5", 7000)


class DualAllocationTests(ServerTestCase):
    """
    Address families and dual allocations (RFC 8656 sections 7.2 and 8).
    """

    def setUp(self) -> None:
        super().setUp()
        self.relays.hosts[FAMILY_IPV6] = "2001:db8::1"
        self.relays.families = frozenset(self.relays.hosts)

    def test_dual(self) -> None:
        """
        ADDITIONAL-ADDRESS-FAMILY IPv6 gets an IPv4 and an IPv6 relay, two
        XOR-RELAYED-ADDRESS attributes, and peers of both families work.
        """
        response = self.allocate([(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)])
        self.assertSuccess(response)
        relayed = response.get_all(Attr.XOR_RELAYED_ADDRESS)
        self.assertEqual([host for host, _ in relayed], ["192.0.2.1", "2001:db8::1"])
        self.assertIsNone(response.get(Attr.ADDRESS_ERROR_CODE))
        self.assertSuccess(
            self.authed(
                Method.CREATE_PERMISSION,
                [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.XOR_PEER_ADDRESS, PEER6)],
            )
        )
        v4, v6 = self.relays.opened
        self.send(
            self.client.request(
                Method.SEND,
                [(Attr.XOR_PEER_ADDRESS, PEER6), (Attr.DATA, b"six")],
                authenticate=False,
                cls=Class.INDICATION,
            )
        )
        self.assertEqual((v4.sent, v6.sent), ([], [(b"six", PEER6)]))

    def test_partial(self) -> None:
        """
        When one family cannot be had, the other is still allocated and
        ADDRESS-ERROR-CODE says which and why.
        """
        del self.relays.hosts[FAMILY_IPV6]
        self.relays.families = frozenset(self.relays.hosts)
        response = self.allocate([(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)])
        self.assertSuccess(response)
        self.assertEqual(len(response.get_all(Attr.XOR_RELAYED_ADDRESS)), 1)
        self.assertEqual(
            response.get(Attr.ADDRESS_ERROR_CODE),
            (FAMILY_IPV6, 440, "Address Family not Supported"),
        )

    def test_bad_combinations(self) -> None:
        """
        The 400 cases of RFC 8656 section 7.2: both family attributes,
        ADDITIONAL-ADDRESS-FAMILY IPv4, an EVEN-PORT reservation with it,
        and RESERVATION-TOKEN with a family attribute.
        """
        cases: list[list[tuple[int, Any]]] = [
            [
                (Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4),
                (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6),
            ],
            [(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV4)],
            [(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6), (Attr.EVEN_PORT, True)],
            [(Attr.RESERVATION_TOKEN, b"t" * 8), (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)],
            [(Attr.RESERVATION_TOKEN, b"t" * 8), (Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4)],
        ]
        for attrs in cases:
            self.assertError(self.allocate(attrs), 400)
        self.assertEqual(self.relays.opened, [])

    def test_refresh_one_family(self) -> None:
        """
        Refresh with REQUESTED-ADDRESS-FAMILY and LIFETIME 0 deletes just
        that family's relay with its permissions; the other family keeps
        relaying, and a Refresh for the deleted family then gets 443.
        """
        self.allocate([(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6), (Attr.LIFETIME, 3600)])
        self.authed(
            Method.CREATE_PERMISSION,
            [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.XOR_PEER_ADDRESS, PEER6)],
        )
        v4, v6 = self.relays.opened
        response = self.authed(
            Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6), (Attr.LIFETIME, 0)]
        )
        self.assertSuccess(response)
        self.assertTrue(v6.closed)
        self.assertFalse(v4.closed)
        self.assertEqual(list(self.allocation.permissions), [PEER[0]])
        self.assertError(
            self.authed(Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)]), 443
        )
        self.assertError(
            self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER6)]), 443
        )

    def test_families_expire_separately(self) -> None:
        """
        Each family has its own lifetime: refreshing one lets the other
        expire, and the allocation ends with the last.
        """
        self.allocate([(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)])
        self.clock.advance(500)
        self.authed(
            Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4), (Attr.LIFETIME, 600)]
        )
        self.clock.advance(100)
        v4, v6 = self.relays.opened
        self.assertEqual((v4.closed, v6.closed), (False, True))
        self.clock.advance(500)
        self.assertTrue(v4.closed)
        self.assertEqual(self.server.allocations, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ipv6_only_server(self) -> None:
        """
        Without REQUESTED-ADDRESS-FAMILY on a server with no IPv4 relay,
        the relay takes the family of the client's own address.
        """
        del self.relays.hosts[FAMILY_IPV4]
        self.relays.families = frozenset(self.relays.hosts)
        client6 = ("2001:db8::99", 4000)
        response = self.allocate(address=client6)
        self.assertEqual(response.get(Attr.XOR_RELAYED_ADDRESS)[0], "2001:db8::1")
        self.assertEqual(response.get(Attr.XOR_MAPPED_ADDRESS), client6)

    def test_channel_to_ipv6_peer(self) -> None:
        """
        A channel bound to an IPv6 peer on a dual allocation uses the IPv6
        relay both ways.
        """
        self.allocate([(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)])
        response = self.authed(
            Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4005), (Attr.XOR_PEER_ADDRESS, PEER6)]
        )
        self.assertSuccess(response)
        v4, v6 = self.relays.opened
        self.send(b"\x40\x05\x00\x02hi")
        self.assertEqual(v6.sent, [(b"hi", PEER6)])
        v6.receiver(b"yo", PEER6)
        self.assertEqual(self.channel.pop(), b"\x40\x05\x00\x02yo")

    def test_icmp(self) -> None:
        """
        An ICMP error about a permitted peer becomes a Data indication
        with XOR-PEER-ADDRESS and ICMP and no DATA; for other peers,
        nothing.
        """
        self.allocate()
        self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        relay = self.relays.opened[0]
        relay.icmp_receiver(("203.0.113.200", 1), 3, 3, 0)
        self.assertEqual(self.channel.sent, [])
        relay.icmp_receiver(PEER, 3, 4, 1400)
        indication = decode(self.channel.pop())
        self.assertEqual((indication.method, indication.cls), (Method.DATA, Class.INDICATION))
        self.assertEqual(indication.get(Attr.XOR_PEER_ADDRESS), PEER)
        self.assertEqual(indication.get(Attr.ICMP), (3, 4, 1400))
        self.assertIsNone(indication.get(Attr.DATA))


class AlternateServerTests(SynchronousTestCase):
    """
    RFC 8489 section 10's ALTERNATE-SERVER: Allocates redirected, in turn,
    to the other servers of a fleet.
    """

    def make(self, **config: Any) -> None:
        self.server = make_server(
            realm=REALM,
            alternate_servers=(("192.0.2.10", 3478), ("2001:db8::10", 3479)),
            **config,
        )
        self.channel = RecordingClientChannel()

    def allocate(self, port: int) -> Message:
        return authenticated_request(
            self.server,
            self.channel,
            StunClient("u", "p"),
            Method.ALLOCATE,
            [(Attr.REQUESTED_TRANSPORT, 17)],
            ("198.51.100.1", port),
        )

    def test_round_robin(self) -> None:
        """
        Always redirecting: the first Allocate, which has no credentials
        yet, gets 300 with the alternates in turn, unsigned and without a
        nonce (a browser carries a nonce to the alternate and gives up on
        its 438), and no allocation is made.
        """
        self.make()
        answers = [self.allocate(port) for port in range(1, 4)]
        self.assertEqual([a.get(Attr.ERROR_CODE)[0] for a in answers], [300] * 3)
        self.assertEqual(
            [a.get(Attr.ALTERNATE_SERVER) for a in answers],
            [("192.0.2.10", 3478), ("2001:db8::10", 3479), ("192.0.2.10", 3478)],
        )
        self.assertIsNone(answers[0].integrity_offset)
        self.assertIsNone(answers[0].get(Attr.NONCE))
        self.assertEqual(len(self.server.allocations), 0)
        self.assertEqual(self.server.counters[Counter.REDIRECTED], 3)

    def test_authenticated_signed(self) -> None:
        """
        An Allocate that comes with credentials (the client had a nonce
        from another request) is redirected too, and its 300 is signed, as
        RFC 8489 asks of an answer to an authenticated request.
        """
        self.make()
        client = StunClient("u", "p")
        address = ("198.51.100.1", 7)
        refresh = authenticated_request(
            self.server, self.channel, client, Method.REFRESH, [], address
        )
        self.assertEqual(refresh.get(Attr.ERROR_CODE)[0], 437)
        answer = authenticated_request(
            self.server,
            self.channel,
            client,
            Method.ALLOCATE,
            [(Attr.REQUESTED_TRANSPORT, 17)],
            address,
        )
        self.assertEqual(answer.get(Attr.ERROR_CODE)[0], 300)
        self.assertIsNotNone(answer.integrity_offset)

    def test_limited_per_source(self) -> None:
        """
        Unsigned 300s count against the source's share of unauthenticated
        answers, as 401s do: past it, silence.
        """
        self.make(challenge_rate=1.0, challenge_burst=2)
        client = StunClient("u", "p")
        for _ in range(3):
            self.server.datagram_received(
                self.channel,
                client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                ("198.51.100.1", 7),
            )
        self.assertEqual(len(self.channel.sent), 2)
        self.assertEqual(self.server.counters[Counter.CHALLENGES_LIMITED], 1)

    def test_pair_not_redirected(self) -> None:
        """
        The second half of a reserved pair is not redirected before
        authentication (the call is being set up here): it is challenged.
        """
        self.make()
        client = StunClient("u", "p")
        self.server.datagram_received(
            self.channel,
            client.request(
                Method.ALLOCATE,
                [(Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, b"12345678")],
            ),
            ("198.51.100.1", 7),
        )
        self.assertEqual(decode(self.channel.pop()).get(Attr.ERROR_CODE)[0], 401)

    def test_over_load(self) -> None:
        """
        With a load threshold, the server takes allocations until it holds
        that many, then redirects; while draining it always redirects.
        """
        self.make(alternate_load=2)
        codes = [self.allocate(port).get(Attr.ERROR_CODE) for port in range(1, 4)]
        self.assertEqual([c and c[0] for c in codes], [None, None, 300])
        drained = make_server(
            realm=REALM, alternate_servers=(("192.0.2.10", 3478),), alternate_load=100
        )
        drained.start_draining()
        self.server = drained
        self.assertEqual(self.allocate(9).get(Attr.ERROR_CODE)[0], 300)


class DrainTests(ServerTestCase):
    """
    What a drain refuses, and what it must not.
    """

    def test_pair_completed(self) -> None:
        """
        While draining, a plain Allocate gets 508, but one redeeming the
        reservation of an EVEN-PORT pair granted before the drain gets its
        port: refusing it would break a call already being set up (RTCP
        beside its RTP).
        """
        first = self.allocate([(Attr.EVEN_PORT, True)])
        token = first.get(Attr.RESERVATION_TOKEN)
        self.server.start_draining()
        self.assertError(self.allocate(address=("198.51.100.7", 40005)), 508)
        second = self.allocate([(Attr.RESERVATION_TOKEN, token)], address=("198.51.100.7", 40002))
        self.assertEqual(
            second.get(Attr.XOR_RELAYED_ADDRESS)[1], first.get(Attr.XOR_RELAYED_ADDRESS)[1] + 1
        )
