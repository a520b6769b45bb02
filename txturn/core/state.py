# -*- test-case-name: tests.test_server -*-
"""
L{CoreState}: what the TURN methods share, and the few things they do
to it (count, find the allocation a request is about, forget an
allocation, tell the observers).

The method classes (L{txturn.core.methods}) are given this, never the
L{txturn.core.server.TurnServer}: the server only decodes, authenticates
and dispatches, and holds a L{CoreState} like every method does.
Everything here is fixed at construction except what a reload replaces
(C{config}, C{policy}) and what a drain sets (C{draining}).
"""

from __future__ import annotations

import collections
from typing import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txturn.core.allocation import Allocation
from txturn.core.config import ServerConfig
from txturn.core.counters import Counter, Counters
from txturn.core.events import (
    AllocationDeleted,
    DataConnectionClosed,
    IServerObserver,
    Traffic,
)
from txturn.core.forwarding import IForwarding
from txturn.core.interfaces import (
    Address,
    IClientChannel,
    IRelayAllocator,
    IReservationBroker,
    ITcpRelayAllocator,
    host_port,
)
from txturn.core.peer_connections import Entry, PeerConnections
from txturn.core.peer_policy import PeerPolicy
from txturn.core.quota_ledger import IQuotaLedger
from txturn.core.request import Request
from txturn.core.reservations import Reservations
from txturn.core.table import AllocationTable
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle
from txturn.wire.stun import Class, StunDecodeError


class CoreState:
    """
    The state of one TURN core that its methods share.

    @ivar config: the core's configuration (replaced on reload).
    @ivar policy: which peers relays may reach (replaced on reload).
    @ivar relays: opens UDP relays.
    @ivar tcp_relays: opens TCP relays (RFC 6062), or C{None}.
    @ivar table: the allocations, by 5-tuple, channel and user.
    @ivar reservations: EVEN-PORT reservations held here.
    @ivar peer_connections: RFC 6062 peer data connections.
    @ivar forwarding: the fast path that repeats the core's decisions.
    @ivar worker: (this worker, of how many) under C{--workers N}.
    @ivar reservation_broker: where another worker's reservation is
        fetched from, or C{None}.
    @ivar ledger: the fleet's per-user quota, or C{None}.
    @ivar counters: how many of each L{Counter}; read-only outside.
    @ivar draining: whether new allocations are refused.
    """

    log = logger()

    def __init__(
        self,
        reactor: IReactorTime,
        config: ServerConfig,
        policy: PeerPolicy,
        relays: IRelayAllocator,
        tcp_relays: ITcpRelayAllocator | None,
        table: AllocationTable,
        forwarding: IForwarding,
        worker: tuple[int, int] = (0, 1),
        reservation_broker: IReservationBroker | None = None,
        ledger: IQuotaLedger | None = None,
        observers: Sequence[IServerObserver] = (),
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.policy = policy
        self.relays = relays
        self.tcp_relays = tcp_relays
        self.table = table
        self.forwarding = forwarding
        self.worker = worker
        self.reservation_broker = reservation_broker
        self.ledger = ledger
        self.observers: list[IServerObserver] = list(observers)
        self.counters: Counters = collections.Counter()
        self.draining = False
        self.reservations = Reservations(
            reactor, lambda owner: table.count_user(owner, -1), worker=worker
        )
        self.peer_connections = PeerConnections(
            reactor, on_closed=self._peer_connection_closed, worker=worker[0], workers=worker[1]
        )
        #: Unexpected errors are logged once a minute per kind, not per packet.
        self._error_log = LogThrottle(reactor)

    def count(self, what: Counter) -> None:
        """
        Count something refused or dropped (by the core, or by an adapter:
        a relayed frame to a congested stream client, say).
        """
        self.counters[what] += 1

    # -- the observer seam ---------------------------------------------------------

    def emit(self, event: object) -> None:
        """
        Announce C{event} to every observer; one that raises is logged
        (once a minute) and does not stop the others or the server.
        """
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception as e:
                self._error_log.emit(
                    error_kind(e),
                    self.log.failure,
                    "Observer {observer!r} failed on {event!r}",
                    observer=observer,
                    event=event,
                )

    # -- allocations -------------------------------------------------------------------

    def allocation_for(self, request: Request) -> Allocation | None:
        """
        The allocation an authenticated request is about; answer 437
        (none) or 441 (another user's) and return C{None} otherwise.
        """
        allocation = self.table.get(request.client, request.address)
        if allocation is None:
            request.fail(437)
            return None
        if allocation.username != request.username:
            request.fail(441)
            return None
        # The client has had the Allocate's answer (it used the
        # allocation), so no retransmission of that Allocate is coming:
        # the answer kept for one can go.
        allocation.allocate_transaction = allocation.allocate_response = b""
        return allocation

    def has_allocation(self, client: IClientChannel) -> bool:
        """
        Whether any allocation is held over C{client}.
        """
        return self.table.has_channel(client)

    def forget(self, allocation: Allocation) -> None:
        """
        The allocation has no relay left (expired, or deleted by Refresh):
        forget it and close its data connections, if it had any.
        """
        if self.table.remove(allocation):
            self.emit(
                AllocationDeleted(
                    allocation.id,
                    allocation.username,
                    allocation.client_address,
                    allocation.client.transport_name,
                    allocation.end_reason,
                    self.reactor.seconds() - allocation.created,
                    Traffic(allocation.to_peers_packets, allocation.to_peers_bytes),
                    Traffic(allocation.to_client_packets, allocation.to_client_bytes),
                    {reason.key: n for reason, n in allocation.dropped.items()},
                )
            )
        self.peer_connections.close_allocation(allocation)

    def _peer_connection_closed(self, entry: Entry) -> None:
        if entry.bound:
            self.emit(
                DataConnectionClosed(
                    entry.allocation.id, entry.connection_id, entry.connection.peer_address
                )
            )

    # -- what went wrong -----------------------------------------------------------

    def unexpected(self, failure: Failure, request: Request) -> None:
        """
        An errback for work a request left waiting (on a database, say):
        what went wrong is handled as if it had gone wrong at once.
        """
        error = failure.value
        assert isinstance(error, Exception)
        self.handling_failed(error, request, request.address, failure)

    def handling_failed(
        self,
        error: Exception,
        request: Request | None,
        address: Address,
        failure: Failure | None = None,
    ) -> None:
        """
        Answer and log what went wrong handling a message: a malformed
        attribute is 400, anything else is our bug, 500.
        """
        if isinstance(error, StunDecodeError):
            # A well-framed message with a malformed attribute value.  The
            # precise reason is for our log, not for the sender.
            self.log.debug(
                "Malformed attribute from {client}: {error}",
                client=host_port(address),
                error=str(error),
            )
            code = 400
        else:
            # A bug, not bad input: say so (once a minute per kind, as a
            # sender could repeat it per packet), answer 500, keep serving.
            self._error_log.emit(
                error_kind(error),
                self.log.failure,
                "Unexpected error handling a message from {client}",
                failure=failure,
                client=host_port(address),
            )
            code = 500
        if request is not None and request.message.cls == Class.REQUEST and request.result is None:
            request.fail(code)


def error_kind(error: BaseException) -> tuple[object, ...]:
    """
    What makes two unexpected errors the same for the log: their type and
    the line that raised them.
    """
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return (type(error),)
    return (type(error), tb.tb_frame.f_code.co_filename, tb.tb_lineno)
