# -*- test-case-name: tests.test_proxy_protocol -*-
"""
The PROXY protocol header (HAProxy's, versions 1 and 2), with which a load
balancer tells the server whose connection it is forwarding: parsed from
the bytes a connection starts with.  Pure: bytes in, addresses out.

Only trusted balancers may send one (L{txturn.transports.proxy} decides);
even so, every length is checked before use, the header is bounded
(L{MAX_HEADER}), and the addresses are parsed and written canonically, as
every address the core sees is.

Twisted ships parsers for both versions, but privately (only
C{proxyEndpoint} is public, and it applies to every connection of a
listener and starts the wrapped protocol before the header is read);
txturn needs the header read first, from trusted sources only, so that
admission and per-source limits count the real client.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

Address = tuple[str, int]

#: Version 2's signature.
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: Version 1's longest line, CRLF included (the specification's 107).
MAX_V1 = 107

#: Most bytes of a version 2 header accepted (its addresses and TLVs):
#: HAProxy's TLVs fit many times over; more is refused, not buffered.
MAX_V2_BODY = 2048

#: The most a parser may have to hold before it decides.
MAX_HEADER = 16 + MAX_V2_BODY

_V2_HEAD = struct.Struct("!12sBBH")


class ProxyHeaderError(Exception):
    """
    Not a PROXY header, or a malformed one.
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    What a balancer said: the client (C{source}) and the address it
    connected to (C{destination}); both C{None} for a header that names
    no connection (version 2's LOCAL, a balancer's own health check, or
    version 1's UNKNOWN).  C{length} is how many bytes the header took.
    """

    source: Address | None
    destination: Address | None
    length: int
    datagram: bool = False


def parse(data: bytes) -> ProxyHeader | None:
    """
    The header at the start of C{data}; C{None} if more bytes are needed
    to tell.

    @raise ProxyHeaderError: if C{data} does not start with a header, or
        the header is malformed.
    """
    if data[: len(SIGNATURE)] == SIGNATURE[: len(data)] and data[:1] == b"\r":
        return _parse_v2(data)
    if data[:6] == b"PROXY "[: len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, None, end + 2)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 header malformed")
    version = 4 if fields[1] == "TCP4" else 6
    source = _address(fields[2], fields[4], version)
    destination = _address(fields[3], fields[5], version)
    return ProxyHeader(source, destination, end + 2)


def _address(host: str, port: str, version: int) -> Address:
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {host[:64]!r} malformed") from None
    if parsed.version != version:
        raise ProxyHeaderError("PROXY v1 address of the wrong family")
    if not port.isdigit() or len(port) > 5 or int(port) > 65535 or port != str(int(port)):
        raise ProxyHeaderError("PROXY v1 port malformed")
    return str(parsed), int(port)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_HEAD.size:
        return None
    _, version_command, family_protocol, length = _V2_HEAD.unpack_from(data)
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 header of another version")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError("PROXY v2 command unknown")
    if length > MAX_V2_BODY:
        raise ProxyHeaderError("PROXY v2 header too long")
    total = _V2_HEAD.size + length
    if len(data) < total:
        return None
    body = data[_V2_HEAD.size : total]
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if command == 0 or family == 0:
        # LOCAL (the balancer's own check), or UNSPEC: the connection is
        # the balancer's; its addresses stand.
        return ProxyHeader(None, None, total)
    if protocol not in (1, 2):
        raise ProxyHeaderError("PROXY v2 transport unknown")
    source, destination = _v2_addresses(family, body)
    return ProxyHeader(source, destination, total, datagram=protocol == 2)


def _v2_addresses(family: int, body: bytes) -> tuple[Address, Address]:
    """
    Version 2's source and destination, for C{family} 1 (IPv4) or 2 (IPv6).
    """
    size = {1: 4, 2: 16}.get(family)
    if size is None:
        raise ProxyHeaderError("PROXY v2 address family not IP")
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 addresses truncated")
    kind = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
    return (
        (str(kind(body[:size])), source_port),
        (str(kind(body[size : 2 * size])), destination_port),
    )


def v1(source: Address, destination: Address) -> bytes:
    """
    A version 1 header, for tests and tools.
    """
    kind = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def v2(source: Address, destination: Address, datagram: bool = False, local: bool = False) -> bytes:
    """
    A version 2 header, for tests and tools (the UDP test client writes
    these before each datagram).
    """
    six = ":" in source[0]
    family = (0x20 if six else 0x10) | (0x02 if datagram else 0x01)
    addresses = (
        ipaddress.ip_address(source[0]).packed
        + ipaddress.ip_address(destination[0]).packed
        + struct.pack("!HH", source[1], destination[1])
    )
    return _V2_HEAD.pack(SIGNATURE, 0x20 if local else 0x21, family, len(addresses)) + addresses
