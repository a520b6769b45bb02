# -*- test-case-name: tests.test_server -*-
"""
The TURN server core: decoding, authentication and dispatch, with no
sockets and no global reactor.  What the methods share is a
L{CoreState}; each method lives with the state it needs, in
L{txturn.core.methods}: L{AllocationRequests} (Allocate, Refresh),
L{PeerRequests} (CreatePermission, ChannelBind, Send) and
L{TcpAllocations} (Connect, ConnectionBind).

L{TurnServer.datagram_received} is the one entry point for a whole
datagram (UDP, or one frame cut from a TCP stream).  ChannelData is
recognised from its first byte and relayed with two dict lookups; STUN
messages are decoded, authenticated and dispatched by method.  Answers go
back through the L{IClientChannel} the message came in on; relays are
opened through the L{IRelayAllocator}.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from txturn.auth.credentials import ICredentialSource, NonceManager
from txturn.auth.revocations import Revocations, rest_user
from txturn.core.allocation import Allocation
from txturn.core.authenticator import AuthContext, Authenticator
from txturn.core.config import ServerConfig, user_quota_for
from txturn.core.counters import Counter
from txturn.core.events import IServerObserver
from txturn.core.forwarding import NO_FORWARDING, IForwarding
from txturn.core.interfaces import (
    Address,
    IClientChannel,
    IRelay,
    IRelayAllocator,
    IReservationBroker,
    ITcpRelayAllocator,
    host_port,
)
from txturn.core.methods.allocate import AllocationRequests
from txturn.core.methods.peers import PeerRequests
from txturn.core.methods.tcp import TcpAllocations
from txturn.core.peer_connections import PeerConnections
from txturn.core.peer_policy import PeerPolicy
from txturn.core.places import IPlaces
from txturn.core.quota_ledger import IQuotaLedger
from txturn.core.request import Request
from txturn.core.state import CoreState
from txturn.core.table import AllocationTable
from txturn.util.log_level import logger
from txturn.util.rate import SourceLimiter
from txturn.wire.stun import (
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

__all__ = ["ServerConfig", "TurnServer", "user_quota_for"]


class TurnServer:
    """
    The sans-io TURN core: it frames nothing and opens no socket; it
    decodes, authenticates and dispatches each message to the class that
    holds its method (L{AllocationRequests}, L{PeerRequests},
    L{TcpAllocations}), each of which is given the L{CoreState}, not this
    server.  Observers see what happens through L{add_observer}; the rest
    of the world reads the core through the read-only properties here.
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
        observers: Sequence[IServerObserver] = (),
        places: IPlaces | None = None,
        worker: tuple[int, int] = (0, 1),
        reservation_broker: IReservationBroker | None = None,
        forwarding: IForwarding | None = None,
        ledger: IQuotaLedger | None = None,
    ) -> None:
        config = config if config is not None else ServerConfig()
        #: What the methods share (L{txturn.core.state}).
        self.state = state = CoreState(
            reactor,
            config,
            policy if policy is not None else PeerPolicy(),
            relays,
            tcp_relays,
            AllocationTable(places),
            forwarding if forwarding is not None else NO_FORWARDING,
            worker=worker,
            reservation_broker=reservation_broker,
            ledger=ledger,
            observers=observers,
        )
        self.nonces = nonces if nonces is not None else NonceManager(lifetime=config.nonce_lifetime)
        #: Credentials refused before their time (C{txturn-admin revoke}).
        self.revocations = Revocations()
        self.authenticator = Authenticator(
            reactor,
            credentials,
            config.realm,
            self.nonces,
            SourceLimiter(
                reactor,
                config.challenge_rate,
                config.challenge_burst,
                proven_burst=max(config.challenge_proven_burst, config.challenge_burst),
                proven_for=config.nonce_lifetime,
            ),
            state.count,
            emit=state.emit,
            revocations=self.revocations,
        )
        #: The hot path's lookup, bound once.
        self._allocation_of = state.table.by_five_tuple.get
        self.peer_requests = PeerRequests(state)
        self.tcp_allocations = TcpAllocations(state, self.peer_requests)
        self.allocation_requests = AllocationRequests(state, self.tcp_allocations)
        self._handlers: dict[int, Callable[[Request], None]] = {
            Method.ALLOCATE: self.allocation_requests.allocate,
            Method.REFRESH: self.allocation_requests.refresh,
            Method.CREATE_PERMISSION: self.peer_requests.create_permission,
            Method.CHANNEL_BIND: self.peer_requests.channel_bind,
            Method.CONNECT: self.tcp_allocations.connect,
            Method.CONNECTION_BIND: self.tcp_allocations.connection_bind,
        }

    # -- what the rest of the world reads --------------------------------------------

    @property
    def reactor(self) -> IReactorTime:
        return self.state.reactor

    @property
    def config(self) -> ServerConfig:
        return self.state.config

    @property
    def policy(self) -> PeerPolicy:
        return self.state.policy

    @property
    def credentials(self) -> ICredentialSource:
        return self.authenticator.credentials

    @property
    def ledger(self) -> IQuotaLedger | None:
        return self.state.ledger

    @property
    def counters(self) -> Mapping[Counter, int]:
        """
        How many of each L{Counter}, read-only (L{txturn.observers.metrics}
        exports every one).
        """
        return MappingProxyType(self.state.counters)

    @property
    def draining(self) -> bool:
        """
        Whether new allocations are refused (508) while the existing ones
        run out (L{start_draining}).
        """
        return self.state.draining

    @property
    def allocations(self) -> Mapping[tuple[IClientChannel, Address], Allocation]:
        """
        (client channel, client address) -> allocation, read-only.
        """
        return MappingProxyType(self.state.table.by_five_tuple)

    @property
    def peer_connections(self) -> PeerConnections:
        return self.state.peer_connections

    def has_allocation(self, client: IClientChannel) -> bool:
        """
        Whether any allocation is held over C{client}: what decides
        whether an idle connection or DTLS session may be closed.
        """
        return self.state.has_allocation(client)

    def holds(self, username: str) -> int:
        """
        How many allocations (and reservations) C{username} holds here.
        """
        return self.state.table.held_by(username)

    # -- what the application changes ---------------------------------------------

    def count(self, what: Counter) -> None:
        """
        Count something an adapter dropped (a relayed frame to a congested
        stream client, say), with the core's own counters.
        """
        self.state.count(what)

    def reconfigure(self, config: ServerConfig) -> None:
        """
        Apply C{config} to every request from now on; allocations keep
        what they were given.  The challenge rate and nonce lifetime stay
        as they were at construction.
        """
        self.state.config = config

    def set_policy(self, policy: PeerPolicy) -> None:
        """
        Check peers against C{policy} from now on.
        """
        self.state.policy = policy
        self.policy_changed()

    def policy_changed(self) -> None:
        """
        The peer policy changed (replaced, or the host's addresses it
        keeps out): the fast path forgets what the old one allowed.
        """
        self.state.forwarding.policy_changed()

    def set_credentials(self, credentials: ICredentialSource) -> None:
        """
        Authenticate requests from now on against C{credentials}.
        """
        self.authenticator.credentials = credentials

    def start_draining(self) -> None:
        """
        Refuse new allocations from now on (508, or a redirect where there
        are alternate servers); those held run out.
        """
        self.state.draining = True

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
        now = self.state.reactor.seconds()
        revoked = self.revocations.is_revoked
        doomed = [a for a in self.state.table if revoked(a.username, now)]
        for allocation in doomed:
            _delete(allocation, "revoked")
        return len(doomed)

    def allocation_numbered(self, allocation_id: int) -> Allocation | None:
        """
        The allocation numbered C{allocation_id} (the number its log lines
        and usage record carry), or C{None}: a scan, for an operator's
        request, never for a packet.
        """
        for allocation in self.state.table:
            if allocation.id == allocation_id:
                return allocation
        return None

    def end_allocation(self, allocation_id: int, reason: str = "admin") -> bool:
        """
        Delete the allocation numbered C{allocation_id} (an operator ended
        it: its usage record says C{reason}); whether there was one.
        """
        allocation = self.allocation_numbered(allocation_id)
        if allocation is None:
            return False
        _delete(allocation, reason)
        return True

    def end_allocations_of(self, name: str, reason: str = "admin") -> int:
        """
        Delete every allocation of C{name}: a username, or the user part
        of TURN REST names (C{<expiry>:name[:policy]}); how many.  The
        user may allocate again (L{revoke} refuses them too).
        """
        doomed = [
            a for a in self.state.table if a.username == name or rest_user(a.username) == name
        ]
        for allocation in doomed:
            _delete(allocation, reason)
        return len(doomed)

    def take_reservation(self, token: bytes, owner: str) -> IRelay | None:
        """
        The relay C{owner} reserved under C{token} here, no longer reserved
        here, for another worker of C{--workers N} to adopt; C{None} if
        there is no such reservation.
        """
        return self.state.reservations.take(token, owner)

    def add_observer(self, observer: IServerObserver) -> None:
        """
        Tell C{observer} every lifecycle event from now on
        (L{txturn.core.events}): the one seam logs, metrics, usage
        records and the fleet attach through.
        """
        self.state.observers.append(observer)

    def remove_observer(self, observer: IServerObserver) -> None:
        self.state.observers.remove(observer)

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
            request = Request(
                client, address, message, self.state.config.software, emit=self.state.emit
            )
            self._dispatch(request)
        except Exception as e:
            self.state.handling_failed(e, request, address)

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
        if (
            message.method == Method.ALLOCATE
            and message.integrity_offset is None
            and message.integrity_sha256_offset is None
            and self.allocation_requests.redirect_before_authentication(
                request, self.authenticator.challenges.allow
            )
        ):
            return
        # Every other method is authenticated first.  The credential
        # source may have to wait for a database: then the handler runs
        # when the keys are known.
        result = self.authenticator.check(message, request.address)
        if isinstance(result, (AuthContext, Message)) or result is None:
            self._authenticated(result, request, handler)
            return
        result.addCallback(self._authenticated, request, handler)
        result.addErrback(self.state.unexpected, request)

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

    def _unknown_attributes(self, request: Request) -> bool:
        unknown = request.message.unknown_required()
        if unknown:
            request.fail(420, None, (Attr.UNKNOWN_ATTRIBUTES, unknown))
            return True
        return False

    def _binding(self, request: Request) -> None:
        if not self._unknown_attributes(request):
            request.succeed((Attr.XOR_MAPPED_ADDRESS, request.address))

    # -- lifecycle ---------------------------------------------------------------------

    def connection_lost(self, client: IClientChannel) -> None:
        """
        A stream client channel closed: its allocations go with it.
        """
        for allocation in self.state.table.on_channel(client):
            _delete(allocation, "connection closed")

    def shutdown(self) -> defer.Deferred[Any]:
        """
        Delete every allocation and reservation, cancelling their timers;
        the Deferred fires when every relay port is closed.
        """
        closing = [c for a in self.state.table for c in _delete(a, "server stopping")]
        closing += self.state.reservations.close()
        return defer.gatherResults(
            [d for d in closing if isinstance(d, defer.Deferred)], consumeErrors=True
        )


def _delete(allocation: Allocation, reason: str) -> list[object]:
    allocation.end_reason = reason
    return allocation.close()
