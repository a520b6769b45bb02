"""
Tests for L{txturn.wire.stun}: the RFC 5769 and RFC 8489 test vectors byte for
byte, attribute round trips, and malformed input.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txturn.auth.credentials import long_term_key, userhash
from txturn.wire import stun
from txturn.wire.stun import (
    ATTRIBUTES,
    Attr,
    Class,
    Message,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    decode,
    encode,
    send_indication_parts,
)

# RFC 5769 section 2.1: sample request (short-term; password below).
REQUEST_5769 = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
PASSWORD_5769 = b"VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 section 2.2: IPv4 response.
RESPONSE_IPV4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)

# RFC 5769 section 2.3: IPv6 response.
RESPONSE_IPV6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

USERNAME_8489 = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
NONCE_5769 = "f//499k954d6OL34oL9FSTvy64sA"

# RFC 8489 Appendix B.1 as corrected by erratum 6268: USERHASH,
# PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256.
NONCE_8489 = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"
REQUEST_8489 = bytes.fromhex(
    "000100902112a44278ad3433c6ad72c029da412e"
    "001e0020"
    "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    "00150029" + NONCE_8489.encode().hex() + "000000"
    "0014000b6578616d706c652e6f726700"
    "001d000400020000"
    "001c0020"
    "b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65"
)


def long_term_request() -> bytes:
    """
    RFC 5769 section 2.4, assembled from its attributes.
    """
    return bytes.fromhex(
        "000100602112a44278ad3433c6ad72c029da412e"
        "00060012e3839ee38388e383aae38383e382afe382b90000"
        "0015001c" + NONCE_5769.encode().hex() + "0014000b6578616d706c652e6f726700"
        "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
    )


class VectorTests(SynchronousTestCase):
    """
    The published test vectors decode, verify and re-encode exactly.
    """

    def test_request_5769(self) -> None:
        """
        The RFC 5769 request decodes with its attributes in order, its
        MESSAGE-INTEGRITY verifies with the short-term password, and its
        FINGERPRINT was checked.
        """
        message = decode(REQUEST_5769)
        self.assertEqual((message.method, message.cls), (Method.BINDING, Class.REQUEST))
        self.assertEqual(message.get(Attr.SOFTWARE), "STUN test client")
        self.assertEqual(message.get(Attr.USERNAME), "evtj:h6vY")
        self.assertTrue(message.has_fingerprint)
        self.assertTrue(message.check_integrity(PASSWORD_5769))
        self.assertFalse(message.check_integrity(b"wrong"))
        # PRIORITY and ICE-CONTROLLED are ICE's, unknown to a TURN server:
        # PRIORITY is comprehension-required, so it is reported.
        self.assertEqual(message.unknown_required(), [0x0024])

    def test_response_ipv4(self) -> None:
        """
        The IPv4 response's XOR-MAPPED-ADDRESS is 192.0.2.1:32853, and
        encoding the same attributes reproduces the vector byte for byte.
        """
        message = decode(RESPONSE_IPV4)
        self.assertEqual(message.get(Attr.XOR_MAPPED_ADDRESS), ("192.0.2.1", 32853))
        self.assertTrue(message.check_integrity(PASSWORD_5769))
        rebuilt = Message(Method.BINDING, Class.SUCCESS, message.transaction_id)
        rebuilt.add_raw(Attr.SOFTWARE, b"test vector")
        rebuilt.add(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))
        # The RFC pads with spaces; padding is covered by the HMAC.
        encoded = encode(rebuilt, PASSWORD_5769, add_fingerprint=True, pad_byte=b" ")
        self.assertEqual(encoded, RESPONSE_IPV4)

    def test_response_ipv6(self) -> None:
        """
        The IPv6 response decodes and re-encodes byte for byte.
        """
        message = decode(RESPONSE_IPV6)
        address = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
        self.assertEqual(message.get(Attr.XOR_MAPPED_ADDRESS), address)
        rebuilt = Message(Method.BINDING, Class.SUCCESS, message.transaction_id)
        rebuilt.add_raw(Attr.SOFTWARE, b"test vector")
        rebuilt.add(Attr.XOR_MAPPED_ADDRESS, address)
        encoded = encode(rebuilt, PASSWORD_5769, add_fingerprint=True, pad_byte=b" ")
        self.assertEqual(encoded, RESPONSE_IPV6)

    def test_long_term_5769(self) -> None:
        """
        The RFC 5769 long-term request verifies with
        MD5(username:realm:password), the password after SASLprep being
        "TheMatrIX", and re-encodes byte for byte.
        """
        data = long_term_request()
        message = decode(data)
        self.assertEqual(message.get(Attr.USERNAME), USERNAME_8489)
        self.assertEqual(message.get(Attr.REALM), "example.org")
        self.assertEqual(message.get(Attr.NONCE), NONCE_5769)
        key = long_term_key(USERNAME_8489, "example.org", "TheMatrIX")
        self.assertTrue(message.check_integrity(key))
        rebuilt = Message(Method.BINDING, Class.REQUEST, message.transaction_id)
        rebuilt.add(Attr.USERNAME, USERNAME_8489)
        rebuilt.add(Attr.NONCE, NONCE_5769)
        rebuilt.add(Attr.REALM, "example.org")
        self.assertEqual(encode(rebuilt, key), data)

    def test_request_8489(self) -> None:
        """
        The RFC 8489 B.1 request (erratum 6268) carries the USERHASH of its
        username and realm, and its MESSAGE-INTEGRITY-SHA256 verifies with
        the SHA-256 long-term key; re-encoding reproduces it.
        """
        message = decode(REQUEST_8489)
        self.assertEqual(message.get(Attr.USERHASH), userhash(USERNAME_8489, "example.org"))
        self.assertEqual(message.get(Attr.PASSWORD_ALGORITHM), (PasswordAlgorithm.SHA256, b""))
        self.assertEqual(message.get(Attr.NONCE), NONCE_8489)
        key = long_term_key(USERNAME_8489, "example.org", "TheMatrIX", PasswordAlgorithm.SHA256)
        self.assertEqual(
            key, hashlib.sha256(f"{USERNAME_8489}:example.org:TheMatrIX".encode()).digest()
        )
        self.assertTrue(message.check_integrity(key))
        rebuilt = Message(Method.BINDING, Class.REQUEST, message.transaction_id)
        for attr_type, value in message.attributes:
            if attr_type != Attr.MESSAGE_INTEGRITY_SHA256:
                rebuilt.add_raw(attr_type, value)
        self.assertEqual(encode(rebuilt, key, sha256=True), REQUEST_8489)


class MessageTypeTests(SynchronousTestCase):
    """
    Tests for the method/class bit interleaving.
    """

    def test_known_types(self) -> None:
        """
        Allocate success is 0x0103, Data indication 0x0017, Binding error 0x0111.
        """
        self.assertEqual(stun.message_type(Method.ALLOCATE, Class.SUCCESS), 0x0103)
        self.assertEqual(stun.message_type(Method.DATA, Class.INDICATION), 0x0017)
        self.assertEqual(stun.message_type(Method.BINDING, Class.ERROR), 0x0111)

    @given(st.integers(0, 0xFFF), st.sampled_from(list(Class)))
    def test_round_trip(self, method: int, cls: Class) -> None:
        """
        Every 12-bit method and class survive interleaving.
        """
        self.assertEqual(stun.split_message_type(stun.message_type(method, cls)), (method, cls))


class MalformedTests(SynchronousTestCase):
    """
    Malformed messages raise L{StunDecodeError} with a precise message.
    """

    def header(self, length: int, msg_type: int = 0x0001) -> bytes:
        return struct.pack("!HHI12s", msg_type, length, stun.MAGIC_COOKIE, b"x" * 12)

    def assertDecodeError(self, data: bytes, text: str) -> None:
        error = self.assertRaises(StunDecodeError, decode, data)
        self.assertEqual(str(error), text)

    def test_short(self) -> None:
        """
        Fewer than 20 bytes is not a message.
        """
        self.assertDecodeError(b"\x00\x01", "STUN message is shorter than its 20-byte header")

    def test_top_bits(self) -> None:
        """
        A type with either top bit set is not STUN.
        """
        self.assertDecodeError(self.header(0, 0x4001), "STUN message type has its top two bits set")

    def test_length_not_multiple(self) -> None:
        """
        The length must be a multiple of 4.
        """
        self.assertDecodeError(
            self.header(3) + b"abc", "STUN message length is not a multiple of 4"
        )

    def test_length_mismatch(self) -> None:
        """
        The length must match the bytes that follow the header.
        """
        self.assertDecodeError(
            self.header(8) + b"\x00" * 4,
            "STUN message length 8 does not match 4 bytes of attributes",
        )

    def test_attribute_overrun(self) -> None:
        """
        An attribute that claims more bytes than remain is refused.
        """
        self.assertDecodeError(
            self.header(8) + b"\x00\x06\x00\x08abcd",
            "STUN attribute 0x0006 is longer than the message",
        )

    def test_truncated_attribute_header(self) -> None:
        """
        An attribute whose value runs past a short message is refused
        before any of it is read.
        """
        self.assertDecodeError(
            self.header(4) + b"\x00\x06\x00\x02",
            "STUN attribute 0x0006 is longer than the message",
        )

    def test_bad_fingerprint(self) -> None:
        """
        A wrong FINGERPRINT is a decode error, not a quiet pass.
        """
        data = bytearray(REQUEST_5769)
        data[-1] ^= 1
        self.assertDecodeError(bytes(data), "STUN FINGERPRINT does not match")

    def test_fingerprint_not_last(self) -> None:
        """
        FINGERPRINT must be the last attribute.
        """
        body = b"\x80\x28\x00\x04abcd" + b"\x00\x06\x00\x04user"
        self.assertDecodeError(
            self.header(len(body)) + body, "STUN FINGERPRINT is not the last attribute"
        )

    def test_bad_integrity_length(self) -> None:
        """
        MESSAGE-INTEGRITY must be 20 bytes.
        """
        body = b"\x00\x08\x00\x04abcd"
        self.assertDecodeError(
            self.header(len(body)) + body, "STUN MESSAGE-INTEGRITY has invalid length 4"
        )

    def test_ignored_after_integrity(self) -> None:
        """
        Attributes after MESSAGE-INTEGRITY other than FINGERPRINT and
        MESSAGE-INTEGRITY-SHA256 are ignored.
        """
        body = b"\x00\x08\x00\x14" + b"m" * 20 + b"\x00\x06\x00\x04user"
        message = decode(self.header(len(body)) + body)
        self.assertIsNone(message.get(Attr.USERNAME))
        self.assertEqual(message.integrity_offset, 20)

    def test_bad_address(self) -> None:
        """
        Address values are checked when read.
        """
        message = Message(Method.BINDING, Class.REQUEST, b"x" * 12)
        message.add_raw(Attr.XOR_PEER_ADDRESS, b"\x00\x01\x00\x00\x00")
        error = self.assertRaises(StunDecodeError, message.get, Attr.XOR_PEER_ADDRESS)
        self.assertEqual(str(error), "STUN address has invalid length for IPv4")
        message.attributes = [(Attr.XOR_PEER_ADDRESS, b"\x00\x03\x00\x00abcd")]
        error = self.assertRaises(StunDecodeError, message.get, Attr.XOR_PEER_ADDRESS)
        self.assertEqual(str(error), "STUN address has unknown family 0x03")

    def test_bad_utf8(self) -> None:
        """
        Text attributes must be UTF-8.
        """
        message = Message(Method.BINDING, Class.REQUEST, b"x" * 12)
        message.add_raw(Attr.USERNAME, b"\xff\xfe")
        error = self.assertRaises(StunDecodeError, message.get, Attr.USERNAME)
        self.assertEqual(str(error), "STUN USERNAME is not valid UTF-8")

    def test_classic(self) -> None:
        """
        A message without the magic cookie is an RFC 3489 message whose
        cookie bytes are kept as part of its transaction id.
        """
        data = struct.pack("!HH16s", 0x0001, 0, b"0123456789abcdef")
        message = decode(data)
        self.assertTrue(message.is_classic)
        assert message.legacy_cookie is not None
        self.assertEqual(message.legacy_cookie + message.transaction_id, b"0123456789abcdef")

    def test_channel_data(self) -> None:
        """
        ChannelData frames split into channel and payload; padding is
        ignored, a short frame is an error.
        """
        self.assertEqual(stun.decode_channel_data(b"\x40\x01\x00\x03abc\x00"), (0x4001, b"abc"))
        error = self.assertRaises(StunDecodeError, stun.decode_channel_data, b"\x40\x01\x00\x09ab")
        self.assertEqual(str(error), "ChannelData length 9 exceeds its 2 bytes")
        self.assertEqual(
            stun.encode_channel_data(0x4001, b"abc", pad=True), b"\x40\x01\x00\x03abc\x00"
        )

    def test_data_indication(self) -> None:
        """
        The hot path's Data indication encoder writes what the general
        decoder reads: XOR-PEER-ADDRESS (IPv4 and IPv6) and DATA or ICMP,
        padded, under the given transaction id.
        """
        for peer in [("203.0.113.5", 5000), ("2001:db8::5", 6000)]:
            data = stun.encode_data_indication(b"p" * 8, 7, peer, Attr.DATA, b"hello")
            message = decode(data)
            self.assertEqual((message.method, message.cls), (Method.DATA, Class.INDICATION))
            self.assertEqual(message.transaction_id, b"p" * 8 + b"\x00\x00\x00\x07")
            self.assertEqual(message.get(Attr.XOR_PEER_ADDRESS), peer)
            self.assertEqual(message.get(Attr.DATA), b"hello")
        icmp = stun.encode_data_indication(
            b"p" * 8, 8, ("203.0.113.5", 1), Attr.ICMP, stun.pack_icmp((3, 3, 0))
        )
        self.assertEqual(decode(icmp).get(Attr.ICMP), (3, 3, 0))

    def test_kept_peer_attribute(self) -> None:
        """
        An IPv4 peer's XOR-PEER-ADDRESS, encoded once, is the one every
        transaction id would give; an IPv6 peer's is not (it mixes in the
        transaction id), which is why only IPv4 ones are kept.
        """
        peer = ("203.0.113.5", 5000)
        kept = stun.xor_peer_attribute(peer, b"")
        for counter in (0, 1, 0xFFFFFFFF):
            for length in range(5):
                fresh = stun.encode_data_indication(
                    b"q" * 8, counter, peer, Attr.DATA, b"x" * length
                )
                reused = stun.encode_data_indication(
                    b"q" * 8, counter, peer, Attr.DATA, b"x" * length, kept
                )
                self.assertEqual(reused, fresh)
        six = ("2001:db8::5", 1)
        self.assertNotEqual(
            stun.xor_peer_attribute(six, b"a" * 12), stun.xor_peer_attribute(six, b"b" * 12)
        )


_VALUES: dict[int, st.SearchStrategy[Any]] = {
    Attr.MAPPED_ADDRESS: st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    Attr.XOR_PEER_ADDRESS: st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    Attr.USERNAME: st.text(max_size=100),
    Attr.LIFETIME: st.integers(0, 2**32 - 1),
    Attr.CHANNEL_NUMBER: st.integers(0, 0xFFFF),
    Attr.DATA: st.binary(max_size=200),
    Attr.ERROR_CODE: st.tuples(st.integers(300, 699), st.text(max_size=50)),
    Attr.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=8),
    Attr.EVEN_PORT: st.booleans(),
    Attr.REQUESTED_TRANSPORT: st.integers(0, 255),
    Attr.PASSWORD_ALGORITHMS: st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=9)), min_size=1, max_size=4
    ),
    Attr.ICMP: st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1)),
    Attr.CONNECTION_ID: st.integers(0, 2**32 - 1),
}


class RoundTripTests(SynchronousTestCase):
    """
    Property tests: what is encoded decodes to the same thing, and no
    input makes the decoder raise anything but L{StunDecodeError}.
    """

    @given(st.data())
    # Drawing a value per attribute type is slow on a loaded machine.
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_attribute_round_trip(self, data: st.DataObject) -> None:
        """
        A message of random attributes decodes to the same attributes and
        values, with integrity and fingerprint intact.
        """
        txid = data.draw(st.binary(min_size=12, max_size=12))
        message = Message(Method.ALLOCATE, Class.REQUEST, txid)
        chosen = data.draw(st.lists(st.sampled_from(list(_VALUES)), max_size=6))
        values = []
        for attr_type in chosen:
            value = data.draw(_VALUES[attr_type])
            if attr_type == Attr.ERROR_CODE and value[0] % 100 > 99:
                continue
            message.add(attr_type, value)
            values.append((attr_type, value))
        encoded = encode(message, b"key", add_fingerprint=True)
        decoded = decode(encoded)
        self.assertEqual(decoded.attributes[: len(message.attributes)], message.attributes)
        self.assertTrue(decoded.check_integrity(b"key"))
        for attr_type, _value in values:
            got = decoded.get(attr_type)
            expected = [v for t, v in values if t == attr_type][0]
            if attr_type in (Attr.MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS):
                # inet_ntop and ipaddress spell some IPv6 forms differently.
                got = (ipaddress.ip_address(got[0]), got[1])
                expected = (ipaddress.ip_address(expected[0]), expected[1])
            self.assertEqual(got, expected)

    @settings(max_examples=500)
    @given(st.binary(max_size=120))
    def test_decode_never_crashes(self, data: bytes) -> None:
        """
        Random bytes either decode or raise L{StunDecodeError}; reading
        every attribute of what decodes does the same.
        """
        self.check_hostile(data)

    @settings(max_examples=500)
    @given(st.binary(max_size=100), st.integers(0, 0x3FFF))
    def test_framed_garbage(self, body: bytes, msg_type: int) -> None:
        """
        Garbage behind a valid header (so the attribute parser is reached)
        never raises anything but L{StunDecodeError}.
        """
        body = body + b"\x00" * stun.padding(len(body))
        header = struct.pack("!HHI12s", msg_type, len(body), stun.MAGIC_COOKIE, b"t" * 12)
        self.check_hostile(header + body)

    def check_hostile(self, data: bytes) -> None:
        try:
            message = decode(data)
        except StunDecodeError:
            return
        for attr_type, _ in message.attributes:
            if attr_type in ATTRIBUTES:
                try:
                    message.get(attr_type)
                except StunDecodeError:
                    pass
        message.check_integrity(b"k")


class SendIndicationPartsTests(SynchronousTestCase):
    """
    L{send_indication_parts}, the server's shortcut for Send indications,
    answers only where L{decode} would, and the same.
    """

    @staticmethod
    def indication(
        peer: tuple[str, int], data: bytes, fingerprint: bool, extra: list[tuple[int, bytes]]
    ) -> bytes:
        message = Message(Method.SEND, Class.INDICATION, b"t" * 12)
        message.add(Attr.XOR_PEER_ADDRESS, peer)
        message.add(Attr.DATA, data)
        message.attributes += extra
        return encode(message, add_fingerprint=fingerprint)

    def test_common_shape(self) -> None:
        """
        An IPv4 peer and DATA, with or without FINGERPRINT, of any length:
        taken apart without a Message.
        """
        for fingerprint in (False, True):
            for length in (0, 1, 3, 4, 100, 1001):
                data = self.indication(("192.0.2.1", 3478), b"x" * length, fingerprint, [])
                self.assertEqual(send_indication_parts(data), (("192.0.2.1", 3478), b"x" * length))

    def test_other_shapes_decoded(self) -> None:
        """
        IPv6 peers, other attributes, a legacy cookie or a wrong
        FINGERPRINT go the long way.
        """
        self.assertIsNone(
            send_indication_parts(self.indication(("2001:db8::1", 1), b"x", False, []))
        )
        self.assertIsNone(
            send_indication_parts(self.indication(("192.0.2.1", 1), b"x", False, [(0x001A, b"")]))
        )
        data = bytearray(self.indication(("192.0.2.1", 1), b"x", True, []))
        data[-1] ^= 1
        self.assertIsNone(send_indication_parts(bytes(data)))
        data = bytearray(self.indication(("192.0.2.1", 1), b"x", False, []))
        data[4] ^= 1
        self.assertIsNone(send_indication_parts(bytes(data)))
        data = bytearray(self.indication(("192.0.2.1", 1), b"x", False, []))
        data[25] = 2  # IPv6 family in an IPv4-sized address: malformed
        self.assertIsNone(send_indication_parts(bytes(data)))
        self.assertRaises(StunDecodeError, decode(bytes(data)).get, Attr.XOR_PEER_ADDRESS)

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(
        peer=st.tuples(
            st.sampled_from(["192.0.2.1", "203.0.113.250", "0.0.0.0", "2001:db8::7"]),
            st.integers(0, 65535),
        ),
        data=st.binary(max_size=64),
        fingerprint=st.booleans(),
        extra=st.lists(
            st.tuples(st.sampled_from([0x001A, 0x8022, 0x7FFF, 0x0013]), st.binary(max_size=8)),
            max_size=2,
        ),
        flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=3),
        cut=st.integers(0, 4),
    )
    def test_agrees_with_decode(
        self,
        peer: tuple[str, int],
        data: bytes,
        fingerprint: bool,
        extra: list[tuple[int, bytes]],
        flips: list[tuple[int, int]],
        cut: int,
    ) -> None:
        """
        Where the shortcut answers, a full decode gives a Send indication
        with no unknown required attribute and the same peer and DATA.
        """
        message = bytearray(self.indication(peer, data, fingerprint, extra))
        for position, mask in flips:
            if position < len(message):
                message[position] ^= mask
        raw = bytes(message[: len(message) - cut])
        parts = send_indication_parts(raw)
        if parts is None:
            return
        decoded = decode(raw)
        self.assertEqual((decoded.method, decoded.cls), (Method.SEND, Class.INDICATION))
        self.assertFalse(decoded.is_classic)
        self.assertEqual(decoded.unknown_required(), [])
        self.assertEqual(parts, (decoded.get(Attr.XOR_PEER_ADDRESS), decoded.get(Attr.DATA)))
