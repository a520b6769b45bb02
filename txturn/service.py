# -*- test-case-name: tests.test_service -*-
"""
L{TurnService}: the TURN server as a Twisted service, built from objects.

This is the library entry point.  C{twistd turn} builds one from command
line strings (L{txturn.tap}); a host application builds one from its own
reactor, credential source, TLS credentials and policy and adds it to its
service tree.  Listening sockets are bound in C{privilegedStartService},
all or none, so a bind failure stops startup instead of leaving a
half-started server, and so twistd can still bind low ports before
dropping privileges.
"""

from __future__ import annotations

import errno
import json
import socket
from dataclasses import replace
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from txturn import descriptors

if TYPE_CHECKING:
    from txturn.metrics import Metrics
    from txturn.workers.shard import Shard
from txturn.credentials import ICredentialSource, NonceManager
from txturn.dtls import DtlsListener
from txturn.events import AllocationDeleted, IServerObserver
from txturn.forwarding import NO_FORWARDING, Forwarding, PumpedPort, forwarding, pumping
from txturn.host_addresses import host_addresses
from txturn.interfaces import Address, host_port
from txturn.limits import ConnectionLimits
from txturn.log_level import logger
from txturn.policy import PeerPolicy
from txturn.server import ServerConfig, TurnServer, user_quota_for
from txturn.sockets import adopt_listener, listen_tcp, listen_udp
from txturn.stream import TurnStreamFactory, TurnStreamProtocol
from txturn.stream_guard import AdmissionFactory, StreamGuard
from txturn.tcp_relay import DEFAULT_BUFFER_LIMIT, TcpRelayAllocator
from txturn.tls import ServerConnectionCreator, TlsCredentials
from txturn.udp import TurnDatagramProtocol
from txturn.udp_relay import UdpRelayAllocator

ALL_TRANSPORTS = frozenset(["udp", "tcp", "tls", "dtls"])


def ice_servers_snippet(urls: Sequence[str], username: str, password: str) -> str:
    """
    The C{RTCConfiguration.iceServers} JSON a WebRTC page pastes in.
    """
    return json.dumps(
        {"iceServers": [{"urls": urls, "username": username, "credential": password}]}
    )


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


#: Listening on one of these means listening on every address of the host.
WILDCARDS = frozenset(["0.0.0.0", "::"])
#: Seconds between two readings of the host's addresses.
ADDRESS_REFRESH = 60.0


