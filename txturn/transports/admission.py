# -*- test-case-name: tests.test_stream_guard -*-
"""
Admission and deadlines for TCP and TLS client connections.

An accepted connection costs a descriptor and up to a frame of buffer
before it has proven anything, so:

- L{AdmissionFactory} wraps each stream listener's factory (outside the
  TLS layer, so a refused connection costs no handshake) and refuses a
  connection, closing it at once, past C{max_unallocated_per_source}
  connections from one address that hold no allocation.  Connections
  that hold an allocation are not counted against their address: a crowd
  behind one NAT is limited only while it has not authenticated.
- At C{max_connections} in all, a new connection evicts the oldest one
  that holds no allocation, so connections that never authenticate,
  from however many addresses, cannot lock real clients out; only when
  every connection holds an allocation is the newcomer refused.
- L{StreamGuard} sweeps the connections every couple of seconds and
  aborts those past a deadline: a TLS handshake not finished within
  C{handshake_timeout}; a frame started and not finished within
  C{frame_timeout}; no allocation (and not an RFC 6062 data connection)
  for C{idle_timeout}, however much the connection talks.

The sweep reads the clock once and looks at each connection's counters;
nothing here runs per packet.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory

from txturn.util.counting import Counted, family
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle, source_of

_CLOSED = family(
    "connections_closed",
    "TCP and TLS client connections refused or closed by the admission limits, by reason.",
    "reason",
)


class AdmissionCounter(Counted):
    """
    What the admission of TCP and TLS connections refused or closed.
    """

    #: Past --max-connections-per-ip without an allocation, or full.
    REFUSED = (_CLOSED, "refused")
    #: The oldest connection holding nothing, to make room at the cap.
    EVICTED = (_CLOSED, "evicted")
    HANDSHAKE_TIMEOUT = (_CLOSED, "handshake_timeout")
    IDLE_TIMEOUT = (_CLOSED, "idle_timeout")
    FRAME_TIMEOUT = (_CLOSED, "frame_timeout")


class GuardedConnection(Protocol):
    """
    What the guard reads of a connection (L{txturn.transports.stream.TurnStreamProtocol}).
    """

    peer_host: str
    handshake_done: bool
    frames: int
    transport: Any

    @property
    def buffered(self) -> int: ...

    @property
    def is_data_connection(self) -> bool: ...


class AllocationLookup(Protocol):
    def has_allocation(self, client: Any) -> bool: ...


@dataclass
class _Watch:
    """
    The guard's own notes on one connection.
    """

    #: The connection's source: its address, or its IPv6 /64.
    host: str
    since: float
    unallocated_since: float | None
    frames_seen: int = -1
    partial_since: float | None = None


class StreamGuard:
    """
    Every TCP and TLS client connection of a service, with the limits of
    L{ConnectionLimits}.

    @param max_connections: the resolved cap in all (the service derives
        it from the descriptor limit when C{limits} leaves it at 0).
    """

    log = logger()
    #: Connections looked at, oldest first, to find one to evict.
    EVICTION_SCAN = 64

    def __init__(
        self,
        reactor: IReactorTime,
        server: AllocationLookup,
        limits: ConnectionLimits,
        max_connections: int,
        sweep_interval: float = 2.0,
    ) -> None:
        self._reactor = reactor
        self._server = server
        self.limits = limits
        self.max_connections = max_connections
        self.sweep_interval = sweep_interval
        self._watches: dict[GuardedConnection, _Watch] = {}
        self._from: dict[str, set[GuardedConnection]] = {}
        self._sweep: IDelayedCall | None = None
        self._refusals = LogThrottle(reactor)
        #: What was refused or closed (exported by the metrics).
        self.counters: collections.Counter[AdmissionCounter] = collections.Counter()

    def __len__(self) -> int:
        return len(self._watches)

    def start(self) -> None:
        if self._sweep is None:
            self._sweep = self._reactor.callLater(self.sweep_interval, self._sweep_connections)

    def stop(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    # -- admission ---------------------------------------------------------------

    def admit(self, host: str) -> bool:
        """
        Whether a new connection from C{host} may be accepted (evicting an
        older one that holds nothing, if the server is full).
        """
        refusal = None
        limit = self.limits.max_unallocated_per_source
        mine = self._from.get(source_of(host), ())
        # Counting the unallocated ones walks only this address's own
        # connections, and only once it has many.
        if limit and len(mine) >= limit and self._unallocated(mine) >= limit:
            refusal = "connections without an allocation from one address"
        elif len(self._watches) >= self.max_connections and not self._evict_one():
            refusal = "connections"
        if refusal is None:
            return True
        self.counters[AdmissionCounter.REFUSED] += 1
        self._refusals.emit(
            refusal,
            self.log.warn,
            "Refused a TCP/TLS connection from {host}: too many {what}",
            host=host,
            what=refusal,
        )
        return False

    def _evict_one(self) -> bool:
        """
        Abort the oldest connection that holds no allocation; C{False} if
        none is found among the oldest C{EVICTION_SCAN}.  Connections
        found holding an allocation move to the back, so the next scan does
        not walk them again.
        """
        for _ in range(min(self.EVICTION_SCAN, len(self._watches))):
            oldest = next(iter(self._watches))
            if self._holds_something(oldest):
                self._watches[oldest] = self._watches.pop(oldest)
                continue
            self.counters[AdmissionCounter.EVICTED] += 1
            self.remove(oldest)
            _abort(oldest)
            return True
        return False

    def _unallocated(self, connections: Any) -> int:
        return sum(1 for c in connections if not self._holds_something(c))

    def _holds_something(self, connection: GuardedConnection) -> bool:
        return connection.is_data_connection or self._server.has_allocation(connection)

    def add(self, connection: GuardedConnection) -> None:
        now = self._reactor.seconds()
        source = source_of(connection.peer_host)
        self._watches[connection] = _Watch(source, now, now)
        self._from.setdefault(source, set()).add(connection)

    def remove(self, connection: GuardedConnection) -> None:
        watch = self._watches.pop(connection, None)
        if watch is None:
            return
        mine = self._from.get(watch.host)
        if mine is not None:
            mine.discard(connection)
            if not mine:
                del self._from[watch.host]

    # -- deadlines -----------------------------------------------------------------

    def _sweep_connections(self) -> None:
        now = self._reactor.seconds()
        limits = self.limits
        for connection, watch in list(self._watches.items()):
            reason: AdmissionCounter | None = None
            if not connection.handshake_done:
                if now - watch.since >= limits.handshake_timeout:
                    reason = AdmissionCounter.HANDSHAKE_TIMEOUT
            elif self._holds_something(connection):
                watch.unallocated_since = None
            elif watch.unallocated_since is None:
                watch.unallocated_since = now
            elif now - watch.unallocated_since >= limits.idle_timeout:
                reason = AdmissionCounter.IDLE_TIMEOUT
            if reason is None and not connection.is_data_connection:
                reason = self._check_frame(connection, watch, now)
            if reason is not None:
                self.counters[reason] += 1
                self.remove(connection)
                _abort(connection)
        self._sweep = self._reactor.callLater(self.sweep_interval, self._sweep_connections)

    def _check_frame(
        self, connection: GuardedConnection, watch: _Watch, now: float
    ) -> AdmissionCounter | None:
        """
        A frame started and not finished: its clock starts at the first
        sweep that sees it and stops when a frame completes.
        """
        if connection.buffered == 0:
            watch.partial_since = None
        elif connection.frames != watch.frames_seen or watch.partial_since is None:
            watch.partial_since = now
        elif now - watch.partial_since >= self.limits.frame_timeout:
            return AdmissionCounter.FRAME_TIMEOUT
        watch.frames_seen = connection.frames
        return None


def _abort(connection: GuardedConnection) -> None:
    """
    Drop a connection now, without waiting to flush what it has not read.
    """
    transport = connection.transport
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class AdmissionFactory(Factory):
    """
    Wraps a listener's factory (the TLS layer's, or the plain stream
    factory) and refuses connections the guard will not admit: Twisted
    closes a connection whose factory builds no protocol.
    """

    noisy = False

    def __init__(self, guard: StreamGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if not self.guard.admit(getattr(addr, "host", "")):
            return None
        return self.inner.buildProtocol(addr)


@dataclass(frozen=True)
class ConnectionLimits:
    """
    What one client connection or DTLS session may hold, and for how
    long, before it has an allocation: the knobs of the transports'
    defences (L{txturn.transports.admission}, L{txturn.transports.dtls}).  doc/security.rst
    says what each protects against.

    @ivar max_connections: TCP and TLS connections in all; 0 means a
        quarter of the descriptor limit, leaving the rest for relays.
    @ivar max_unallocated_per_source: connections from one IP address
        that hold no allocation (and are not RFC 6062 data connections);
        a crowd behind one NAT is limited only while it has not allocated.
    @ivar handshake_timeout: seconds a TLS or DTLS handshake may take.
    @ivar idle_timeout: seconds a connection or DTLS session may hold no
        allocation, however much it talks (coturn: 60).
    @ivar frame_timeout: seconds a TCP/TLS client may take to finish a
        frame once it started one.
    """

    max_connections: int = 0
    max_unallocated_per_source: int = 256
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    frame_timeout: float = 10.0
    dtls_max_handshakes: int = 500
    dtls_max_handshakes_per_source: int = 20
    dtls_max_sessions: int = 2000
    dtls_max_sessions_per_source: int = 100
