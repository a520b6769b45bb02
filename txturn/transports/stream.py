# -*- test-case-name: tests.test_framing -*-
"""
TURN over TCP and TLS: a C{Protocol} per connection that frames the byte
stream and hands each frame to the core with itself as the client channel.

The connection is the allocation's 5-tuple: when it closes, its
allocation is deleted (RFC 8656 section 3.4).  TLS is the same protocol
behind Twisted's C{TLSMemoryBIOFactory}.

What the server writes to a client that reads slowly is capped: the
protocol registers itself as a push producer on its own transport, which
pauses it when its buffer passes the transport's C{bufferSize} (64 KiB by
default, or C{max_buffer}), and while paused relayed frames are dropped,
as they would be on UDP.  So a client that stops reading cannot make the
server hold more than that for it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.core.counters import Counter
from txturn.core.forwarding import IForwarding
from txturn.core.interfaces import (
    Address,
    IConnectionHandoff,
    IPeerConnection,
    IStreamClientChannel,
    host_port,
)
from txturn.core.server import TurnServer
from txturn.fastpath.forwarding import client_key, user_space
from txturn.transports.admission import StreamGuard
from txturn.util.log_level import logger
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import StunDecodeError


@implementer(IStreamClientChannel, IPushProducer, IHandshakeListener)
class TurnStreamProtocol(Protocol):
    """
    One TCP or TLS connection from a client.

    @ivar frames: frames handed to the core so far; with L{buffered}, what
        the L{StreamGuard} reads to tell a stalled frame from a slow one.
    @ivar handshake_done: whether the TLS handshake has finished (always,
        for TCP).
    """

    log = logger()
    stream = True
    #: The key the fast path knows this connection by (a negative number,
    #: apart from every descriptor), when it forwards for streams.
    forwarding_handle: int | None = None
    #: The compiled C{forward_frames}, bound once: whole ChannelData and
    #: Send frames at the head of the buffer go to peers without a Python
    #: call each.
    _forward_frames: Callable[[int, Address, bytearray], tuple[int, int]] | None = None
    #: (client, local) addresses of a connection another worker
    #: terminates and forwards here over a socket pair (TLS under
    #: C{--workers}); C{None} for a connection of our own.
    forwarded: tuple[Address, Address] | None = None

    def __init__(
        self,
        server: TurnServer,
        transport_name: str,
        max_buffer: int | None = None,
        forwarding: object = None,
    ) -> None:
        self._server = server
        self._key = 0
        compiled = user_space(forwarding)
        if compiled is not None:
            self._key = client_key()
            self.forwarding_handle = self._key
            self._forward_frames = compiled.forwarder.forward_frames
        self.transport_name = transport_name
        self._max_buffer = max_buffer
        #: Whether the transport's buffer is full: relayed frames are dropped.
        self.congested = False
        self.local_address: Address = ("", 0)
        self.peer_address: Address = ("", 0)
        self.peer_host = ""
        self.handshake_done = transport_name != "tls"
        self.frames = 0
        #: Whether this connection has been given to another worker (it
        #: is that worker's from then on), or came from one: a connection
        #: is handed off at most once, so ConnectionBinds cannot bounce it
        #: between workers.
        self.handed_off = False
        self.handed_in = False
        self._framer = StreamFramer()
        #: The peer data connection, once this is a client data connection.
        self._peer: IPeerConnection | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.forwarded is not None:
            self.peer_address, self.local_address = self.forwarded
            self.handshake_done = True  # done by the worker that forwards
        else:
            peer: Any = self.transport.getPeer()
            host: Any = self.transport.getHost()
            self.peer_address = (peer.host, peer.port)
            self.local_address = (host.host, host.port)
        self.peer_host = self.peer_address[0]
        transport: Any = self.transport
        if self._max_buffer is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = self._max_buffer
        transport.registerProducer(self, True)
        if isinstance(self.factory, TurnStreamFactory):
            self.factory.connections.add(self)
            if self.factory.guard is not None:
                self.factory.guard.add(self)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    @property
    def is_data_connection(self) -> bool:
        return self._peer is not None

    def dataReceived(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.write(data)
            return
        if self.handed_off:
            return  # another worker's now; the socket has the rest
        self._framer.append(data)
        forward = self._forward_frames
        while self._peer is None and not self.handed_off:
            if forward is not None and self._framer.buffered >= 4:
                consumed, frames = forward(self._key, self.peer_address, self._framer.head())
                if consumed:
                    self._framer.consume(consumed)
                    self.frames += frames
            try:
                frame = self._framer.next_frame()
            except StunDecodeError as e:
                self.log.info(
                    "Closing {transport} connection from {client}: {error}",
                    transport=self.transport_name,
                    client=host_port(self.peer_address),
                    error=str(e),
                )
                assert self.transport is not None
                self.transport.loseConnection()
                return
            if frame is None:
                return
            self.frames += 1
            self._server.datagram_received(self, frame, self.peer_address)

    def attach(self, peer: IPeerConnection) -> None:
        """
        After a successful ConnectionBind: this connection now carries raw
        bytes to and from C{peer}, starting with whatever followed the
        ConnectionBind request.  The peer connection becomes this
        transport's producer, for end-to-end flow control.
        """
        self._peer = peer
        assert self.transport is not None
        transport: Any = self.transport
        transport.unregisterProducer()
        peer.attach(self.transport)
        remaining = self._framer.take_remaining()
        if remaining:
            peer.write(remaining)

    def hand_off(self, worker: int, frame: bytes) -> bool:
        """
        Pass this connection, with the ConnectionBind C{frame} read from
        it and whatever the client sent right behind it, to the worker
        that holds the peer connection it names: once, and never a
        connection another worker passed here.
        """
        handoff = getattr(self.factory, "handoff", None)
        if handoff is None or self.transport is None or self.handed_off or self.handed_in:
            return False
        behind = self._framer.take_remaining()
        if not handoff.hand_off(worker, self, frame + behind):
            self._framer.append(behind)
            return False
        self.handed_off = True
        return True

    def send(self, data: bytes, address: Address) -> None:
        if self.congested:
            self._server.count(Counter.DROPPED_CONGESTED)
            return
        if self.transport is not None:
            self.transport.write(data)

    def relayed(self, data: bytes, frames: int) -> None:
        """
        C{frames} frames from peers the fast path framed for this client,
        joined: written as L{send} writes one, in order with it.
        """
        if self.congested:
            for _ in range(frames):
                self._server.count(Counter.DROPPED_CONGESTED)
            return
        if self.transport is not None:
            self.transport.write(data)

    # IPushProducer: the transport tells us when its buffer is full.

    def pauseProducing(self) -> None:
        self.congested = True

    def resumeProducing(self) -> None:
        self.congested = False

    def stopProducing(self) -> None:
        self.congested = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if isinstance(self.factory, TurnStreamFactory):
            self.factory.connections.discard(self)
            if self.factory.guard is not None:
                self.factory.guard.remove(self)
        if self._peer is not None:
            peer, self._peer = self._peer, None
            peer.close()
        self._server.connection_lost(self)


class TurnStreamFactory(Factory):
    """
    Builds a L{TurnStreamProtocol} per accepted connection.
    """

    noisy = False

    def __init__(
        self,
        server: TurnServer,
        transport_name: str,
        max_buffer: int | None = None,
        guard: StreamGuard | None = None,
        handoff: IConnectionHandoff | None = None,
        forwarding: IForwarding | None = None,
    ) -> None:
        self._server = server
        #: The fast path, which forwards for this factory's connections too.
        self._forwarding = forwarding
        self._transport_name = transport_name
        self._max_buffer = max_buffer
        #: Deadlines and caps, when the service set them up.
        self.guard = guard
        #: Where a ConnectionBind for another worker's connection goes.
        self.handoff = handoff
        self.connections: set[TurnStreamProtocol] = set()

    def buildProtocol(self, addr: object) -> TurnStreamProtocol:
        protocol = TurnStreamProtocol(
            self._server, self._transport_name, self._max_buffer, self._forwarding
        )
        protocol.factory = self
        return protocol

    def disconnect_all(self) -> None:
        """
        Close every client connection (when the service stops).
        """
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
