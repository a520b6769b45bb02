# -*- test-case-name: tests.test_probe -*-
"""
The client side of STUN long-term credentials (RFC 8489 section 9.2):
requests signed with what the last 401 or 438 taught, through the
server's own codec.  The probe (L{txturn.tools.probe}) and the tests speak
through it.
"""

from __future__ import annotations

import os
from typing import Any

from txturn.auth.credentials import long_term_key
from txturn.wire.stun import ATTRIBUTES, Attr, Class, Message, PasswordAlgorithm, decode, encode

__all__ = ["StunClient"]


class StunClient:
    """
    Builds requests as a TURN client would, learning REALM and NONCE from
    401/438 answers so a test can say C{client.request(Method.ALLOCATE,
    ...)} and get a correctly authenticated message.
    """

    def __init__(
        self,
        username: str,
        password: str,
        algorithm: int = PasswordAlgorithm.MD5,
        fingerprint: bool = True,
    ) -> None:
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.fingerprint = fingerprint
        self.realm: str | None = None
        self.nonce: str | None = None
        self.algorithms: list[tuple[int, bytes]] | None = None

    @property
    def key(self) -> bytes:
        assert self.realm is not None
        return long_term_key(self.username, self.realm, self.password, self.algorithm)

    def learn(self, data: bytes) -> Message:
        """
        Decode a response and remember its REALM, NONCE and algorithms.
        """
        message = decode(data)
        realm = message.get(Attr.REALM)
        if realm is not None:
            self.realm = realm
        nonce = message.get(Attr.NONCE)
        if nonce is not None:
            self.nonce = nonce
        algorithms = message.get(Attr.PASSWORD_ALGORITHMS)
        if algorithms is not None:
            self.algorithms = algorithms
        return message

    @staticmethod
    def challenged(response: Message) -> bool:
        """
        Whether C{response} is a 401 or 438: a client that has L{learn}t
        from it sends its request again.
        """
        return response.cls == Class.ERROR and response.get(Attr.ERROR_CODE)[0] in (401, 438)

    def request(
        self,
        method: int,
        attributes: list[tuple[int, Any]] | None = None,
        *,
        authenticate: bool = True,
        sha256: bool = False,
        transaction_id: bytes | None = None,
        cls: int = Class.REQUEST,
    ) -> bytes:
        message = Message(method, cls, transaction_id or os.urandom(12))
        for attr_type, value in attributes or []:
            if attr_type in ATTRIBUTES:
                message.add(attr_type, value)
            else:
                message.add_raw(attr_type, value)  # one with no codec: as given
        key = None
        if authenticate and self.nonce is not None:
            assert self.realm is not None
            message.add(Attr.USERNAME, self.username)
            message.add(Attr.REALM, self.realm)
            message.add(Attr.NONCE, self.nonce)
            if self.algorithm != PasswordAlgorithm.MD5:
                message.add(Attr.PASSWORD_ALGORITHMS, self.algorithms or [])
                message.add(Attr.PASSWORD_ALGORITHM, (self.algorithm, b""))
            key = self.key
        return encode(message, key, sha256=sha256, add_fingerprint=self.fingerprint)
