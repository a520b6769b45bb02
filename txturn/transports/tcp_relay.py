# -*- test-case-name: tests.test_tcp_relay,tests.test_tcp_allocation -*-
"""
TCP relays (RFC 6062): a listening socket on the relayed transport
address, outgoing connections from that same address and port, and the
peer data connections they carry.

The listening socket and every outgoing socket of a relay share one
address and port, which Linux allows with C{SO_REUSEPORT} on all of them.
An outgoing connect is a plain non-blocking C{connect} watched for
writability, then adopted by the reactor, because Twisted's C{connectTCP}
cannot set socket options before binding.

Before a ConnectionBind a peer data connection buffers what the peer
sends, up to C{buffer_limit} bytes, past which it closes (RFC 6062 section
7).  Once bound, the two connections are each other's producer and
consumer: when one side cannot take more, Twisted stops reading the
other, so a fast sender cannot grow the server's memory.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor, IReadWriteDescriptor
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.core.interfaces import (
    Address,
    ITcpRelay,
    ITcpRelayAllocator,
    RelayUnavailable,
    host_port,
)
from txturn.transports.joined import JoinedConnection
from txturn.transports.port_pool import PortPool
from txturn.transports.sockets import bound_socket
from txturn.transports.udp_relay import OUT_OF_DESCRIPTORS, raise_unavailable
from txturn.util.log_level import logger


class PeerConnectFailed(Exception):
    """
    A Connect to a peer could not be completed (refused, unreachable...).
    """


#: Bytes a peer may send before its data connection is bound.
DEFAULT_BUFFER_LIMIT = 64 * 1024


def _reusable_socket(host: str, port: int) -> socket.socket:
    return bound_socket(host, port, socket.SOCK_STREAM, reuse_port=True)


class PeerDataConnection(JoinedConnection):
    """
    A TCP connection between a relayed address and a peer, which keeps
    what the peer sends before the client binds, up to a limit.
    """

    log = logger()

    def __init__(self, relay: "TcpRelay", buffer_limit: int) -> None:
        super().__init__()
        self._relay = relay
        self._buffer_limit = buffer_limit
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.announce = True

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer: Any = self.transport.getPeer()
        self.peer_address = (peer.host, peer.port)
        self._relay.connections.add(self)
        if self.announce:
            self._relay.on_connection(self)

    def unattached(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > self._buffer_limit:
            self.log.info(
                "Closing unbound peer connection from {peer}: more than {limit} bytes buffered",
                peer=host_port(self.peer_address),
                limit=self._buffer_limit,
            )
            self.close()

    def attach(self, client: Any) -> None:
        """
        Relay to and from C{client}, a client data connection's transport:
        first what the peer sent before the bind, then everything, each
        side pausing the other when it cannot keep up.
        """
        assert self.transport is not None
        buffered, self._buffer = self._buffer, []
        self._buffered = 0
        for data in buffered:
            client.write(data)
        super().attach(client)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._relay.connections.discard(self)
        super().connectionLost(reason)


class _PeerFactory(Factory):
    noisy = False

    def __init__(self, relay: "TcpRelay", announce: bool) -> None:
        self._relay = relay
        self._announce = announce
        #: The last protocol built: adoptStreamConnection returns nothing.
        self.built: PeerDataConnection | None = None

    def buildProtocol(self, addr: object) -> PeerDataConnection:
        protocol = PeerDataConnection(self._relay, self._relay.buffer_limit)
        protocol.announce = self._announce
        self.built = protocol
        return protocol


@implementer(IReadWriteDescriptor)
class _Connecting:
    """
    A non-blocking connect in progress: writable means finished.
    """

    def __init__(
        self, reactor: Any, sock: socket.socket, relay: "TcpRelay", result: defer.Deferred[Any]
    ) -> None:
        self._reactor = reactor
        self._socket = sock
        self._relay = relay
        self._result = result
        reactor.addWriter(self)

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:
        return "TcpRelayConnect"

    def doRead(self) -> None:
        pass

    def doWrite(self) -> None:
        self._reactor.removeWriter(self)
        error = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._fail(PeerConnectFailed(errno.errorcode.get(error, str(error))))
            return
        factory = _PeerFactory(self._relay, False)
        try:
            self._reactor.adoptStreamConnection(self._socket.fileno(), self._socket.family, factory)
        except OSError as e:
            self._fail(PeerConnectFailed(str(e)))
            return
        self._socket.close()  # the reactor holds its own duplicate
        self._result.callback(factory.built)

    def cancel(self) -> None:
        self._reactor.removeWriter(self)
        self._socket.close()

    def _fail(self, error: Exception) -> None:
        self._socket.close()
        self._result.errback(error)

    def connectionLost(self, reason: Failure) -> None:
        self._fail(PeerConnectFailed("connection attempt lost"))


@implementer(IReadDescriptor)
class _Listening:
    """
    A relay's listening socket, accepted from directly: a Twisted port
    would log "starting on N" and "(TCP Port N Closed)" for every TCP
    allocation, where the allocation's own events say all there is.
    """

    #: Connections accepted per wake-up, so one busy relay cannot hold
    #: the reactor.
    per_wake = 16
    #: How long to stop accepting when the process is out of descriptors,
    #: rather than wake up for the same pending connection at once.
    backoff = 1.0

    def __init__(self, reactor: Any, sock: socket.socket, factory: Factory) -> None:
        self._reactor = reactor
        self._socket = sock
        self._factory = factory
        self._resume: Any = None
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:
        return "TcpRelay"

    def doRead(self) -> None:
        for _ in range(self.per_wake):
            try:
                connection, _address = self._socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in OUT_OF_DESCRIPTORS:
                    self._reactor.removeReader(self)
                    self._resume = self._reactor.callLater(self.backoff, self._start)
                return
            try:
                connection.setblocking(False)
                self._reactor.adoptStreamConnection(
                    connection.fileno(), connection.family, self._factory
                )
            except OSError:
                pass  # gone already, or no descriptor for the reactor's copy
            finally:
                connection.close()  # the reactor holds its own duplicate

    def _start(self) -> None:
        self._resume = None
        self._reactor.addReader(self)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._reactor.removeReader(self)
        self._socket.close()

    def connectionLost(self, reason: Failure) -> None:
        self.close()


@implementer(ITcpRelay)
class TcpRelay:
    """
    One TCP relayed transport address.
    """

    def __init__(
        self, allocator: "TcpRelayAllocator", reactor: Any, host: str, port: int, public: str
    ) -> None:
        self._allocator = allocator
        self._reactor = reactor
        self.address: Address = (host, port)
        self.advertised: Address = (public, port)
        self.on_connection: Callable[[Any], None] = lambda connection: connection.close()
        self.receiver: Any = None
        self.icmp_receiver: Any = None
        self.buffer_limit = allocator.buffer_limit
        self.connections: set[PeerDataConnection] = set()
        self._listening: _Listening | None = None
        self._attempts: set[_Connecting] = set()

    def listen(self) -> None:
        sock = _reusable_socket(*self.address)
        try:
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._listening = _Listening(self._reactor, sock, _PeerFactory(self, True))

    def connect(self, peer: Address) -> defer.Deferred[Any]:
        def cancel(d: defer.Deferred[Any]) -> None:
            attempt.cancel()
            self._attempts.discard(attempt)

        result: defer.Deferred[Any] = defer.Deferred(cancel)
        try:
            sock = _reusable_socket(*self.address)
        except OSError as e:
            return defer.fail(PeerConnectFailed(str(e)))
        error = sock.connect_ex(peer)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            return defer.fail(PeerConnectFailed(errno.errorcode.get(error, str(error))))
        attempt = _Connecting(self._reactor, sock, self, result)
        self._attempts.add(attempt)
        result.addBoth(self._settled, attempt)
        return result

    def _settled(self, result: Any, attempt: _Connecting) -> Any:
        self._attempts.discard(attempt)
        return result

    def close(self) -> object:
        for attempt in list(self._attempts):
            attempt.cancel()
        self._attempts.clear()
        for connection in list(self.connections):
            connection.close()
        self._allocator.release(self.address)
        if self._listening is not None:
            self._listening.close()
            self._listening = None
        return None


@implementer(ITcpRelayAllocator)
class TcpRelayAllocator:
    """
    Opens TCP relays in a L{PortPool}.
    """

    def __init__(
        self,
        reactor: Any,
        addresses: Sequence[str],
        min_port: int = 49152,
        max_port: int = 65535,
        external: dict[str, str] | None = None,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        attempts: int = 64,
    ) -> None:
        self._reactor = reactor
        self.pool = PortPool(addresses, min_port, max_port, external, attempts)
        self.families = self.pool.families
        self.buffer_limit = buffer_limit

    def release(self, address: Address) -> None:
        self.pool.release(address)

    def open_tcp(self, family: int) -> TcpRelay:
        host = self.pool.host(family)
        for port in self.pool.candidates(host):
            relay = TcpRelay(self, self._reactor, host, port, self.pool.public(host))
            try:
                relay.listen()
            except OSError as e:
                raise_unavailable(e.errno, host)
                continue
            self.pool.take(host, port)
            return relay
        raise RelayUnavailable(self.pool.exhausted(host))