class TurnService(service.MultiService):
    """
    A TURN server listening on UDP, TCP, TLS and DTLS.

    @param reactor: provides C{IReactorTime}, C{IReactorUDP} and
        C{IReactorSocket}; every timer and socket goes through it.
    @param credentials: an L{ICredentialSource}.
    @param listen: C{(host, port)} pairs for UDP and TCP.
    @param relay_addresses: the addresses relay sockets are opened on.
    @param tls: the certificate for TLS and DTLS, which listen on the same
        hosts at C{tls_port}; without it neither is started.
    @param transports: which of C{udp}, C{tcp}, C{tls}, C{dtls} to serve.
    @param external_ips: relay address -> the public address a 1:1 NAT maps
        it to, which clients are told instead (coturn's C{external-ip}).
    @param tcp_buffer: bytes a peer of a TCP allocation may send before
        the client binds its data connection; past it the peer is closed.
    @param max_tcp_buffer: bytes held for a TCP/TLS client that reads
        slowly before relayed frames to it are dropped (default: Twisted's
        64 KiB).
    @param limits: caps and deadlines for connections and DTLS sessions
        that hold no allocation (L{ConnectionLimits}).
    @param fast_path: relay UDP through the compiled fast path
        (L{txturn.forwarding}) when it was built; C{False} keeps every
        packet on the pure Python path.
    @param announce: C{(username, password)} to log once at startup with a
        ready-to-paste C{iceServers} snippet, for a server whose user was
        generated rather than configured.
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        credentials: ICredentialSource,
        listen: Sequence[tuple[str, int]],
        relay_addresses: Sequence[str],
        *,
        min_port: int = 49152,
        max_port: int = 65535,
        policy: PeerPolicy | None = None,
        config: ServerConfig | None = None,
        tls: TlsCredentials | None = None,
        tls_port: int = 5349,
        transports: Collection[str] = ALL_TRANSPORTS,
        external_ips: Mapping[str, str] | None = None,
        announce: tuple[str, str] | None = None,
        tcp_buffer: int = DEFAULT_BUFFER_LIMIT,
        max_tcp_buffer: int | None = None,
        limits: ConnectionLimits | None = None,
        metrics_listen: tuple[str, int] | None = None,
        metrics: bool = False,
        shard: Shard | None = None,
        fast_path: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        unknown = set(transports) - ALL_TRANSPORTS
        if unknown:
            raise ValueError(f"unknown transports: {', '.join(sorted(unknown))}")
        self._reactor = reactor
        self._shard = shard
        self.listen = list(listen)
        self.relay_addresses = list(relay_addresses)
        # A worker relays on its own slice of the range.
        low, high = shard.relay_ports(min_port, max_port) if shard else (min_port, max_port)
        #: The compiled fast path (L{txturn.forwarding}), or L{NO_FORWARDING}.
        self._fast_path = fast_path
        self.forwarding = forwarding() if fast_path else NO_FORWARDING
        self.relays = UdpRelayAllocator(
            reactor, relay_addresses, low, high, external=external_ips, forwarding=self.forwarding
        )
        self.tcp_relays = TcpRelayAllocator(
            reactor,
            relay_addresses,
            low,
            high,
            external=dict(external_ips or {}),
            buffer_limit=tcp_buffer,
        )
        # A relay must not reach this server's own listeners: a copy of the
        # caller's policy learns our addresses, reachable as peers only on
        # relay ports.
        caller_policy = policy if policy is not None else PeerPolicy()
        own = [h for h, _ in self.listen] + list(relay_addresses)
        if metrics_listen is not None:
            own.append(metrics_listen[0])
        own += list((external_ips or {}).values())
        self._external = dict(external_ips or {})
        policy = caller_policy.for_server(own, range(min_port, max_port + 1))
        self.policy = policy
        config = config if config is not None else ServerConfig()
        self.server = TurnServer(
            reactor,
            credentials,
            self.relays,
            policy,
            shard.share(config) if shard else config,
            tcp_relays=self.tcp_relays,
            forwarding=self.forwarding,
            **(self._shared_state(shard, config) if shard else {}),
        )
        #: Live metrics (L{txturn.metrics}), with C{metrics} or
        #: C{metrics_listen}: served on C{metrics_listen}, or embedded by
        #: the host application with C{page()}.  Without either, neither
        #: C{prometheus_client} nor C{twisted.web} is imported (5 MiB).
        self.metrics: Metrics | None = None
        if metrics or metrics_listen is not None:
            from txturn.metrics import Metrics as _Metrics

            self.metrics = _Metrics(
                self.server, [("udp", self.relays.pool), ("tcp", self.tcp_relays.pool)]
            )
        self.metrics_listen = metrics_listen
        self.limits = limits if limits is not None else ConnectionLimits()
        #: Caps and deadlines for every TCP and TLS connection; its cap in
        #: all is set from the descriptor limit when the service binds.
        self.guard = StreamGuard(reactor, self.server, self.limits, max_connections=0)
        self.tls = tls
        self.tls_port = tls_port
        self.transports = frozenset(transports)
        self._announce = announce
        self._max_tcp_buffer = max_tcp_buffer
        #: (transport name, listening port) for every bound listener.
        self.ports: list[tuple[str, Any]] = []
        self._stream_factories: list[TurnStreamFactory] = []
        #: The factory of the plain TCP listener: where a data connection
        #: another worker hands this one goes.
        self.tcp_factory: AdmissionFactory | None = None
        self._tls_stream_factory: TurnStreamFactory | None = None
        self._address_refresh: Any = None
        self._host_addresses: list[str] = []
        self._own_addresses = own
        self._relay_ports = range(min_port, max_port + 1)
        #: What a reload gives a new certificate to.
        self._tls_creators: list[ServerConnectionCreator] = []
        self._dtls_listeners: list[DtlsListener] = []
        #: The total quota the descriptor limit allows, once known.
        self._descriptor_quota = 0

    @staticmethod
    def _shared_state(shard: Shard, config: ServerConfig) -> dict[str, Any]:
        """
        What a worker's core shares with the other workers.
        """
        return {
            "nonces": NonceManager(lifetime=config.nonce_lifetime, secret=shard.nonce_secret),
            "places": shard.places,
            "worker": (shard.index, shard.count),
        }

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

    def listener_addresses(self) -> list[tuple[str, str, int]]:
        """
        (transport, host, port) of every client listener: what the
        supervisor of C{--workers N} binds for its workers.
        """
        return listener_addresses(self.listen, self.transports, self.tls is not None, self.tls_port)

    def _listeners(self) -> list[tuple[str, str, int, Any]]:
        """
        (transport, host, port, what to listen with) for every listener.
        """
        wanted = [
            (name, host, port, self._handler(name))
            for name, host, port in self.listener_addresses()
        ]
        if self.metrics_listen is not None and self.metrics is not None:
            from twisted.web.resource import Resource
            from twisted.web.server import Site

            from txturn.health import add_health

            root = Resource()  # type: ignore[no-untyped-call]
            root.putChild(b"metrics", self.metrics.page())
            add_health(root, self.not_ready)
            site = Site(root)  # type: ignore[no-untyped-call]
            site.noisy = False
            host, port = self.metrics_listen
            wanted.append(("metrics", host, port, site))
        return wanted

    def not_ready(self) -> str | None:
        """
        Why this server should get no new clients now (C{/readyz}), or
        C{None}: it is ready while it runs, has a client listener bound,
        and does not drain.
        """
        if not self.running:
            return "not running"
        if self.server.draining:
            return "draining"
        if not any(name != "metrics" for name, _ in self.ports):
            return "no client listener bound"
        return None

    def _handler(self, name: str) -> Any:
        """
        The protocol or factory of a new C{name} listener.
        """
        server = self.server
        if name == "udp":
            return TurnDatagramProtocol(server)
        if name == "dtls":
            assert self.tls is not None
            limits = self.limits
            listener = DtlsListener(
                server,
                self.tls.dtls_context(),
                self._reactor,
                handshake_timeout=limits.handshake_timeout,
                max_handshakes=limits.dtls_max_handshakes,
                max_handshakes_per_source=limits.dtls_max_handshakes_per_source,
                max_sessions=limits.dtls_max_sessions,
                max_sessions_per_source=limits.dtls_max_sessions_per_source,
                session_timeout=limits.idle_timeout,
            )
            self._dtls_listeners.append(listener)
            return listener
        handoff = self._shard.handoff if self._shard is not None else None
        factory = TurnStreamFactory(server, name, self._max_tcp_buffer, self.guard, handoff)
        self._stream_factories.append(factory)
        if name == "tcp":
            self.tcp_factory = AdmissionFactory(self.guard, factory)
            return self.tcp_factory
        self._tls_stream_factory = factory
        assert self.tls is not None
        # The TLS layer batches small writes until the next turn of its
        # clock: that must be our reactor, not the global one.
        creator = self.tls.connection_creator()
        self._tls_creators.append(creator)
        tls_factory = TLSMemoryBIOFactory(creator, False, factory, clock=self._reactor)
        tls_factory.noisy = False
        return AdmissionFactory(self.guard, tls_factory)

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

    def privilegedStartService(self) -> None:
        self._bind()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _bind(self) -> None:
        """
        Bind every listener, or none: on a failure the ones already bound
        are closed and the error propagates, so twistd exits with it.
        """
        if self.ports:
            return
        self._share_descriptors()
        check_relay_addresses(self.relay_addresses)
        try:
            for name, host, port, handler in self._listeners():
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
                    pumping(listening, self.forwarding, from_peers=False)
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

    def _share_descriptors(self) -> None:
        """
        Read (and raise, where allowed) the descriptor limit, and keep
        connections and allocations within it, so that running out is a
        refusal at the door with a log line, not a 508 at random.
        """
        limit = descriptors.raise_limit()
        self.guard.max_connections = self.limits.max_connections or (
            descriptors.connection_budget(limit)
        )
        # Workers count places together: N of them have N times the budget.
        self._descriptor_quota = descriptors.allocation_budget(limit) * (
            self._shard.count if self._shard else 1
        )
        self.server.reconfigure(self._resolved(self.server.config))
        self.log.info(
            "Descriptor limit {limit}: up to {connections} TCP/TLS connections "
            "and {allocations} allocations, {per_user} per user",
            limit=limit,
            connections=self.guard.max_connections,
            allocations=self.server.config.total_quota,
            per_user=self.server.config.user_quota or "no limit",
        )

    def _resolved(self, config: ServerConfig) -> ServerConfig:
        """
        C{config} with its defaults that depend on this server filled in:
        the total quota from the descriptor limit, and the per-user quota
        as half of what the server can hold (the smaller of the total
        quota and the relay ports of its largest address family: the
        whole range, even for a worker, which shares users' counts with
        the others).
        """
        if not config.total_quota and self._descriptor_quota:
            config = replace(config, total_quota=self._descriptor_quota)
        if config.user_quota is None and config.total_quota:
            families = [ip_address(a).version for a in self.relay_addresses]
            addresses = max([families.count(4), families.count(6), 1])
            capacity = min(config.total_quota, len(self._relay_ports) * addresses)
            config = replace(config, user_quota=user_quota_for(capacity))
        return config

    def _log_fast_path(self) -> None:
        """
        Say once how UDP is relayed: an operator comparing two servers'
        CPU should know which path each runs.
        """
        if self._shard is not None and self._shard.index:
            return
        if isinstance(self.forwarding, Forwarding):
            self.log.info("UDP relayed through the compiled fast path (recvmmsg, sendmmsg, GSO)")
        elif not self._fast_path:
            self.log.info("UDP relayed in Python: the fast path is turned off")
        else:
            self.log.info(
                "UDP relayed in Python: the fast path was not built (pip found no C "
                "compiler or Python headers) or TXTURN_FAST_PATH=off"
            )

    def _refresh_host_addresses(self) -> None:
        """
        A wildcard listener answers on every address of the host, so each
        is one of the server's own for the peer policy; interfaces come
        and go, so the list is read again every minute.
        """
        try:
            found = host_addresses()
        except OSError as e:
            self.log.warn("Cannot list this host's addresses: {error}", error=e)
            found = []
        self._host_addresses = found
        self.policy.set_host_addresses(found)
        self.server.policy_changed()
        if self._address_refresh is not None and self._address_refresh.active():
            self._address_refresh.cancel()
        self._address_refresh = self._reactor.callLater(
            ADDRESS_REFRESH, self._refresh_host_addresses
        )

    def startService(self) -> None:
        # twistd binds in privilegedStartService; "twist" calls only this.
        self._bind()
        super().startService()  # type: ignore[no-untyped-call]
        self._log_fast_path()
        self.guard.start()
        if any(host in WILDCARDS for host, _ in self.listen):
            self._refresh_host_addresses()
        for name, p in self.ports:
            host = p.getHost()
            if name == "metrics":
                self.log.info(
                    "Metrics on http://{address}/metrics",
                    address=host_port((host.host, host.port)),
                )
                continue
            self.log.info(
                "TURN listening on {transport} {address}",
                transport=name.upper(),
                address=host_port((host.host, host.port)),
            )
        if self.tls is None and self.transports & {"tls", "dtls"}:
            self.log.warn("No --cert given: TLS and DTLS listeners are not started")
        self.log.info(
            "Relaying on {addresses}, ports {min_port}-{max_port}",
            addresses=", ".join(self.relay_addresses),
            min_port=self.relays.min_port,
            max_port=self.relays.max_port,
        )
        if self._announce is not None:
            self._announce_user(*self._announce)

    def ice_urls(self) -> list[str]:
        """
        C{turn:}/C{turns:} URLs for every listener a browser can use (all
        but DTLS), named as clients reach them: the C{server_name} when
        there is one (a C{turns:} client checks the certificate for it);
        else the listening address, or for a wildcard listener the relay
        addresses; each as its C{external_ips} public address behind a
        1:1 NAT.
        """
        urls = []
        server_name = self.server.config.server_name
        for name, p in self.ports:
            if name in ("dtls", "metrics"):
                continue
            bound = p.getHost()
            hosts = [bound.host]
            if bound.host in WILDCARDS:
                hosts = [h for h in self.relay_addresses if (":" in h) == (":" in bound.host)]
            hosts = [self._external.get(h, h) for h in hosts]
            if server_name:
                hosts = [server_name]
            scheme = "turns" if name == "tls" else "turn"
            transport = "udp" if name == "udp" else "tcp"
            for host in hosts:
                literal = f"[{host}]" if ":" in host else host
                url = f"{scheme}:{literal}:{bound.port}?transport={transport}"
                if url not in urls:
                    urls.append(url)
        return urls

    def _announce_user(self, username: str, password: str) -> None:
        # The values stand alone on their lines, so a double click copies
        # exactly the password, with no punctuation glued to it.
        self.log.warn(
            "No credentials configured; this server's user is\n"
            "  username: {username}\n  password: {password}\n"
            "WebRTC iceServers:\n{snippet}",
            username=username,
            password=password,
            snippet=ice_servers_snippet(self.ice_urls(), username, password),
        )

    def reload(
        self,
        *,
        credentials: ICredentialSource | None = None,
        policy: PeerPolicy | None = None,
        config: ServerConfig | None = None,
        tls: TlsCredentials | None = None,
    ) -> list[str]:
        """
        Give the running server new settings without closing anything:
        requests from now on see the new credentials, policy and config
        (allocations, permissions and channels keep what they were given
        until they are refreshed or expire), and new TLS and DTLS
        handshakes the new certificate (established ones keep theirs).
        Returns what was replaced, for the log.
        """
        changed = []
        if credentials is not None:
            self.server.set_credentials(credentials)
            changed.append("credentials")
        if policy is not None:
            copy = policy.for_server(self._own_addresses, self._relay_ports)
            copy.set_host_addresses(self._host_addresses)
            self.policy = copy
            self.server.set_policy(copy)
            changed.append("peer policy")
        if config is not None:
            config = self._resolved(config)
            if self._shard is not None:
                config = self._shard.share(config)
            self.server.reconfigure(config)
            changed.append("quotas and limits")
        if tls is not None:
            self.tls = tls
            for creator in self._tls_creators:
                creator.context = tls.tls_context()
            for listener in self._dtls_listeners:
                listener.set_context(tls.dtls_context())
            changed.append("certificate")
        return changed

    def drain(self, timeout: float) -> defer.Deferred[None]:
        """
        Refuse new allocations (508) and fire when the existing ones have
        ended, or after C{timeout} seconds, whichever comes first; then
        the caller stops the service, so a rolling upgrade drops no call.
        Listeners stay open: clients refresh over them, and RFC 6062 data
        connections arrive on them.
        """
        self.server.draining = True
        self.log.info(
            "Draining: no new allocations; stopping when the {left} left have ended, "
            "or in {timeout:.0f}s",
            left=len(self.server.allocations),
            timeout=timeout,
        )
        return _Drain(self.server, self._reactor, timeout).done

    def stopService(self) -> defer.Deferred[Any]:
        """
        Delete every allocation (cancelling its timers), close every client
        connection and listening port; the Deferred fires once every port
        is closed.
        """
        self.guard.stop()
        if self._address_refresh is not None and self._address_refresh.active():
            self._address_refresh.cancel()
        self._address_refresh = None
        # Listeners first, so nothing new arrives while allocations go.
        closing = [defer.maybeDeferred(p.stopListening) for _, p in self.ports]
        closing.append(self.server.shutdown())
        for factory in self._stream_factories:
            factory.disconnect_all()
        self.ports = []
        self._stream_factories = []
        # Child services last: what watches the allocations (a fleet's
        # Redis link, its usage stream) hears them end before it stops.
        parent_stopped = super().stopService()  # type: ignore[no-untyped-call]
        if isinstance(parent_stopped, defer.Deferred):
            closing.append(parent_stopped)
        return defer.gatherResults(closing, consumeErrors=True)


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


@implementer(IServerObserver)
class _Drain:
    """
    Fires C{done} when the server's last allocation ends, or at the
    deadline.
    """

    log = logger()

    def __init__(self, server: TurnServer, reactor: Any, timeout: float) -> None:
        self._server = server
        self.done: defer.Deferred[None] = defer.Deferred()
        self._deadline = reactor.callLater(timeout, self._expired)
        server.add_observer(self)
        if not server.allocations:
            self._finish("no allocation was alive")

    def observe(self, event: object) -> None:
        if isinstance(event, AllocationDeleted) and not self._server.allocations:
            self._finish("the last allocation ended")

    def _expired(self) -> None:
        self._finish(f"{len(self._server.allocations)} allocations still alive at the deadline")

    def _finish(self, why: str) -> None:
        if self.done.called:
            return
        if self._deadline.active():
            self._deadline.cancel()
        self._server.remove_observer(self)
        self.log.info("Drained: {why}", why=why)
        self.done.callback(None)
