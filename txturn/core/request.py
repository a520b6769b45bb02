# -*- test-case-name: tests.test_server -*-
"""
One STUN request as a handler sees it: where it came from, what it says,
who sent it once authenticated, and the one way to answer it.

Every answer goes through L{Request.answer}, which adds SOFTWARE, signs
with the sender's key once the request is authenticated, adds
FINGERPRINT when the request had one, and sends it back on the channel
the request came in on; so no handler can forget any of them.
L{Request.result} remembers how the request was answered (0 for success,
else the error code), for whatever watches the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from txturn.auth.policy import CredentialPolicy
from txturn.core.authenticator import AuthContext
from txturn.core.events import RequestAnswered
from txturn.core.interfaces import Address, IClientChannel
from txturn.wire.stun import Attr, Class, Message, encode, error_response, response_to


@dataclass
class Request:
    """
    A request (or indication) being handled.

    @ivar software: the SOFTWARE attribute answers carry, or C{None}.
    @ivar auth: who sent it and the key that signs answers, once
        authenticated.
    @ivar result: C{None} until answered; then 0 for a success, or the
        error code.
    """

    client: IClientChannel
    address: Address
    message: Message
    software: str | None = None
    auth: AuthContext | None = None
    result: int | None = field(default=None)
    #: Where the L{RequestAnswered} event goes, once.
    emit: Callable[[object], None] | None = None

    # -- what the request says ---------------------------------------------------

    @property
    def method(self) -> int:
        return self.message.method

    @property
    def transaction_id(self) -> bytes:
        return self.message.transaction_id

    def get(self, attr_type: int, default: Any = None) -> Any:
        return self.message.get(attr_type, default)

    def get_all(self, attr_type: int) -> list[Any]:
        return self.message.get_all(attr_type)

    def has(self, attr_type: int) -> bool:
        return self.message.has(attr_type)

    @property
    def username(self) -> str:
        """
        The authenticated user (only once L{auth} is set).
        """
        assert self.auth is not None
        return self.auth.username

    @property
    def policy(self) -> CredentialPolicy:
        """
        What the credential restricts (only once L{auth} is set).
        """
        assert self.auth is not None
        return self.auth.policy

    # -- answering ------------------------------------------------------------------

    def answer(self, response: Message) -> bytes:
        """
        Send C{response}: with SOFTWARE, signed once authenticated, with
        FINGERPRINT if the request had one.  Returns the bytes sent.
        """
        if self.software:
            response.add(Attr.SOFTWARE, self.software)
        auth = self.auth
        data = encode(
            response,
            auth.key if auth is not None else None,
            sha256=auth.sha256 if auth is not None else False,
            add_fingerprint=self.message.has_fingerprint,
        )
        self.client.send(data, self.address)
        if self.result is None:
            self.result = response.get(Attr.ERROR_CODE)[0] if response.cls == Class.ERROR else 0
            if self.emit is not None:
                self.emit(
                    RequestAnswered(
                        self.message.method,
                        self.result,
                        self.address,
                        self.client.transport_name,
                        auth.username if auth is not None else None,
                    )
                )
        return data

    def succeed(self, *attributes: tuple[int, Any]) -> bytes:
        """
        Answer with a success response carrying C{attributes}.
        """
        response = response_to(self.message, Class.SUCCESS)
        for attr_type, value in attributes:
            response.add(attr_type, value)
        return self.answer(response)

    def fail(self, code: int, reason: str | None = None, *attributes: tuple[int, Any]) -> None:
        """
        Answer with error C{code} (and C{reason}, else the standard one),
        carrying C{attributes}.
        """
        response = error_response(self.message, code, reason)
        for attr_type, value in attributes:
            response.add(attr_type, value)
        self.answer(response)
