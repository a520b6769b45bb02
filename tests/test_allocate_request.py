"""
Tests for L{txturn.core.methods.allocate_attributes}: what an Allocate means, or the
refusal it earns, as a pure function of the message.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txturn.core.methods.allocate_attributes import AllocateRequest, Refusal, parse_allocate
from txturn.wire.stun import FAMILY_IPV4, FAMILY_IPV6, Attr, Class, Message, Method


def allocate(*attributes: tuple[int, Any]) -> Message:
    message = Message(Method.ALLOCATE, Class.REQUEST, b"t" * 12)
    for attr_type, value in attributes:
        message.add(attr_type, value)
    return message


def parse(
    *attributes: tuple[int, Any], udp: bool = True, tcp: bool = True, stream: bool = False
) -> Any:
    return parse_allocate(allocate(*attributes), udp, tcp, stream)


UDP = (Attr.REQUESTED_TRANSPORT, 17)
TCP = (Attr.REQUESTED_TRANSPORT, 6)


class ParseTests(SynchronousTestCase):
    def test_plain_udp(self) -> None:
        self.assertEqual(parse(UDP), AllocateRequest())
        self.assertEqual(parse(UDP).places, 1)

    def test_refusals(self) -> None:
        """
        Each rule of RFC 8656 section 7.2 and RFC 6062 section 5.1 has its
        code.
        """
        cases: list[tuple[tuple[Any, ...], dict[str, bool], int]] = [
            ((), {}, 400),
            (((Attr.REQUESTED_TRANSPORT, 99),), {}, 442),
            ((UDP,), {"udp": False}, 403),
            ((TCP,), {"tcp": False}, 442),
            ((TCP,), {"stream": False}, 400),
            ((TCP, (Attr.EVEN_PORT, False)), {"stream": True}, 400),
            ((TCP, (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)), {"stream": True}, 400),
            ((TCP, (Attr.REQUESTED_ADDRESS_FAMILY, 3)), {"stream": True}, 440),
            ((UDP, (Attr.RESERVATION_TOKEN, b"t" * 8), (Attr.EVEN_PORT, False)), {}, 400),
            (
                (
                    UDP,
                    (Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4),
                    (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6),
                ),
                {},
                400,
            ),
            ((UDP, (Attr.REQUESTED_ADDRESS_FAMILY, 3)), {}, 440),
            ((UDP, (Attr.EVEN_PORT, True), (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)), {}, 400),
            ((UDP, (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV4)), {}, 400),
        ]
        for attributes, switches, code in cases:
            result = parse(*attributes, **switches)
            self.assertIsInstance(result, Refusal, attributes)
            self.assertEqual(result.code, code, attributes)

    def test_meanings(self) -> None:
        self.assertEqual(
            parse(UDP, (Attr.EVEN_PORT, True), (Attr.DONT_FRAGMENT, True)),
            AllocateRequest(even_port=True, reserve=True, dont_fragment=True),
        )
        self.assertEqual(parse(UDP, (Attr.EVEN_PORT, True)).places, 2)
        self.assertEqual(parse(UDP, (Attr.RESERVATION_TOKEN, b"t" * 8)).token, b"t" * 8)
        dual = parse(UDP, (Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertTrue(dual.dual)
        self.assertEqual(dual.error_attribute, Attr.ADDRESS_ERROR_CODE)
        legacy = parse(UDP, (Attr.LEGACY_ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertEqual(legacy.error_attribute, Attr.LEGACY_ADDRESS_ERROR_CODE)
        self.assertEqual(
            parse(TCP, (Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6), stream=True),
            AllocateRequest(tcp=True, family=FAMILY_IPV6),
        )
