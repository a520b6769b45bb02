# -*- test-case-name: tests.test_stun -*-
"""
The STUN message codec (RFC 8489, with the TURN attributes of RFC 8656,
RFC 6062 and RFC 6156), and ChannelData framing.

Nothing here touches a socket or a clock: these are pure functions over
bytes, so that every decision about hostile input can be tested byte for
byte.  Decoding raises L{StunDecodeError} and nothing else; callers decide
whether a broken message deserves a 400 or silence.

A decoded L{Message} keeps its attributes as an ordered list of
C{(type, raw value)} pairs, with the offsets the integrity checks need,
because a server must see duplicates and order (MESSAGE-INTEGRITY covers
only what comes before it) and must answer unknown comprehension-required
attributes with 420 rather than lose them.  Typed values are produced on
demand through the L{ATTRIBUTES} table.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E
HEADER_LENGTH = 20
CHANNEL_HEADER_LENGTH = 4

#: The nonce cookie of RFC 8489 section 9.2: a server that starts its
#: NONCE with it supports the new password algorithms and USERHASH.
NONCE_COOKIE = "obMatJos2"

_HEADER = struct.Struct("!HHI12s")
_HEADER_CLASSIC = struct.Struct("!HH16s")
_ATTR_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
CHANNEL_DATA_HEADER = struct.Struct("!HH")

#: Attributes one message may carry.  Real requests carry a dozen at most
#: (a CreatePermission with several XOR-PEER-ADDRESS a few more); the cap
#: keeps every per-attribute scan of a hostile 64 KiB message short.
MAX_ATTRIBUTES = 128
#: Unknown comprehension-required types named in one 420 answer, so the
#: answer stays small whatever the request carried (RFC 8489 lets a server
#: list only some of them).
MAX_UNKNOWN_ATTRIBUTES = 16

Address = tuple[str, int]


class StunDecodeError(ValueError):
    """
    Bytes that are not a well-formed STUN message or ChannelData frame.

    The message says precisely what was wrong, for logs and tests; it is
    never sent back to a client.
    """


class Class(enum.IntEnum):
    REQUEST = 0x000
    INDICATION = 0x010
    SUCCESS = 0x100
    ERROR = 0x110


class Method(enum.IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class Attr(enum.IntEnum):
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    ACCESS_TOKEN = 0x001B
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    CONNECTION_ID = 0x002A
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C
    #: The draft codepoints coturn still uses for dual allocation
    #: (turnutils_uclient -Z sends these); accepted as aliases.
    LEGACY_ADDITIONAL_ADDRESS_FAMILY = 0x8032
    LEGACY_ADDRESS_ERROR_CODE = 0x8033


class PasswordAlgorithm(enum.IntEnum):
    MD5 = 0x0001
    SHA256 = 0x0002


#: Address families as STUN encodes them (RFC 8489 section 14.1).
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

#: The reason phrases sent with each error code.
ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


def message_type(method: int, cls: int) -> int:
    """
    Interleave the 12 method bits and 2 class bits into a message type.
    """
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | cls


def split_message_type(msg_type: int) -> tuple[int, int]:
    """
    Undo L{message_type}: return C{(method, class)}.
    """
    cls = msg_type & 0x0110
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    return method, cls


def padding(length: int) -> int:
    """
    How many bytes pad C{length} to a 4-byte boundary.
    """
    return -length & 3


# -- value codecs ---------------------------------------------------------
#
# Each attribute value has a pack and an unpack function taking the
# transaction id as well, because the XOR-encoded addresses need it.


def _xor_key(transaction_id: bytes) -> bytes:
    return MAGIC_COOKIE_BYTES + transaction_id


def unpack_address(value: bytes, transaction_id: bytes = b"") -> Address:
    """
    Decode a (non-XOR) address attribute such as MAPPED-ADDRESS.
    """
    if len(value) < 4:
        raise StunDecodeError("STUN address is shorter than 4 bytes")
    family = value[1]
    port = _U16.unpack_from(value, 2)[0]
    if family == FAMILY_IPV4:
        if len(value) != 8:
            raise StunDecodeError("STUN address has invalid length for IPv4")
        return socket.inet_ntop(socket.AF_INET, value[4:8]), port
    if family == FAMILY_IPV6:
        if len(value) != 20:
            raise StunDecodeError("STUN address has invalid length for IPv6")
        return socket.inet_ntop(socket.AF_INET6, value[4:20]), port
    raise StunDecodeError(f"STUN address has unknown family 0x{family:02x}")


def pack_address(address: Address, transaction_id: bytes = b"") -> bytes:
    """
    Encode a (non-XOR) address attribute value.
    """
    host, port = address[0], address[1]
    if ":" in host:
        return struct.pack("!BBH", 0, FAMILY_IPV6, port) + socket.inet_pton(socket.AF_INET6, host)
    return struct.pack("!BBH", 0, FAMILY_IPV4, port) + socket.inet_pton(socket.AF_INET, host)


def _xor(data: bytes, key: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(key[: len(data)], "big")).to_bytes(
        len(data), "big"
    )


def unpack_xor_address(value: bytes, transaction_id: bytes) -> Address:
    """
    Decode an XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS or XOR-RELAYED-ADDRESS.
    """
    if len(value) < 4:
        raise StunDecodeError("STUN address is shorter than 4 bytes")
    key = _xor_key(transaction_id)
    plain = value[:2] + _xor(value[2:4], key) + _xor(value[4:], key)
    return unpack_address(plain)


def pack_xor_address(address: Address, transaction_id: bytes) -> bytes:
    """
    Encode an XOR address attribute value.
    """
    plain = pack_address(address)
    key = _xor_key(transaction_id)
    return plain[:2] + _xor(plain[2:4], key) + _xor(plain[4:], key)


def _text_codec(
    name: str, max_bytes: int
) -> tuple[Callable[[str, bytes], bytes], Callable[[bytes, bytes], str]]:
    def pack(value: str, transaction_id: bytes = b"") -> bytes:
        return value.encode("utf-8")

    def unpack(value: bytes, transaction_id: bytes = b"") -> str:
        if len(value) > max_bytes:
            raise StunDecodeError(f"STUN {name} is longer than {max_bytes} bytes")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise StunDecodeError(f"STUN {name} is not valid UTF-8") from None

    return pack, unpack


def _fixed_bytes_codec(
    name: str, lengths: Iterable[int]
) -> tuple[Callable[[bytes, bytes], bytes], Callable[[bytes, bytes], bytes]]:
    allowed = frozenset(lengths)

    def pack(value: bytes, transaction_id: bytes = b"") -> bytes:
        return bytes(value)

    def unpack(value: bytes, transaction_id: bytes = b"") -> bytes:
        if len(value) not in allowed:
            raise StunDecodeError(f"STUN {name} has invalid length {len(value)}")
        return value

    return pack, unpack


def _raw_pack(value: bytes, transaction_id: bytes = b"") -> bytes:
    return bytes(value)


def _raw_unpack(value: bytes, transaction_id: bytes = b"") -> bytes:
    return value


def _uint_codec(
    name: str, size: int, reserved: int = 0
) -> tuple[Callable[[int, bytes], bytes], Callable[[bytes, bytes], int]]:
    """
    An unsigned integer of C{size} bytes followed by C{reserved} zero bytes
    (RFFU), as REQUESTED-TRANSPORT and CHANNEL-NUMBER are laid out.
    """

    def pack(value: int, transaction_id: bytes = b"") -> bytes:
        return int(value).to_bytes(size, "big") + b"\x00" * reserved

    def unpack(value: bytes, transaction_id: bytes = b"") -> int:
        if len(value) != size + reserved:
            raise StunDecodeError(f"STUN {name} has invalid length {len(value)}")
        return int.from_bytes(value[:size], "big")

    return pack, unpack


def pack_error_code(value: tuple[int, str], transaction_id: bytes = b"") -> bytes:
    code, reason = value
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def unpack_error_code(value: bytes, transaction_id: bytes = b"") -> tuple[int, str]:
    if len(value) < 4:
        raise StunDecodeError("STUN ERROR-CODE is shorter than 4 bytes")
    if len(value) > 4 + 763:
        raise StunDecodeError("STUN ERROR-CODE reason is too long")
    klass = value[2] & 0x07
    number = value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunDecodeError(f"STUN ERROR-CODE has invalid code {klass}{number:02d}")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError("STUN ERROR-CODE reason is not valid UTF-8") from None
    return klass * 100 + number, reason


def pack_unknown_attributes(value: list[int], transaction_id: bytes = b"") -> bytes:
    return b"".join(_U16.pack(t) for t in value)


def unpack_unknown_attributes(value: bytes, transaction_id: bytes = b"") -> list[int]:
    if len(value) % 2:
        raise StunDecodeError("STUN UNKNOWN-ATTRIBUTES has odd length")
    return [t for (t,) in _U16.iter_unpack(value)]


def pack_even_port(value: bool, transaction_id: bytes = b"") -> bytes:
    return b"\x80" if value else b"\x00"


def unpack_even_port(value: bytes, transaction_id: bytes = b"") -> bool:
    if len(value) != 1:
        raise StunDecodeError("STUN EVEN-PORT has invalid length")
    return bool(value[0] & 0x80)


def pack_flag(value: bool, transaction_id: bytes = b"") -> bytes:
    return b""


def unpack_flag(value: bytes, transaction_id: bytes = b"") -> bool:
    if value:
        raise StunDecodeError("STUN DONT-FRAGMENT must be empty")
    return True


def pack_password_algorithm(value: tuple[int, bytes], transaction_id: bytes = b"") -> bytes:
    algorithm, params = value
    return struct.pack("!HH", algorithm, len(params)) + params + b"\x00" * padding(len(params))


def _unpack_algorithms(value: bytes) -> list[tuple[int, bytes]]:
    result = []
    offset = 0
    while offset < len(value):
        if len(value) - offset < 4:
            raise StunDecodeError("STUN password algorithm is truncated")
        algorithm, length = struct.unpack_from("!HH", value, offset)
        offset += 4
        if offset + length > len(value):
            raise StunDecodeError("STUN password algorithm parameters are truncated")
        result.append((algorithm, value[offset : offset + length]))
        offset += length + padding(length)
    return result


def unpack_password_algorithm(value: bytes, transaction_id: bytes = b"") -> tuple[int, bytes]:
    algorithms = _unpack_algorithms(value)
    if len(algorithms) != 1:
        raise StunDecodeError("STUN PASSWORD-ALGORITHM must hold one algorithm")
    return algorithms[0]


def pack_password_algorithms(value: list[tuple[int, bytes]], transaction_id: bytes = b"") -> bytes:
    return b"".join(pack_password_algorithm(item) for item in value)


def unpack_password_algorithms(
    value: bytes, transaction_id: bytes = b""
) -> list[tuple[int, bytes]]:
    algorithms = _unpack_algorithms(value)
    if not algorithms:
        raise StunDecodeError("STUN PASSWORD-ALGORITHMS is empty")
    return algorithms


def pack_address_error_code(value: tuple[int, int, str], transaction_id: bytes = b"") -> bytes:
    family, code, reason = value
    return struct.pack("!BBBB", family, 0, code // 100, code % 100) + reason.encode("utf-8")


def unpack_address_error_code(value: bytes, transaction_id: bytes = b"") -> tuple[int, int, str]:
    if len(value) < 4:
        raise StunDecodeError("STUN ADDRESS-ERROR-CODE is shorter than 4 bytes")
    code, reason = unpack_error_code(b"\x00\x00" + value[2:])
    return value[0], code, reason


def pack_icmp(value: tuple[int, int, int], transaction_id: bytes = b"") -> bytes:
    icmp_type, icmp_code, error_data = value
    return struct.pack("!HBBI", 0, icmp_type, icmp_code, error_data)


def unpack_icmp(value: bytes, transaction_id: bytes = b"") -> tuple[int, int, int]:
    if len(value) != 8:
        raise StunDecodeError("STUN ICMP has invalid length")
    _, icmp_type, icmp_code, error_data = struct.unpack("!HBBI", value)
    return icmp_type, icmp_code, error_data


class AttributeCodec(NamedTuple):
    name: str
    pack: Callable[[Any, bytes], bytes]
    unpack: Callable[[bytes, bytes], Any]


def _table() -> dict[int, AttributeCodec]:
    text = _text_codec
    fixed = _fixed_bytes_codec
    entries: list[tuple[Attr, tuple[Callable[..., bytes], Callable[..., Any]]]] = [
        (Attr.MAPPED_ADDRESS, (pack_address, unpack_address)),
        (Attr.USERNAME, text("USERNAME", 508)),
        (Attr.MESSAGE_INTEGRITY, fixed("MESSAGE-INTEGRITY", [20])),
        (Attr.ERROR_CODE, (pack_error_code, unpack_error_code)),
        (
            Attr.UNKNOWN_ATTRIBUTES,
            (pack_unknown_attributes, unpack_unknown_attributes),
        ),
        (Attr.CHANNEL_NUMBER, _uint_codec("CHANNEL-NUMBER", 2, 2)),
        (Attr.LIFETIME, _uint_codec("LIFETIME", 4)),
        (Attr.XOR_PEER_ADDRESS, (pack_xor_address, unpack_xor_address)),
        (Attr.DATA, (_raw_pack, _raw_unpack)),
        (Attr.REALM, text("REALM", 763)),
        (Attr.NONCE, text("NONCE", 763)),
        (Attr.XOR_RELAYED_ADDRESS, (pack_xor_address, unpack_xor_address)),
        (
            Attr.REQUESTED_ADDRESS_FAMILY,
            _uint_codec("REQUESTED-ADDRESS-FAMILY", 1, 3),
        ),
        (Attr.EVEN_PORT, (pack_even_port, unpack_even_port)),
        (Attr.REQUESTED_TRANSPORT, _uint_codec("REQUESTED-TRANSPORT", 1, 3)),
        (Attr.DONT_FRAGMENT, (pack_flag, unpack_flag)),
        (Attr.ACCESS_TOKEN, (_raw_pack, _raw_unpack)),
        (
            Attr.MESSAGE_INTEGRITY_SHA256,
            fixed("MESSAGE-INTEGRITY-SHA256", [16, 20, 24, 28, 32]),
        ),
        (
            Attr.PASSWORD_ALGORITHM,
            (pack_password_algorithm, unpack_password_algorithm),
        ),
        (Attr.USERHASH, fixed("USERHASH", [32])),
        (Attr.XOR_MAPPED_ADDRESS, (pack_xor_address, unpack_xor_address)),
        (Attr.RESERVATION_TOKEN, fixed("RESERVATION-TOKEN", [8])),
        (Attr.CONNECTION_ID, _uint_codec("CONNECTION-ID", 4)),
        (
            Attr.ADDITIONAL_ADDRESS_FAMILY,
            _uint_codec("ADDITIONAL-ADDRESS-FAMILY", 1, 3),
        ),
        (
            Attr.ADDRESS_ERROR_CODE,
            (pack_address_error_code, unpack_address_error_code),
        ),
        (
            Attr.LEGACY_ADDITIONAL_ADDRESS_FAMILY,
            _uint_codec("ADDITIONAL-ADDRESS-FAMILY", 1, 3),
        ),
        (
            Attr.LEGACY_ADDRESS_ERROR_CODE,
            (pack_address_error_code, unpack_address_error_code),
        ),
        (
            Attr.PASSWORD_ALGORITHMS,
            (pack_password_algorithms, unpack_password_algorithms),
        ),
        (Attr.ALTERNATE_DOMAIN, text("ALTERNATE-DOMAIN", 763)),
        (Attr.ICMP, (pack_icmp, unpack_icmp)),
        (Attr.SOFTWARE, text("SOFTWARE", 763)),
        (Attr.ALTERNATE_SERVER, (pack_address, unpack_address)),
        (Attr.FINGERPRINT, _uint_codec("FINGERPRINT", 4)),
        (Attr.RESPONSE_ORIGIN, (pack_address, unpack_address)),
        (Attr.OTHER_ADDRESS, (pack_address, unpack_address)),
    ]
    return {
        int(attr): AttributeCodec(attr.name.replace("_", "-"), pack, unpack)
        for attr, (pack, unpack) in entries
    }


#: Every attribute this codec knows: type -> (name, pack, unpack).
ATTRIBUTES: dict[int, AttributeCodec] = _table()


# -- messages -------------------------------------------------------------


@dataclass
class Message:
    """
    A STUN message: header fields and an ordered list of raw attributes.

    @ivar legacy_cookie: for a classic RFC 3489 message, the 4 bytes where
        the magic cookie would be (part of its 128-bit transaction id);
        C{None} for an RFC 8489 message.
    @ivar raw: the bytes this message was decoded from, for integrity checks.
    @ivar integrity_offset: where MESSAGE-INTEGRITY's header starts in
        C{raw}, or C{None}.
    @ivar integrity_sha256_offset: the same for MESSAGE-INTEGRITY-SHA256.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)
    legacy_cookie: bytes | None = None
    raw: bytes = b""
    integrity_offset: int | None = None
    integrity_sha256_offset: int | None = None
    has_fingerprint: bool = False

    def add(self, attr_type: int, value: Any) -> "Message":
        """
        Append an attribute, packing a Python value through L{ATTRIBUTES}.
        """
        codec = ATTRIBUTES[attr_type]
        self.attributes.append((attr_type, codec.pack(value, self.transaction_id)))
        return self

    def add_raw(self, attr_type: int, value: bytes) -> "Message":
        self.attributes.append((attr_type, value))
        return self

    def raw_value(self, attr_type: int) -> bytes | None:
        """
        The first value of an attribute as bytes, or C{None}.
        """
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def has(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def get(self, attr_type: int, default: Any = None) -> Any:
        """
        The first value of an attribute, decoded; C{default} if absent.

        @raise StunDecodeError: if the value is malformed.
        """
        value = self.raw_value(attr_type)
        if value is None:
            return default
        return ATTRIBUTES[attr_type].unpack(value, self.transaction_id)

    def get_all(self, attr_type: int) -> list[Any]:
        """
        Every value of a repeated attribute (XOR-PEER-ADDRESS), decoded.
        """
        unpack = ATTRIBUTES[attr_type].unpack
        return [unpack(v, self.transaction_id) for t, v in self.attributes if t == attr_type]

    def unknown_required(self) -> list[int]:
        """
        Comprehension-required attribute types this codec does not know,
        in order of first appearance, at most L{MAX_UNKNOWN_ATTRIBUTES} of
        them: one pass, a set lookup per attribute.
        """
        seen: dict[int, None] = {}
        for t, _ in self.attributes:
            if t < 0x8000 and t not in ATTRIBUTES:
                seen[t] = None
                if len(seen) == MAX_UNKNOWN_ATTRIBUTES:
                    break
        return list(seen)

    @property
    def is_classic(self) -> bool:
        return self.legacy_cookie is not None

    # -- integrity, against the raw bytes ------------------------------------

    def check_integrity(self, key: bytes) -> bool:
        """
        Verify MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY.

        Comparison is constant-time.  A message with neither is not intact.
        """
        if self.integrity_sha256_offset is not None:
            return _verify(self.raw, self.integrity_sha256_offset, key, hashlib.sha256)
        if self.integrity_offset is not None:
            return _verify(self.raw, self.integrity_offset, key, hashlib.sha1)
        return False


def _verify(raw: bytes, offset: int, key: bytes, digest: Any) -> bool:
    length = _U16.unpack_from(raw, offset + 2)[0]
    expected = raw[offset + 4 : offset + 4 + length]
    covered = raw[:2] + _U16.pack(offset - HEADER_LENGTH + 4 + length) + raw[4:offset]
    mac = hmac.new(key, covered, digest).digest()[:length]
    return hmac.compare_digest(mac, expected)


def fingerprint(data: bytes) -> int:
    return (binascii.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def _check_fingerprint(data: bytes, offset: int, end: int, value: bytes) -> None:
    """
    FINGERPRINT at C{offset} must be last, 4 bytes, and the CRC of all
    before it: it is how STUN is told apart from other protocols.
    """
    if end != len(data):
        raise StunDecodeError("STUN FINGERPRINT is not the last attribute")
    if len(value) != 4:
        raise StunDecodeError("STUN FINGERPRINT has invalid length")
    if _U32.unpack(value)[0] != fingerprint(data[:offset]):
        raise StunDecodeError("STUN FINGERPRINT does not match")


def _decode_header(data: bytes) -> Message:
    """
    A message with no attributes yet, from C{data}'s header, which must
    announce exactly the bytes that follow it.
    """
    if len(data) < HEADER_LENGTH:
        raise StunDecodeError("STUN message is shorter than its 20-byte header")
    msg_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunDecodeError("STUN message type has its top two bits set")
    if length % 4:
        raise StunDecodeError("STUN message length is not a multiple of 4")
    if HEADER_LENGTH + length != len(data):
        raise StunDecodeError(
            f"STUN message length {length} does not match "
            f"{len(data) - HEADER_LENGTH} bytes of attributes"
        )
    method, cls = split_message_type(msg_type)
    message = Message(method=method, cls=cls, transaction_id=transaction_id, raw=data)
    if cookie != MAGIC_COOKIE:
        message.legacy_cookie = data[4:8]
    return message


def decode(data: bytes) -> Message:
    """
    Decode one STUN message that fills C{data} exactly.

    Attributes after MESSAGE-INTEGRITY are ignored except
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and after
    MESSAGE-INTEGRITY-SHA256 all but FINGERPRINT (RFC 8489 section 14.5/6);
    a FINGERPRINT that is wrong or not last is a decode error, because it
    is how STUN is told apart from other protocols on one port.

    @raise StunDecodeError: for anything malformed.
    """
    message = _decode_header(data)
    transaction_id = message.transaction_id
    attributes = message.attributes
    offset = HEADER_LENGTH
    after_integrity = after_sha256 = False
    count = 0
    while offset < len(data):
        count += 1
        if count > MAX_ATTRIBUTES:
            raise StunDecodeError(f"STUN message has more than {MAX_ATTRIBUTES} attributes")
        if len(data) - offset < 4:
            raise StunDecodeError("STUN attribute header is truncated")
        attr_type, attr_length = _ATTR_HEADER.unpack_from(data, offset)
        end = offset + 4 + attr_length
        if end > len(data):
            raise StunDecodeError(f"STUN attribute 0x{attr_type:04x} is longer than the message")
        value = data[offset + 4 : end]
        if attr_type == Attr.FINGERPRINT:
            _check_fingerprint(data, offset, end + padding(attr_length), value)
            message.has_fingerprint = True
            attributes.append((attr_type, value))
        elif after_sha256:
            pass
        elif attr_type == Attr.MESSAGE_INTEGRITY_SHA256:
            ATTRIBUTES[attr_type].unpack(value, transaction_id)
            message.integrity_sha256_offset = offset
            attributes.append((attr_type, value))
            after_sha256 = True
        elif after_integrity:
            pass
        else:
            if attr_type == Attr.MESSAGE_INTEGRITY:
                ATTRIBUTES[attr_type].unpack(value, transaction_id)
                message.integrity_offset = offset
                after_integrity = True
            attributes.append((attr_type, value))
        offset = end + padding(attr_length)
    if offset != len(data):
        raise StunDecodeError("STUN attribute padding runs past the message")
    return message


def encode(
    message: Message,
    key: bytes | None = None,
    *,
    sha256: bool = False,
    add_fingerprint: bool = False,
    pad_byte: bytes = b"\x00",
) -> bytes:
    """
    Encode C{message}, appending MESSAGE-INTEGRITY (or, with C{sha256},
    MESSAGE-INTEGRITY-SHA256) keyed by C{key}, then FINGERPRINT.

    Attributes already in C{message} of those three types are written as
    given, which the tests use to build broken messages.  C{pad_byte} is
    what fills attribute padding (RFC 5769's vectors use spaces).
    """
    body = bytearray()
    for attr_type, value in message.attributes:
        body += _ATTR_HEADER.pack(attr_type, len(value))
        body += value
        body += pad_byte * padding(len(value))
    msg_type = message_type(message.method, message.cls)
    if message.legacy_cookie is not None:
        head = struct.pack("!HH", msg_type, 0) + message.legacy_cookie
    else:
        head = struct.pack("!HH", msg_type, 0) + MAGIC_COOKIE_BYTES
    head += message.transaction_id
    if key is not None:
        if sha256:
            attr_type, digest, size = Attr.MESSAGE_INTEGRITY_SHA256, hashlib.sha256, 32
        else:
            attr_type, digest, size = Attr.MESSAGE_INTEGRITY, hashlib.sha1, 20
        covered = _set_length(head, len(body) + 4 + size) + body
        mac = hmac.new(key, bytes(covered), digest).digest()
        body += _ATTR_HEADER.pack(attr_type, size) + mac
    if add_fingerprint:
        covered = _set_length(head, len(body) + 8) + body
        body += _ATTR_HEADER.pack(Attr.FINGERPRINT, 4) + _U32.pack(fingerprint(bytes(covered)))
    return bytes(_set_length(head, len(body)) + body)


def _set_length(head: bytes, length: int) -> bytes:
    return head[:2] + _U16.pack(length) + head[4:]


def response_to(request: Message, cls: int) -> Message:
    """
    A response skeleton that echoes the request's method and transaction.
    """
    return Message(
        method=request.method,
        cls=cls,
        transaction_id=request.transaction_id,
        legacy_cookie=request.legacy_cookie,
    )


def error_response(request: Message, code: int, reason: str | None = None) -> Message:
    response = response_to(request, Class.ERROR)
    response.add(Attr.ERROR_CODE, (code, reason or ERROR_REASONS.get(code, "")))
    return response


# -- ChannelData -----------------------------------------------------------


#: ChannelData starts with 0b01: channels 0x4000-0x7FFF, the RFC 5766
#: range that deployed clients still use.  The hot path compares the first
#: byte against these two inline, and unpacks CHANNEL_DATA_HEADER itself.
CHANNEL_DATA_FIRST_BYTE_MIN = 0x40
CHANNEL_DATA_FIRST_BYTE_MAX = 0x7F


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """
    Split one ChannelData message into C{(channel, payload)}.

    @raise StunDecodeError: if the frame is shorter than its length says.
    """
    if len(data) < CHANNEL_HEADER_LENGTH:
        raise StunDecodeError("ChannelData is shorter than its 4-byte header")
    channel, length = CHANNEL_DATA_HEADER.unpack_from(data)
    if CHANNEL_HEADER_LENGTH + length > len(data):
        raise StunDecodeError(f"ChannelData length {length} exceeds its {len(data) - 4} bytes")
    return channel, data[4 : 4 + length]


def encode_channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    """
    One ChannelData message; padded to 4 bytes on stream transports.
    """
    frame = CHANNEL_DATA_HEADER.pack(channel, len(payload)) + payload
    if pad:
        frame += b"\x00" * padding(len(payload))
    return frame


_SEND_INDICATION_TYPE = message_type(Method.SEND, Class.INDICATION)
#: A Send indication's header, an IPv4 XOR-PEER-ADDRESS and the DATA
#: attribute's header: the shape browsers send, parsed in one unpack.
_SEND_PREFIX = struct.Struct("!HHI12sHHxBH4sHH")
_FINGERPRINT_HEADER = _ATTR_HEADER.pack(0x8028, 4)


def send_indication_parts(data: bytes) -> tuple[Address, bytes] | None:
    """
    C{(peer, payload)} of a Send indication of the common shape (an IPv4
    XOR-PEER-ADDRESS, then DATA, then FINGERPRINT or nothing), without
    building a L{Message}; C{None} for anything else, which L{decode}
    then handles (and drops, if it is malformed).  Where it answers, it
    answers what L{decode} and L{Message.get} would (C{tests.test_stun}
    checks that on generated and mutated messages).
    """
    if len(data) < _SEND_PREFIX.size:
        return None
    (
        msg_type, length, cookie, _, peer_type, peer_length, family, port, host,
        data_type, data_length,
    ) = _SEND_PREFIX.unpack_from(data)  # fmt: skip
    if (
        msg_type != _SEND_INDICATION_TYPE
        or cookie != MAGIC_COOKIE
        or HEADER_LENGTH + length != len(data)
        or peer_type != 0x0012
        or peer_length != 8
        or family != FAMILY_IPV4
        or data_type != 0x0013
    ):
        return None
    start = _SEND_PREFIX.size
    end = start + data_length + (-data_length % 4)
    if end != len(data):
        if end + 8 != len(data) or data[end : end + 4] != _FINGERPRINT_HEADER:
            return None
        if _U32.unpack_from(data, end + 4)[0] != fingerprint(data[:end]):
            return None
    peer = socket.inet_ntoa(_U32.pack(_U32.unpack(host)[0] ^ MAGIC_COOKIE))
    return (peer, port ^ (MAGIC_COOKIE >> 16)), data[start : start + data_length]


_DATA_INDICATION_TYPE = message_type(Method.DATA, Class.INDICATION)
_INDICATION_HEADER = struct.Struct("!HH4s8sI")


def xor_peer_attribute(peer: Address, transaction_id: bytes) -> bytes:
    """
    An encoded XOR-PEER-ADDRESS attribute, header included.  For an IPv4
    peer it does not depend on C{transaction_id} (only the magic cookie
    is mixed in), so a sender may keep it per peer.
    """
    value = pack_xor_address(peer, transaction_id)
    return _ATTR_HEADER.pack(Attr.XOR_PEER_ADDRESS, len(value)) + value


_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def encode_data_indication(
    txid_prefix: bytes,
    counter: int,
    peer: Address,
    attr_type: int,
    value: bytes,
    peer_attribute: bytes | None = None,
) -> bytes:
    """
    A Data indication from C{peer} carrying one more attribute (DATA, or
    ICMP), built from precompiled structs without a L{Message}: the hot
    path for peers without a channel (Firefox relays this way).

    The transaction id is C{txid_prefix} (8 bytes) and a 32-bit
    C{counter}: unique, as indications need, without a random draw per
    packet.  C{peer_attribute} is the XOR-PEER-ADDRESS attribute when the
    caller kept it (L{xor_peer_attribute}, IPv4 peers only).
    """
    if peer_attribute is None:
        peer_attribute = xor_peer_attribute(peer, txid_prefix + counter.to_bytes(4, "big"))
    length = len(value)
    pad = _PADDING[length & 3]
    return b"".join(
        (
            _INDICATION_HEADER.pack(
                _DATA_INDICATION_TYPE,
                len(peer_attribute) + 4 + length + len(pad),
                MAGIC_COOKIE_BYTES,
                txid_prefix,
                counter,
            ),
            peer_attribute,
            _ATTR_HEADER.pack(attr_type, length),
            value,
            pad,
        )
    )


def family_of(host: str) -> int:
    """
    The STUN family code of an address literal.
    """
    return FAMILY_IPV6 if ipaddress.ip_address(host).version == 6 else FAMILY_IPV4
