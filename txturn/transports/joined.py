# -*- test-case-name: tests.test_tcp_relay,tests.test_workers -*-
"""
L{JoinedConnection}: the other end of a client data connection (RFC
6062).  Once attached, bytes flow both ways, each side the other's
producer, so a slow reader pauses the fast writer instead of piling up
in memory.  A peer's TCP connection is one (L{txturn.transports.tcp_relay}); so is
the socket pair to another worker that a TLS data connection is spliced
through (L{txturn.workers.transfers}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.core.interfaces import Address, IPeerConnection


def _ignore(*args: Any) -> None:
    pass


@implementer(IPeerConnection)
class JoinedConnection(Protocol):
    """
    An L{IPeerConnection} over a stream transport.
    """

    def __init__(self, peer_address: Address = ("", 0)) -> None:
        self._client: Any = None
        self.peer_address = peer_address
        self.on_lost: Callable[[Any], None] = _ignore

    def attach(self, client: Any) -> None:
        """
        Carry bytes to and from C{client}, a client data connection's
        transport, each side pausing the other when it cannot keep up.
        """
        self._client = client
        transport: Any = self.transport
        client.registerProducer(transport, True)
        transport.registerProducer(client, True)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._client is not None:
            self._client.write(data)
        else:
            self.unattached(data)

    def unattached(self, data: bytes) -> None:
        """
        Bytes that arrived before L{attach}: dropped, unless a subclass
        keeps them.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.loseConnection()
        on_lost, self.on_lost = self.on_lost, _ignore
        on_lost(self)
