# -*- test-case-name: tests.test_server -*-
"""
The TURN server core: decoding, authentication and dispatch, the
allocation table and the observers, with no sockets and no global
reactor.  Each method lives with the state it needs:
L{txturn.allocation_requests} (Allocate, Refresh),
L{txturn.peer_requests} (CreatePermission, ChannelBind, Send) and
L{txturn.tcp_allocations} (Connect, ConnectionBind).

L{TurnServer.datagram_received} is the one entry point for a whole
datagram (UDP, or one frame cut from a TCP stream).  ChannelData is
recognised from its first byte and relayed with two dict lookups; STUN
messages are decoded, authenticated and dispatched by method.  Answers go
back through the L{IClientChannel} the message came in on; relays are
opened through the L{IRelayAllocator}.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txturn import __version__
from txturn.allocation import Allocation
from txturn.allocation_requests import AllocationRequests
from txturn.allocation_table import AllocationTable
from txturn.authenticator import AuthContext, Authenticator
from txturn.credentials import ICredentialSource, NonceManager
from txturn.event_log import EventLog
from txturn.events import (
    AllocationDeleted,
    IServerObserver,
    Traffic,
)
from txturn.forwarding import NO_FORWARDING, IForwarding
from txturn.interfaces import (
    Address,
    IClientChannel,
    IRelayAllocator,
    IReservationBroker,
    ITcpRelayAllocator,
    host_port,
)
from txturn.limits import LogThrottle, SourceLimiter
from txturn.log_level import logger
from txturn.peer_connections import PeerConnections
from txturn.peer_requests import PeerRequests
from txturn.places import IPlaces
from txturn.policy import PeerPolicy
from txturn.quota_ledger import IQuotaLedger
from txturn.request import Request
from txturn.reservations import Reservations
from txturn.revocations import Revocations
from txturn.stun import (
    CHANNEL_DATA_HEADER,
    Attr,
    Class,
    Message,
    Method,
    StunDecodeError,
    decode,
    encode,
    response_to,
    send_indication_parts,
)
from txturn.tcp_allocations import TcpAllocations


@dataclass(frozen=True)
class ServerConfig:
    """
    The knobs of the TURN core, with the defaults of RFC 8656 and coturn.
    """

    realm: str = "txturn"
    software: str | None = f"txturn {__version__}"
    default_lifetime: float = 600.0
    max_lifetime: float = 3600.0
    nonce_lifetime: float = 600.0
    #: Whether UDP and TCP relays may be allocated (coturn's no-udp-relay,
    #: no-tcp-relay): a forbidden UDP relay is 403, a TCP one 442.
    udp_relay: bool = True
    tcp_relay: bool = True
    #: How long a Connect may take before 447; RFC 6062 says at least 30 s.
    tcp_connect_timeout: float = 30.0
    #: Concurrent allocations per user (486; EVEN-PORT reservations count
    #: as allocations) and on the server (508); permissions and channels
    #: per allocation (508); unbound RFC 6062 connections and Connects in
    #: progress per TCP allocation (508); relayed bytes per second per
    #: allocation, both directions, excess dropped.  0 means no limit.
    #: C{user_quota=None} (the default) is half of what the server can
    #: hold, which L{txturn.service.TurnService} works out from its relay
    #: ports and descriptors (L{user_quota_for}): one user cannot take the
    #: server, and a crowd sharing one credential still fits (a bare core
    #: with no service has no such limit).  doc/security.rst.
    user_quota: int | None = None
    total_quota: int = 0
    max_permissions: int = 128
    max_channels: int = 128
    max_pending_connections: int = 32
    max_bps: int = 0
    #: 401 and 438 answers per second to one source address, and the
    #: burst (ten seconds' worth): beyond it the server stays silent, so
    #: over time a spoofed address gets at most the rate, whatever the
    #: burst, while 1,000 clients starting at once behind one NAT are all
    #: answered at once.
    challenge_rate: float = 100.0
    challenge_burst: float = 1000.0
    #: The burst of a source that has answered a challenge (an
    #: authenticated request came from it, with a nonce bound to its
    #: address): a crowd behind one NAT keeps being answered.
    challenge_proven_burst: float = 4000.0
    #: Other servers an Allocate is redirected to (300 Try Alternate with
    #: ALTERNATE-SERVER, round robin), so a fleet is balanced with no load
    #: balancer in the media path: always, or once C{alternate_load}
    #: allocations are held, and while draining.
    alternate_servers: tuple[tuple[str, int], ...] = ()
    alternate_load: int = 0
    #: The name clients use for this fleet over TLS (ALTERNATE-DOMAIN).
    server_name: str | None = None


def user_quota_for(capacity: int) -> int:
    """
    The default per-user allocation limit on a server that can hold
    C{capacity} allocations: half of it.  One user (or one stolen
    credential) cannot take the whole server, while a crowd that shares a
    credential, as the generated user and most static-user deployments
    do, is limited only by the server itself.
    """
    return max(1, capacity // 2)


class TurnServer:
    """
    The sans-io TURN core: it frames nothing and opens no socket; it
    decodes, authenticates and dispatches each message to the class that
    holds its method (L{AllocationRequests}, L{PeerRequests},
    L{TcpAllocations}), keeps the L{AllocationTable}, and tells its
    observers what happened.
    """

    log = logger()

    def __init__(
        self,
        reactor: IReactorTime,
        credentials: ICredentialSource,
        relays: IRelayAllocator,
        policy: PeerPolicy | None = None,
        config: ServerConfig | None = None,
        nonces: NonceManager | None = None,
        tcp_relays: ITcpRelayAllocator | None = None,
        observers: Sequence[IServerObserver] | None = None,
        places: IPlaces | None = None,
        worker: tuple[int, int] = (0, 1),
        reservation_broker: IReservationBroker | None = None,
        forwarding: IForwarding | None = None,
    ) -> None:
        self._reactor = reactor
        #: The fast path that repeats this core's relay decisions
        #: (L{txturn.forwarding}); by default there is none.
        self.forwarding = forwarding if forwarding is not None else NO_FORWARDING
        #: (this worker, of how many) under C{--workers N}; (0, 1) alone.
        self.worker = worker
        #: Where a reservation another worker holds is fetched from.
        self.reservation_broker = reservation_broker
        #: What watches the server (L{txturn.events}); by default the log.
        self.observers: list[IServerObserver] = (
            list(observers) if observers is not None else [EventLog()]
        )
        self.credentials = credentials
        self.relays = relays
        self.policy = policy if policy is not None else PeerPolicy()
        self.config = config if config is not None else ServerConfig()
        self.nonces = (
            nonces if nonces is not None else NonceManager(lifetime=self.config.nonce_lifetime)
        )
        self.tcp_relays = tcp_relays
        #: Whether new allocations are refused (508) while the existing
        #: ones run out (L{txturn.service.TurnService.drain}).
        self.draining = False
        #: Counters of what was refused or dropped, for operators.
        self.stats: collections.Counter[str] = collections.Counter()
        #: Credentials refused before their time (C{txturn-admin revoke}).
        self.revocations = Revocations()
        #: The fleet-wide per-user quota, when one is shared (C{--redis}).
        self.ledger: IQuotaLedger | None = None
        self.authenticator = Authenticator(
            reactor,
            credentials,
            self.config.realm,
            self.nonces,
            SourceLimiter(
                reactor,
                self.config.challenge_rate,
                self.config.challenge_burst,
                proven_burst=max(self.config.challenge_proven_burst, self.config.challenge_burst),
                proven_for=self.config.nonce_lifetime,
            ),
            self.stats,
            emit=self.emit,
            revocations=self.revocations,
        )
        self.table = AllocationTable(places)
        #: The hot path's lookup, bound once.
        self._allocation_of = self.table.by_five_tuple.get
        self.reservations = Reservations(
            reactor, lambda owner: self.table.count_user(owner, -1), worker=worker
        )
        self.allocation_requests = AllocationRequests(self)
        self.peer_requests = PeerRequests(self)
        self.tcp_allocations = TcpAllocations(self)
        #: Unexpected errors are logged once a minute per kind, not per packet.
        self._error_log = LogThrottle(reactor)
        self._handlers: dict[int, Callable[[Request], None]] = {
            Method.ALLOCATE: self.allocation_requests.allocate,
            Method.REFRESH: self.allocation_requests.refresh,
            Method.CREATE_PERMISSION: self.peer_requests.create_permission,
            Method.CHANNEL_BIND: self.peer_requests.channel_bind,
            Method.CONNECT: self.tcp_allocations.connect,
            Method.CONNECTION_BIND: self.tcp_allocations.connection_bind,
        }

    @property
    def reactor(self) -> IReactorTime:
        return self._reactor

    def count(self, what: str) -> None:
        """
        Count something an adapter dropped (a relayed frame to a congested
        stream client, say), with the core's own counters.
        """
        self.stats[what] += 1

    def reconfigure(self, config: ServerConfig) -> None:
        """
        Apply C{config} to every request from now on; allocations keep
        what they were given.  The challenge rate and nonce lifetime stay
        as they were at construction.
        """
        self.config = config

    def set_policy(self, policy: PeerPolicy) -> None:
        """
        Check peers against C{policy} from now on.
        """
        self.policy = policy
        self.policy_changed()

    def policy_changed(self) -> None:
        """
        The peer policy changed (replaced, or the host's addresses it
        keeps out): the fast path forgets what the old one allowed.
        """
        self.forwarding.policy_changed()

    def set_credentials(self, credentials: ICredentialSource) -> None:
        """
        Authenticate requests from now on against C{credentials}.
        """
        self.credentials = credentials
        self.authenticator.credentials = credentials

    def revoke(self, name: str, until: float) -> int:
        """
        Refuse C{name} (a username, or the user of REST names) until
        C{until}, a Unix time, and delete the allocations it holds;
        returns how many.
        """
        self.revocations.revoke(name, until)
        return self._delete_revoked()

    def set_revocations(self, entries: Mapping[str, float], now: float) -> int:
        """
        Refuse exactly the names in C{entries} (name -> until), deleting
        the allocations they hold; returns how many.
        """
        self.revocations.replace(entries, now)
        return self._delete_revoked()

    def _delete_revoked(self) -> int:
        now = self._reactor.seconds()
        revoked = self.revocations.is_revoked
        doomed = [a for a in self.table if revoked(a.username, now)]
        for allocation in doomed:
            _delete(allocation, "revoked")
        return len(doomed)

    def add_observer(self, observer: IServerObserver) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: IServerObserver) -> None:
        self.observers.remove(observer)

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
                    _error_kind(e),
                    self.log.failure,
                    "Observer {observer!r} failed on {event!r}",
                    observer=observer,
                    event=event,
                )

    @property
    def allocations(self) -> Mapping[tuple[IClientChannel, Address], Allocation]:
        """
        (client channel, client address) -> allocation, read-only.
        """
        return MappingProxyType(self.table.by_five_tuple)

    @property
    def peer_connections(self) -> PeerConnections:
        return self.tcp_allocations.peer_connections

    # -- entry point -------------------------------------------------------------

    def datagram_received(self, client: IClientChannel, data: bytes, address: Address) -> None:
        """
        Handle one STUN message or ChannelData frame from C{address}.

        Never raises: malformed input is dropped or answered with an error.
        """
        if not data:
            return
        first = data[0]
        # stun.CHANNEL_DATA_FIRST_BYTE_MIN/MAX and CHANNEL_HEADER_LENGTH as
        # literals: this runs for every packet (tests.test_server checks
        # they agree).
        if 0x40 <= first <= 0x7F:
            # channel_data_header(), inline: this runs for every packet.
            allocation = self._allocation_of((client, address))
            if allocation is not None and len(data) >= 4:
                channel, length = CHANNEL_DATA_HEADER.unpack_from(data)
                if length <= len(data) - 4:
                    allocation.from_client_channel(channel, data, length)
            return
        if first > 0x03:
            return
        if first == 0 and len(data) > 1 and data[1] == 0x16:
            # A Send indication (Firefox relays with these, not channels):
            # the common shape is taken apart without decoding a Message.
            parts = send_indication_parts(data)
            if parts is not None:
                self.peer_requests.relay_send(client, address, *parts)
                return
        try:
            message = decode(data)
        except StunDecodeError as e:
            self.log.debug(
                "Dropped malformed STUN from {client}: {error}",
                client=host_port(address),
                error=str(e),
            )
            return
        self._handle(client, address, message)

    def _handle(self, client: IClientChannel, address: Address, message: Message) -> None:
        """
        Hand a decoded message to its method.  A Send indication goes
        straight to L{PeerRequests.send_indication}: it is relayed data
        (Firefox's way), and gets no answer, so it needs no L{Request}.
        """
        request: Request | None = None
        try:
            if message.cls == Class.INDICATION and not message.is_classic:
                if message.method == Method.SEND:
                    self.peer_requests.send_indication(client, address, message)
                return
            request = self._request(client, address, message)
            self._dispatch(request)
        except Exception as e:
            self._handling_failed(e, request, message, address)

    def unexpected(self, failure: Failure, request: Request) -> None:
        """
        An errback for work a request left waiting (on a database, say):
        what went wrong is handled as if it had gone wrong at once.
        """
        error = failure.value
        assert isinstance(error, Exception)
        self._handling_failed(error, request, request.message, request.address, failure)

    def _handling_failed(
        self,
        error: Exception,
        request: Request | None,
        message: Message,
        address: Address,
        failure: Failure | None = None,
    ) -> None:
        """
        Answer and log what went wrong handling C{message}: a malformed
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
                _error_kind(error),
                self.log.failure,
                "Unexpected error handling a message from {client}",
                failure=failure,
                client=host_port(address),
            )
            code = 500
        if request is not None and message.cls == Class.REQUEST and request.result is None:
            request.fail(code)

    def _dispatch(self, request: Request) -> None:
        message = request.message
        if message.is_classic:
            # RFC 3489: no SOFTWARE, no FINGERPRINT, MAPPED-ADDRESS only.
            if message.method == Method.BINDING and message.cls == Class.REQUEST:
                response = response_to(message, Class.SUCCESS)
                response.add(Attr.MAPPED_ADDRESS, request.address)
                request.client.send(encode(response), request.address)
            return
        if message.cls != Class.REQUEST:
            return
        if message.method == Method.BINDING:
            self._binding(request)
            return
        handler = self._handlers.get(message.method)
        if handler is None:
            request.fail(400, "Unknown method")
            return
        # Every other method is authenticated first.  The credential
        # source may have to wait for a database: then the handler runs
        # when the keys are known.
        result = self.authenticator.check(message, request.address)
        if isinstance(result, (AuthContext, Message)) or result is None:
            self._authenticated(result, request, handler)
            return
        result.addCallback(self._authenticated, request, handler)
        result.addErrback(self.unexpected, request)

    def _authenticated(
        self, result: object, request: Request, handler: Callable[[Request], None]
    ) -> None:
        """
        Run C{handler} for an authenticated request with no unknown
        comprehension-required attribute; otherwise answer as the
        L{Authenticator} chose (if at all) or with 420.
        """
        if not isinstance(result, AuthContext):
            if isinstance(result, Message):
                request.answer(result)
            return
        request.auth = result
        if not self._unknown_attributes(request):
            handler(request)

    # -- requests ------------------------------------------------------------------

    def _request(self, client: IClientChannel, address: Address, message: Message) -> Request:
        return Request(client, address, message, self.config.software, emit=self.emit)

    def _unknown_attributes(self, request: Request) -> bool:
        unknown = request.message.unknown_required()
        if unknown:
            request.fail(420, None, (Attr.UNKNOWN_ATTRIBUTES, unknown))
            return True
        return False

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

    # -- methods -------------------------------------------------------------------

    def _binding(self, request: Request) -> None:
        if not self._unknown_attributes(request):
            request.succeed((Attr.XOR_MAPPED_ADDRESS, request.address))

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
                    self._reactor.seconds() - allocation.created,
                    Traffic(allocation.to_peers_packets, allocation.to_peers_bytes),
                    Traffic(allocation.to_client_packets, allocation.to_client_bytes),
                    dict(allocation.dropped),
                )
            )
        self.tcp_allocations.allocation_closed(allocation)

    # -- lifecycle ---------------------------------------------------------------------

    def connection_lost(self, client: IClientChannel) -> None:
        """
        A stream client channel closed: its allocations go with it.
        """
        for allocation in self.table.on_channel(client):
            _delete(allocation, "connection closed")

    def has_allocation(self, client: IClientChannel) -> bool:
        """
        Whether any allocation is held over C{client}: what decides
        whether an idle connection or DTLS session may be closed.
        """
        return self.table.has_channel(client)

    def shutdown(self) -> defer.Deferred[Any]:
        """
        Delete every allocation and reservation, cancelling their timers;
        the Deferred fires when every relay port is closed.
        """
        closing = [c for a in self.table for c in _delete(a, "server stopping")]
        closing += self.reservations.close()
        return defer.gatherResults(
            [d for d in closing if isinstance(d, defer.Deferred)], consumeErrors=True
        )


def _delete(allocation: Allocation, reason: str) -> list[object]:
    allocation.end_reason = reason
    return allocation.close()


def _error_kind(error: BaseException) -> tuple[object, ...]:
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
