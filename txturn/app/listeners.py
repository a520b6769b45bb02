# -*- test-case-name: tests.test_service -*-
"""
The listeners of a L{txturn.app.service.TurnService}: which there are
(L{listener_addresses}), whether they can be had before twistd forks
(L{check_listeners}, L{check_relay_addresses}: one line,
L{StartupError}, not a traceback), and L{Listeners}, which makes what
each kind listens with, binds them all or none, gives a new certificate
to the TLS and DTLS ones, and closes them together.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any, Collection, Sequence

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from txturn.core.interfaces import Address
from txturn.core.server import TurnServer
from txturn.fastpath.forwarding import PumpedPort, pumping
from txturn.transports.admission import AdmissionFactory, ConnectionLimits, StreamGuard
from txturn.transports.dtls import DtlsListener
from txturn.transports.sockets import adopt_listener, listen_tcp, listen_udp
from txturn.transports.stream import TurnStreamFactory, TurnStreamProtocol
from txturn.transports.tls import ServerConnectionCreator, TlsCredentials
from txturn.transports.udp import TurnDatagramProtocol

if TYPE_CHECKING:
    from txturn.app.shard import Shard
    from txturn.core.forwarding import IForwarding

ALL_TRANSPORTS = frozenset(["udp", "tcp", "tls", "dtls"])


def listener_addresses(
    listen: Sequence[tuple[str, int]], transports: Collection[str], tls: bool, tls_port: int
) -> list[tuple[str, str, int]]:
    """
    (transport, host, port) of every client listener: UDP and TCP on each
    C{listen} address, TLS and DTLS on its host at C{tls_port} when there
    is a certificate.
    """
    wanted = []
    for host, port in listen:
        for name in ("udp", "tcp"):
            if name in transports:
                wanted.append((name, host, port))
        for name in ("tls", "dtls"):
            if tls and name in transports:
                wanted.append((name, host, tls_port))
    return wanted


class StartupError(RuntimeError):
    """
    A server that cannot start, for a reason an operator can fix, said in
    one line (C{twistd turn} prints it and exits 1, with no traceback).
    """


#: The socket type each kind of listener binds.
_SOCKET_TYPES = {
    "udp": socket.SOCK_DGRAM,
    "dtls": socket.SOCK_DGRAM,
    "tcp": socket.SOCK_STREAM,
    "tls": socket.SOCK_STREAM,
    "metrics": socket.SOCK_STREAM,
}


def check_listeners(listeners: Sequence[tuple[str, str, int]]) -> None:
    """
    Bind, and at once close, a socket like each listener's: a port that
    another process holds, or an address this host does not have, is a
    L{StartupError} before C{twistd} forks or starts logging, so the
    operator sees one line on the terminal in daemon mode too.

    @param listeners: (kind, host, port); port 0 is always free.
    """
    for name, host, port in listeners:
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, _SOCKET_TYPES[name]) as probe:
            if _SOCKET_TYPES[name] == socket.SOCK_STREAM:
                # As Twisted's listenTCP: a port in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise cannot_listen(name, host, port, e) from None


def cannot_listen(name: str, host: str, port: int, error: OSError) -> StartupError:
    """
    The one line for a listener that cannot be bound, before start-up or
    at it.
    """
    return StartupError(f"cannot listen on {name.upper()} {host} port {port}: {error.strerror}")


def check_relay_addresses(hosts: Sequence[str]) -> None:
    """
    Every relay address must be one this host can bind, or every Allocate
    on it would fail: say so now, once, and do not start.
    """
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, 0))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    raise StartupError(
                        f"relay address {host} (--relay-ip) is not an address of this host"
                    ) from None
                raise StartupError(
                    f"cannot open relays on {host} (--relay-ip): {e.strerror}"
                ) from None


class Listeners:
    """
    The client listeners (and the metrics page) of one server.

    @ivar ports: (transport name, listening port) of every bound listener.
    @ivar tcp_factory: the factory of the plain TCP listener: where a data
        connection another worker hands this one goes.
    """

    def __init__(
        self,
        reactor: Any,
        server: TurnServer,
        guard: StreamGuard,
        limits: ConnectionLimits,
        forwarding: IForwarding,
        tls: TlsCredentials | None,
        max_tcp_buffer: int | None,
        shard: Shard | None,
        proxy_from: Sequence[Any] = (),
    ) -> None:
        self._reactor = reactor
        #: Balancers whose TCP and TLS connections start with a PROXY header.
        self._proxy_from = list(proxy_from)
        self._server = server
        self._guard = guard
        self._limits = limits
        self._forwarding = forwarding
        self._tls = tls
        self._max_tcp_buffer = max_tcp_buffer
        self._shard = shard
        self.ports: list[tuple[str, Any]] = []
        self.tcp_factory: AdmissionFactory | None = None
        self._stream_factories: list[TurnStreamFactory] = []
        self._tls_stream_factory: TurnStreamFactory | None = None
        #: What a reload gives a new certificate to.
        self._tls_creators: list[ServerConnectionCreator] = []
        #: The DTLS listeners, whose counters the metrics read.
        self.dtls_listeners: list[DtlsListener] = []

    def bind(
        self, wanted: Sequence[tuple[str, str, int]], site: tuple[str, int, Any] | None
    ) -> None:
        """
        Bind every listener C{wanted} (and the metrics C{site}, if any), or
        none: on a failure the ones already bound are closed and the error
        propagates, so twistd exits with it.
        """
        if self.ports:
            return
        listeners = [(name, host, port, self._handler(name)) for name, host, port in wanted]
        if site is not None:
            listeners.append(("metrics", *site))
        try:
            for name, host, port, handler in listeners:
                # The fast path reads the UDP listeners (only them: DTLS
                # and streams decrypt or frame first).
                port_type = PumpedPort if name == "udp" else None
                if self._shard is not None and name != "metrics":
                    sock = self._shard.listeners[(name, host, port)]
                    listening = adopt_listener(self._reactor, sock, handler, port_type)
                elif name in ("udp", "dtls"):
                    listening = self._listen(listen_udp, name, host, port, handler, port_type)
                else:
                    listening = self._listen(listen_tcp, name, host, port, handler)
                if port_type is not None:
                    pumping(listening, self._forwarding, from_peers=False)
                self.ports.append((name, listening))
        except BaseException:
            for _, bound in self.ports:
                bound.stopListening()
            self.ports = []
            self._stream_factories = []
            raise

    def _listen(self, bind: Any, name: str, host: str, port: int, *handler: Any) -> Any:
        try:
            return bind(self._reactor, host, port, *handler)
        except OSError as e:
            raise cannot_listen(name, host, port, e) from e

    def _handler(self, name: str) -> Any:
        """
        The protocol or factory of a new C{name} listener.
        """
        server = self._server
        if name == "udp":
            if self._proxy_from:
                from txturn.transports.proxy import trusted_in

                return TurnDatagramProtocol(server, trusted_in(self._proxy_from))
            return TurnDatagramProtocol(server)
        if name == "dtls":
            assert self._tls is not None
            limits = self._limits
            listener = DtlsListener(
                server,
                self._tls.dtls_context(),
                self._reactor,
                handshake_timeout=limits.handshake_timeout,
                max_handshakes=limits.dtls_max_handshakes,
                max_handshakes_per_source=limits.dtls_max_handshakes_per_source,
                max_sessions=limits.dtls_max_sessions,
                max_sessions_per_source=limits.dtls_max_sessions_per_source,
                session_timeout=limits.idle_timeout,
                forwarding=self._forwarding,
            )
            self.dtls_listeners.append(listener)
            return listener
        handoff = self._shard.handoff if self._shard is not None else None
        factory = TurnStreamFactory(
            server, name, self._max_tcp_buffer, self._guard, handoff, self._forwarding
        )
        self._stream_factories.append(factory)
        if name == "tcp":
            self.tcp_factory = AdmissionFactory(self._guard, factory)
            return self._behind_balancers(self.tcp_factory)
        self._tls_stream_factory = factory
        assert self._tls is not None
        # The TLS layer batches small writes until the next turn of its
        # clock: that must be our reactor, not the global one.
        creator = self._tls.connection_creator()
        self._tls_creators.append(creator)
        tls_factory = TLSMemoryBIOFactory(creator, False, factory, clock=self._reactor)
        tls_factory.noisy = False
        # The PROXY header comes before the TLS handshake.
        return self._behind_balancers(AdmissionFactory(self._guard, tls_factory))

    def _behind_balancers(self, factory: Any) -> Any:
        """
        C{factory}, reading a PROXY header first from C{--proxy-protocol-from}.
        """
        if not self._proxy_from:
            return factory
        from txturn.transports.proxy import ProxyProtocolFactory, trusted_in

        return ProxyProtocolFactory(
            factory,
            trusted_in(self._proxy_from),
            self._reactor,
            deadline=self._limits.handshake_timeout,
        )

    def port_of(self, transport: str, host: str | None = None) -> int:
        """
        The port number the first listener of C{transport} (on C{host}, if
        given) is bound to: useful when listening on port 0.
        """
        for name, port in self.ports:
            bound = port.getHost()
            if name == transport and host in (None, bound.host):
                number: int = bound.port
                return number
        raise KeyError(transport)

    def stream_factory(self, transport: str, forwarded: Sequence[str] = ()) -> Any:
        """
        Where a client connection another worker hands over goes: the TCP
        listener's factory; for TLS, a factory of protocols over the
        socket pair that worker decrypts into, told the client's
        C{forwarded} (host, port, local host, local port).
        """
        if transport == "tcp":
            return self.tcp_factory
        inner = self._tls_stream_factory
        if inner is None or len(forwarded) != 4:
            return None
        peer_host, peer_port, local_host, local_port = forwarded
        return _Forwarded(inner, ((peer_host, int(peer_port)), (local_host, int(local_port))))

    def set_tls(self, tls: TlsCredentials) -> None:
        """
        New TLS and DTLS handshakes get C{tls}'s certificate; established
        ones keep theirs.
        """
        self._tls = tls
        for creator in self._tls_creators:
            creator.context = tls.tls_context()
        for listener in self.dtls_listeners:
            listener.set_context(tls.dtls_context())

    def close(self) -> list[Any]:
        """
        Stop listening and close every client connection; the Deferreds of
        the ports closing.
        """
        closing = [defer.maybeDeferred(p.stopListening) for _, p in self.ports]
        for factory in self._stream_factories:
            factory.disconnect_all()
        self.ports = []
        self._stream_factories = []
        return closing


class _Forwarded(Factory):
    """
    One protocol of C{inner}'s over a socket pair, told the addresses of
    the client connection it stands for.
    """

    noisy = False

    def __init__(self, inner: TurnStreamFactory, addresses: tuple[Address, Address]) -> None:
        self._inner = inner
        self._addresses = addresses

    def buildProtocol(self, addr: Any) -> TurnStreamProtocol:
        protocol = self._inner.buildProtocol(addr)
        protocol.forwarded = self._addresses
        return protocol
