# -*- test-case-name: tests.test_service -*-
"""
L{TurnService}: the TURN server as a Twisted service, built from objects.

This is the library entry point.  C{twistd turn} builds one from command
line strings (L{txturn.app.assembly}); a host application builds one
from its own reactor, credential source, TLS credentials and policy and
adds it to its service tree.

The service assembles the core (L{txturn.core.server.TurnServer}) with
its relays and the fast path, and runs its life: listeners bound in
C{privilegedStartService}, all or none (L{txturn.app.listeners}), so a
bind failure stops startup instead of leaving a half-started server and
twistd can still bind low ports before dropping privileges; the
descriptor budget (L{txturn.app.capacity}); the host's addresses
(L{txturn.app.host_watch}); the generated user's announcement
(L{txturn.app.announce}); reload; and drain (L{txturn.app.drain}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

from twisted.application import service
from twisted.internet import defer

from txturn.app import descriptors
from txturn.app.announce import WILDCARDS, announcement, ice_servers_snippet, ice_urls
from txturn.app.capacity import resolve_quotas
from txturn.app.drain import Drain
from txturn.app.host_watch import HostAddressWatch
from txturn.app.listeners import (
    ALL_TRANSPORTS,
    Listeners,
    StartupError,
    check_relay_addresses,
    listener_addresses,
)
from txturn.auth.cache import CachedCredentials
from txturn.auth.credentials import CredentialChain, ICredentialSource, NonceManager
from txturn.core.config import ServerConfig
from txturn.core.events import IServerObserver
from txturn.core.forwarding import NO_FORWARDING
from txturn.core.interfaces import host_port
from txturn.core.peer_policy import PeerPolicy
from txturn.core.quota_ledger import IQuotaLedger
from txturn.core.server import TurnServer
from txturn.fastpath.forwarding import Forwarding, forwarding, user_space
from txturn.observers.event_log import EventLog
from txturn.transports.admission import ConnectionLimits, StreamGuard
from txturn.transports.tcp_relay import DEFAULT_BUFFER_LIMIT, TcpRelayAllocator
from txturn.transports.tls import TlsCredentials
from txturn.transports.udp_relay import UdpRelayAllocator
from txturn.util.log_level import logger

if TYPE_CHECKING:
    from txturn.app.shard import Shard
    from txturn.observers.metrics import Metrics

__all__ = ["StartupError", "TurnService", "ice_servers_snippet", "listener_addresses"]


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
        (L{txturn.fastpath.forwarding}) when it was built; C{False} keeps every
        packet on the pure Python path.
    @param announce: C{(username, password)} to log once at startup with a
        ready-to-paste C{iceServers} snippet, for a server whose user was
        generated rather than configured.
    @param ledger: the fleet's per-user quota (L{txturn.fleet.sharing}),
        asked before each Allocate.
    @param xdp: the kernel data path's maps (L{txturn.fastpath.xdp}),
        written with every UDP channel on top of the compiled fast path;
        C{xdp_mode} says how the program is attached, for the log.
    @param observers: what watches the core besides its log
        (L{txturn.core.events}); more can be added with
        C{server.add_observer}.
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
        ledger: IQuotaLedger | None = None,
        observers: Sequence[IServerObserver] = (),
        also_own: Sequence[str] = (),
        proxy_from: Sequence[Any] = (),
        xdp: Any = None,
        xdp_mode: str = "",
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
        #: The compiled fast path (L{txturn.fastpath.forwarding}), or L{NO_FORWARDING}.
        self._fast_path = fast_path
        self.forwarding = forwarding() if fast_path else NO_FORWARDING
        self._xdp_mode = xdp_mode
        if xdp is not None:
            self.forwarding = self._with_xdp(xdp, shard)
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
        # Other listeners of this process: the sessions API's.
        own += list(also_own)
        own += list((external_ips or {}).values())
        self._external = dict(external_ips or {})
        self._own_addresses = own
        self._relay_ports = range(min_port, max_port + 1)
        self.policy = caller_policy.for_server(own, self._relay_ports)
        config = config if config is not None else ServerConfig()
        self.server = TurnServer(
            reactor,
            credentials,
            self.relays,
            self.policy,
            shard.share(config) if shard else config,
            tcp_relays=self.tcp_relays,
            forwarding=self.forwarding,
            ledger=ledger,
            observers=[EventLog(), *observers],
            **(self._shared_state(shard, config) if shard else {}),
        )
        #: Live metrics (L{txturn.observers.metrics}), with C{metrics} or
        #: C{metrics_listen}: served on C{metrics_listen}, or embedded by
        #: the host application with C{page()}.  Without either, neither
        #: C{prometheus_client} nor C{twisted.web} is imported (5 MiB).
        self.metrics: Metrics | None = None
        if metrics or metrics_listen is not None:
            from txturn.observers.metrics import Metrics as _Metrics

            self.metrics = _Metrics(
                self.server,
                [("udp", self.relays.pool), ("tcp", self.tcp_relays.pool)],
                self._counted,
            )
        self.metrics_listen = metrics_listen
        self._degradations: list[Callable[[], str | None]] = []
        #: The sessions API's view of this server
        #: (L{txturn.sessions.backend.LocalSessions}), with C{--admin-port}.
        self.sessions: Any = None
        self.limits = limits if limits is not None else ConnectionLimits()
        #: Caps and deadlines for every TCP and TLS connection; its cap in
        #: all is set from the descriptor limit when the service binds.
        self.guard = StreamGuard(reactor, self.server, self.limits, max_connections=0)
        self.tls = tls
        self.tls_port = tls_port
        self.transports = frozenset(transports)
        self._announce = announce
        #: The client listeners and the metrics page.
        self.listeners = Listeners(
            reactor,
            self.server,
            self.guard,
            self.limits,
            self.forwarding,
            tls,
            max_tcp_buffer,
            shard,
            proxy_from,
        )
        #: The host's addresses, read every minute behind a wildcard listener.
        self.host_addresses = HostAddressWatch(reactor, self._host_addresses_changed)
        #: The total quota the descriptor limit allows, once known.
        self._descriptor_quota = 0

    def _with_xdp(self, maps: Any, shard: Shard | None) -> Any:
        """
        The kernel data path on top of the compiled one, which it needs:
        it hands the compiled path what it does not relay.
        """
        from txturn.fastpath.xdp import XdpForwarding

        if not isinstance(self.forwarding, Forwarding):
            self.log.warn(
                "--xdp needs the compiled fast path, which is off or was not built: "
                "UDP is relayed in Python"
            )
            self._xdp_mode = ""
            return self.forwarding
        return XdpForwarding(self.forwarding, maps, owner=shard.index if shard else 0)

    def _counted(self) -> list[Mapping[Any, int]]:
        """
        The counters of the parts beside the core, for the metrics: the
        admission of connections, the DTLS listeners, the credential
        caches in front of databases.
        """
        counted: list[Mapping[Any, int]] = [self.guard.counters]
        counted += [listener.counters for listener in self.listeners.dtls_listeners]
        credentials = self.server.credentials
        sources = credentials.sources if isinstance(credentials, CredentialChain) else [credentials]
        counted += [s.counters for s in sources if isinstance(s, CachedCredentials)]
        xdp_counters = getattr(self.forwarding, "counters", None)
        if xdp_counters is not None:
            counted.append(xdp_counters())
        return counted

    def _shared_state(self, shard: Shard, config: ServerConfig) -> dict[str, Any]:
        """
        What a worker's core shares with the other workers.
        """
        broker = shard.reservation_broker
        return {
            "nonces": NonceManager(lifetime=config.nonce_lifetime, secret=shard.nonce_secret),
            "places": shard.places,
            "worker": (shard.index, shard.count),
            "reservation_broker": broker(self.relays.adopt) if broker is not None else None,
        }

    # -- listeners ---------------------------------------------------------------

    @property
    def ports(self) -> list[tuple[str, Any]]:
        """
        (transport name, listening port) for every bound listener.
        """
        return self.listeners.ports

    def port_of(self, transport: str, host: str | None = None) -> int:
        """
        The port number the first listener of C{transport} (on C{host}, if
        given) is bound to: useful when listening on port 0.
        """
        return self.listeners.port_of(transport, host)

    def stream_factory(self, transport: str, forwarded: Sequence[str] = ()) -> Any:
        """
        Where a client connection another worker hands over goes
        (L{Listeners.stream_factory}).
        """
        return self.listeners.stream_factory(transport, forwarded)

    def listener_addresses(self) -> list[tuple[str, str, int]]:
        """
        (transport, host, port) of every client listener: what the
        supervisor of C{--workers N} binds for its workers.
        """
        return listener_addresses(self.listen, self.transports, self.tls is not None, self.tls_port)

    def _metrics_site(self) -> tuple[str, int, Any] | None:
        """
        The metrics and health page, where C{metrics_listen} asks for one.
        """
        if self.metrics_listen is None or self.metrics is None:
            return None
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        from txturn.app.health import add_health

        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"metrics", self.metrics.page())
        add_health(root, self.not_ready, self.degraded)
        site = Site(root)  # type: ignore[no-untyped-call]
        site.noisy = False
        host, port = self.metrics_listen
        return host, port, site

    def add_degradation(self, check: Callable[[], str | None]) -> None:
        """
        Have C{/readyz} report what C{check} says is degraded (C{None}
        when nothing is), without making the server unready.
        """
        self._degradations.append(check)

    def degraded(self) -> str | None:
        """
        What is degraded, for C{/readyz}; C{None} when nothing is.
        """
        found = [why for why in (check() for check in self._degradations) if why is not None]
        return "; ".join(found) if found else None

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

    def _bind(self) -> None:
        if self.ports:
            return
        self._share_descriptors()
        check_relay_addresses(self.relay_addresses)
        self.listeners.bind(self.listener_addresses(), self._metrics_site())

    # -- capacity ----------------------------------------------------------------

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
        return resolve_quotas(
            config, self._descriptor_quota, self.relay_addresses, self._relay_ports
        )

    def _host_addresses_changed(self, found: list[str]) -> None:
        self.policy.set_host_addresses(found)
        self.server.policy_changed()

    # -- life --------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self._bind()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        # twistd binds in privilegedStartService; "twist" calls only this.
        self._bind()
        super().startService()  # type: ignore[no-untyped-call]
        self._log_fast_path()
        self.guard.start()
        if any(host in WILDCARDS for host, _ in self.listen):
            self.host_addresses.start()
        self._log_listeners()
        if self._announce is not None:
            username, password = self._announce
            self.log.warn(**announcement(username, password, self.ice_urls()))

    def _log_fast_path(self) -> None:
        """
        Say once how UDP is relayed: an operator comparing two servers'
        CPU should know which path each runs.
        """
        if self._shard is not None and self._shard.index:
            return
        if user_space(self.forwarding) is not None and self._xdp_mode:
            self.log.info(
                "UDP channels relayed in the kernel by XDP ({mode}); the rest through the "
                "compiled fast path (recvmmsg, sendmmsg, GSO)",
                mode=self._xdp_mode,
            )
        elif isinstance(self.forwarding, Forwarding):
            self.log.info(
                "UDP relayed through the compiled fast path (recvmmsg, sendmmsg, GSO), "
                "for UDP, TCP, TLS and DTLS clients over IPv4 and IPv6"
            )
        elif not self._fast_path:
            self.log.info("UDP relayed in Python: the fast path is turned off")
        else:
            self.log.info(
                "UDP relayed in Python: the fast path was not built (pip found no C "
                "compiler or Python headers) or TXTURN_FAST_PATH=off"
            )

    def _log_listeners(self) -> None:
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

    def ice_urls(self) -> list[str]:
        """
        C{turn:}/C{turns:} URLs for every listener a browser can use
        (L{txturn.app.announce.ice_urls}).
        """
        return ice_urls(
            self.ports, self.relay_addresses, self._external, self.server.config.server_name
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
            copy.set_host_addresses(self.host_addresses.addresses)
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
            self.listeners.set_tls(tls)
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
        self.server.start_draining()
        self.log.info(
            "Draining: no new allocations; stopping when the {left} left have ended, "
            "or in {timeout:.0f}s",
            left=len(self.server.allocations),
            timeout=timeout,
        )
        return Drain(self.server, self._reactor, timeout).done

    def stopService(self) -> defer.Deferred[Any]:
        """
        Delete every allocation (cancelling its timers), close every client
        connection and listening port; the Deferred fires once every port
        is closed.
        """
        self.guard.stop()
        self.host_addresses.stop()
        # Listeners first, so nothing new arrives while allocations go.
        closing = self.listeners.close()
        closing.append(self.server.shutdown())
        # Child services last: what watches the allocations (a fleet's
        # Redis link, its usage stream) hears them end before it stops.
        parent_stopped = super().stopService()  # type: ignore[no-untyped-call]
        if isinstance(parent_stopped, defer.Deferred):
            closing.append(parent_stopped)
        return defer.gatherResults(closing, consumeErrors=True)
