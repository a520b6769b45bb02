# -*- test-case-name: tests.test_framing -*-
"""
TURN over TCP and TLS: a C{Protocol} per connection that frames the byte
stream and hands each frame to the core with itself as the client channel.

The connection is the allocation's 5-tuple: when it closes, its
allocation is deleted (RFC 8656 section 3.4).  TLS is the same protocol
behind Twisted's C{TLSMemoryBIOFactory}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.framing import StreamFramer
from txturn.interfaces import Address, IClientChannel, IPeerConnection
from txturn.server import TurnServer
from txturn.stun import StunDecodeError


@implementer(IClientChannel)
class TurnStreamProtocol(Protocol):
    """
    One TCP or TLS connection from a client.
    """

    log = Logger()

    def __init__(self, server: TurnServer, transport_name: str) -> None:
        self._server = server
        self.transport_name = transport_name
        self.local_address: Address = ("", 0)
        self.peer_address: Address = ("", 0)
        self._framer = StreamFramer()
        #: The peer data connection, once this is a client data connection.
        self._peer: IPeerConnection | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer: Any = self.transport.getPeer()
        host: Any = self.transport.getHost()
        self.peer_address = (peer.host, peer.port)
        self.local_address = (host.host, host.port)
        if isinstance(self.factory, TurnStreamFactory):
            self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.write(data)
            return
        self._framer.append(data)
        while self._peer is None:
            try:
                frame = self._framer.next_frame()
            except StunDecodeError as e:
                self.log.info(
                    "Closing {transport} connection from {client}: {error}",
                    transport=self.transport_name,
                    client=self.peer_address,
                    error=str(e),
                )
                assert self.transport is not None
                self.transport.loseConnection()
                return
            if frame is None:
                return
            self._server.datagram_received(self, frame, self.peer_address)

    def attach(self, peer: IPeerConnection) -> None:
        """
        After a successful ConnectionBind: this connection now carries raw
        bytes to and from C{peer}, starting with whatever followed the
        ConnectionBind request.
        """
        self._peer = peer
        peer.attach(self.transport)
        remaining = self._framer.take_remaining()
        if remaining:
            peer.write(remaining)

    def send(self, data: bytes, address: Address) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if isinstance(self.factory, TurnStreamFactory):
            self.factory.connections.discard(self)
        if self._peer is not None:
            peer, self._peer = self._peer, None
            peer.close()
        self._server.connection_lost(self)


class TurnStreamFactory(Factory):
    """
    Builds a L{TurnStreamProtocol} per accepted connection.
    """

    noisy = False

    def __init__(self, server: TurnServer, transport_name: str) -> None:
        self._server = server
        self._transport_name = transport_name
        self.connections: set[TurnStreamProtocol] = set()

    def buildProtocol(self, addr: object) -> TurnStreamProtocol:
        protocol = TurnStreamProtocol(self._server, self._transport_name)
        protocol.factory = self
        return protocol

    def disconnect_all(self) -> None:
        """
        Close every client connection (when the service stops).
        """
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
