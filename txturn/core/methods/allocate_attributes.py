# -*- test-case-name: tests.test_allocate_request -*-
"""
What an Allocate request asks for, as a pure function of the message:
L{parse_allocate} returns an L{AllocateRequest} or the L{Refusal} the
request earns (RFC 8656 section 7.2, RFC 6062 section 5.1, RFC 6156),
before any relay is opened.  The server then only does what the meaning
says.
"""

from __future__ import annotations

from dataclasses import dataclass

from txturn.wire.stun import FAMILY_IPV4, FAMILY_IPV6, Attr, Message

UDP = 17
TCP = 6


@dataclass(frozen=True)
class Refusal:
    """
    The error an Allocate earns, with the reason phrase to send.
    """

    code: int
    reason: str | None = None


@dataclass(frozen=True)
class AllocateRequest:
    """
    A valid Allocate.

    @ivar tcp: a TCP allocation (RFC 6062).
    @ivar family: the requested address family, or C{None} for the
        server's choice.
    @ivar dual: both families (ADDITIONAL-ADDRESS-FAMILY).
    @ivar error_attribute: where ADDRESS-ERROR-CODE goes in the answer:
        the RFC 8656 codepoint, or the draft one coturn's clients send.
    @ivar even_port: EVEN-PORT was present; C{reserve} when its R bit was
        set.
    @ivar token: a RESERVATION-TOKEN to redeem.
    """

    tcp: bool = False
    family: int | None = None
    dual: bool = False
    error_attribute: int = Attr.ADDRESS_ERROR_CODE
    even_port: bool = False
    reserve: bool = False
    token: bytes | None = None
    dont_fragment: bool = False

    @property
    def places(self) -> int:
        """
        Allocations this request holds against a quota: two when it
        reserves the next port too.
        """
        return 2 if self.reserve else 1


def parse_allocate(
    message: Message, udp_relays: bool, tcp_relays: bool, over_stream: bool
) -> AllocateRequest | Refusal:
    """
    The meaning of Allocate C{message}, or its refusal.

    @param udp_relays: whether UDP relays may be allocated (else 403).
    @param tcp_relays: whether TCP relays may be (else 442).
    @param over_stream: whether the request came over TCP or TLS (TCP
        allocations need that).
    """
    transport = message.get(Attr.REQUESTED_TRANSPORT)
    if transport is None:
        return Refusal(400, "Missing REQUESTED-TRANSPORT")
    if transport == TCP and tcp_relays:
        return _parse_tcp(message, over_stream)
    if transport != UDP:
        return Refusal(442)
    if not udp_relays:
        return Refusal(403, "UDP relays are disabled")
    return _parse_udp(message)


def _parse_udp(message: Message) -> AllocateRequest | Refusal:
    """
    RFC 8656 section 7.2's rules on families, EVEN-PORT and reservations.
    """
    token = message.get(Attr.RESERVATION_TOKEN)
    even = message.get(Attr.EVEN_PORT)
    family = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
    additional = message.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
    error_attribute = Attr.ADDRESS_ERROR_CODE
    if additional is None:
        # coturn's clients speak the draft codepoints; answer in kind.
        additional = message.get(Attr.LEGACY_ADDITIONAL_ADDRESS_FAMILY)
        if additional is not None:
            error_attribute = Attr.LEGACY_ADDRESS_ERROR_CODE
    if token is not None and (even is not None or family is not None or additional is not None):
        return Refusal(400, "RESERVATION-TOKEN with EVEN-PORT or an address family")
    if family is not None and additional is not None:
        return Refusal(400, "Both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY")
    if family is not None and family not in (FAMILY_IPV4, FAMILY_IPV6):
        return Refusal(440)
    if even and additional is not None:
        return Refusal(400, "EVEN-PORT reservation with ADDITIONAL-ADDRESS-FAMILY")
    if additional is not None and additional != FAMILY_IPV6:
        return Refusal(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
    return AllocateRequest(
        family=family,
        dual=additional is not None,
        error_attribute=error_attribute,
        even_port=even is not None,
        reserve=bool(even),
        token=token,
        dont_fragment=message.has(Attr.DONT_FRAGMENT),
    )


def _parse_tcp(message: Message, over_stream: bool) -> AllocateRequest | Refusal:
    """
    RFC 6062 section 5.1: a TCP relay, over a TCP or TLS connection only,
    without the UDP-only attributes.
    """
    if not over_stream:
        return Refusal(400, "TCP allocations need a TCP or TLS connection")
    for forbidden in (Attr.DONT_FRAGMENT, Attr.EVEN_PORT, Attr.RESERVATION_TOKEN):
        if message.has(forbidden):
            return Refusal(400, "DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN in a TCP Allocate")
    if message.has(Attr.ADDITIONAL_ADDRESS_FAMILY) or message.has(
        Attr.LEGACY_ADDITIONAL_ADDRESS_FAMILY
    ):
        return Refusal(400, "Dual TCP allocations are not supported")
    family = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
    if family is not None and family not in (FAMILY_IPV4, FAMILY_IPV6):
        return Refusal(440)
    return AllocateRequest(tcp=True, family=family)
