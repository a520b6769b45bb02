# -*- test-case-name: tests.test_server -*-
"""
The TURN server core: STUN/TURN request handling, authentication and the
allocation table, with no sockets and no global reactor.

L{TurnServer.datagram_received} is the one entry point for a whole
datagram (UDP, or one frame cut from a TCP stream).  ChannelData is
recognised from its first byte and relayed with two dict lookups; STUN
messages are decoded, authenticated and dispatched by method.  Answers go
back through the L{IClientChannel} the message came in on; relays are
opened through the L{IRelayAllocator}.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txturn import __version__
from txturn.allocate_request import AllocateRequest, Refusal, parse_allocate
from txturn.allocation import Allocation
from txturn.authenticator import AuthContext, Authenticator
from txturn.credentials import ICredentialSource, NonceManager
from txturn.event_log import EventLog
from txturn.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRefreshed,
    IServerObserver,
    Traffic,
)
from txturn.interfaces import (
    Address,
    IClientChannel,
    IRelay,
    IRelayAllocator,
    ITcpRelayAllocator,
    RelayUnavailable,
    host_port,
)
from txturn.limits import LogThrottle, SourceLimiter, TokenBucket
from txturn.peer_connections import PeerConnections
from txturn.policy import PeerPolicy
from txturn.request import Request
from txturn.reservations import Reservations
from txturn.stun import (
    CHANNEL_DATA_FIRST_BYTE_MAX,
    CHANNEL_DATA_FIRST_BYTE_MIN,
    CHANNEL_DATA_HEADER,
    CHANNEL_HEADER_LENGTH,
    ERROR_REASONS,
    FAMILY_IPV4,
    FAMILY_IPV6,
    Attr,
    Class,
    Message,
    Method,
    StunDecodeError,
    decode,
    encode,
    family_of,
    response_to,
)
from txturn.tcp_allocations import TcpAllocations

CHANNEL_MIN = 0x4000
#: RFC 8656 narrowed channels to 0x4FFF, but RFC 5766 clients (coturn's
#: turnutils_uclient among them) pick numbers up to 0x7FFF, and coturn
#: accepts them; so do we.
CHANNEL_MAX = 0x7FFF


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
    #: The defaults keep one user's footprint to a small share of the
    #: server (doc/security.rst has the arithmetic).
    user_quota: int = 100
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


class TurnServer:
    """
    The sans-io TURN core.

    @ivar allocations: (client channel, client address) -> L{Allocation}.
    """

    log = Logger()

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
    ) -> None:
        self._reactor = reactor
        #: What watches the server (L{txturn.events}); by default the log.
        self.observers: list[IServerObserver] = (
            list(observers) if observers is not None else [EventLog()]
        )
        self._allocation_ids = itertools.count(1)
        self.credentials = credentials
        self.relays = relays
        self.policy = policy if policy is not None else PeerPolicy()
        self.config = config if config is not None else ServerConfig()
        self.nonces = (
            nonces if nonces is not None else NonceManager(lifetime=self.config.nonce_lifetime)
        )
        self.tcp_relays = tcp_relays
        #: Counters of what was refused or dropped, for operators.
        self.stats: collections.Counter[str] = collections.Counter()
        self._user_allocations: collections.Counter[str] = collections.Counter()
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
        )
        self.allocations: dict[tuple[IClientChannel, Address], Allocation] = {}
        #: client channel -> the client addresses with an allocation on it,
        #: so a closing connection finds its own allocations directly.
        self._by_channel: dict[IClientChannel, set[Address]] = {}
        self.reservations = Reservations(reactor, lambda owner: self._count_user(owner, -1))
        self.tcp_allocations = TcpAllocations(self)
        #: Unexpected errors are logged once a minute per kind, not per packet.
        self._error_log = LogThrottle(reactor)
        self._handlers: dict[int, Callable[[Request], None]] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
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

    def add_observer(self, observer: IServerObserver) -> None:
        self.observers.append(observer)

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
        if CHANNEL_DATA_FIRST_BYTE_MIN <= first <= CHANNEL_DATA_FIRST_BYTE_MAX:
            # channel_data_header(), inline: this runs for every packet.
            allocation = self.allocations.get((client, address))
            if allocation is not None and len(data) >= CHANNEL_HEADER_LENGTH:
                channel, length = CHANNEL_DATA_HEADER.unpack_from(data)
                if length <= len(data) - CHANNEL_HEADER_LENGTH:
                    allocation.from_client_channel(channel, data, length)
            return
        if first > 0x03:
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
        request = self._request(client, address, message)
        try:
            self._dispatch(request)
        except StunDecodeError as e:
            # A well-framed message with a malformed attribute value.  The
            # precise reason is for our log, not for the sender.
            self.log.debug(
                "Malformed attribute from {client}: {error}",
                client=host_port(address),
                error=str(e),
            )
            if message.cls == Class.REQUEST and request.result is None:
                request.fail(400)
        except Exception as e:
            # A bug, not bad input: say so (once a minute per kind, as a
            # sender could repeat it per packet), answer 500, keep serving.
            self._error_log.emit(
                _error_kind(e),
                self.log.failure,
                "Unexpected error handling a message from {client}",
                client=host_port(address),
            )
            if message.cls == Class.REQUEST and request.result is None:
                request.fail(500)

    def _dispatch(self, request: Request) -> None:
        message = request.message
        if message.is_classic:
            # RFC 3489: no SOFTWARE, no FINGERPRINT, MAPPED-ADDRESS only.
            if message.method == Method.BINDING and message.cls == Class.REQUEST:
                response = response_to(message, Class.SUCCESS)
                response.add(Attr.MAPPED_ADDRESS, request.address)
                request.client.send(encode(response), request.address)
            return
        if message.cls == Class.INDICATION:
            if message.method == Method.SEND:
                self._send_indication(request)
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
        handler(request)

    # -- requests ------------------------------------------------------------------

    def _request(self, client: IClientChannel, address: Address, message: Message) -> Request:
        return Request(client, address, message, self.config.software, emit=self.emit)

    def authenticate(self, request: Request) -> bool:
        """
        Authenticate C{request} and check it carries no unknown
        comprehension-required attribute; when it fails either, answer as
        the L{Authenticator} chose (if at all) or with 420, and return
        C{False}.
        """
        result = self.authenticator.check(request.message, request.address)
        if not isinstance(result, AuthContext):
            if result is not None:
                request.answer(result)
            return False
        request.auth = result
        return not self._unknown_attributes(request)

    def _unknown_attributes(self, request: Request) -> bool:
        unknown = request.message.unknown_required()
        if unknown:
            request.fail(420, None, (Attr.UNKNOWN_ATTRIBUTES, unknown))
            return True
        return False

    def allocation_for(self, request: Request) -> Allocation | None:
        """
        Authenticate a request that needs an existing allocation; answer
        437 (none) or 441 (another user's) and return C{None} otherwise.
        """
        if not self.authenticate(request):
            return None
        allocation = self.allocations.get((request.client, request.address))
        if allocation is None:
            request.fail(437)
            return None
        if allocation.username != request.username:
            request.fail(441)
            return None
        return allocation

    # -- methods -------------------------------------------------------------------

    def _binding(self, request: Request) -> None:
        if not self._unknown_attributes(request):
            request.succeed((Attr.XOR_MAPPED_ADDRESS, request.address))

    def _lifetime(self, request: Request) -> float:
        """
        RFC 8656 sections 7.2 and 7.3: the requested lifetime capped at the
        maximum, and never below the default; 0 only when asked for.
        """
        requested = request.get(Attr.LIFETIME)
        if requested == 0:
            return 0.0
        if requested is None:
            return self.config.default_lifetime
        return float(max(self.config.default_lifetime, min(requested, self.config.max_lifetime)))

    def _allocate(self, request: Request) -> None:
        if not self.authenticate(request) or self._retransmitted_allocate(request):
            return
        meaning = parse_allocate(
            request.message,
            udp_relays=self.config.udp_relay,
            tcp_relays=self.tcp_relays is not None and self.config.tcp_relay,
            over_stream=bool(request.client.stream),
        )
        if isinstance(meaning, Refusal):
            return request.fail(meaning.code, meaning.reason)
        quota = self._quota_error(request, meaning)
        if quota is not None:
            return request.fail(quota)
        if meaning.tcp:
            return self._allocate_tcp(request, meaning)
        relays: dict[int, IRelay] = {}
        extra: list[tuple[int, Any]] = []
        if not self._open_udp(request, meaning, relays, extra):
            return
        if meaning.dont_fragment:
            for relay in relays.values():
                relay.set_dont_fragment(True)
        lifetime = self._lifetime(request) or self.config.default_lifetime
        self._allocated(request, relays, lifetime, extra)

    def _retransmitted_allocate(self, request: Request) -> bool:
        """
        For a 5-tuple that has an allocation already: the same answer,
        byte for byte, to a retransmission of the Allocate that made it,
        437 to anything else.
        """
        existing = self.allocations.get((request.client, request.address))
        if existing is None:
            return False
        if (
            existing.allocate_transaction == request.transaction_id
            and existing.username == request.username
        ):
            request.client.send(existing.allocate_response, request.address)
        else:
            request.fail(437)
        return True

    def _open_udp(
        self,
        request: Request,
        meaning: AllocateRequest,
        relays: dict[int, IRelay],
        extra: list[tuple[int, Any]],
    ) -> bool:
        """
        Open (or redeem) the UDP relays C{meaning} asks for into
        C{relays}, with what the answer must say about them into C{extra};
        answer the request and return C{False} when none can be had.
        """
        if meaning.token is not None:
            redeemed = self.reservations.redeem(meaning.token)
            if redeemed is None:
                request.fail(508, "Unknown reservation token")
                return False
            relays[family_of(redeemed.address[0])] = redeemed
            return True
        if meaning.dual:
            address_error = self._open_both(relays, meaning.even_port)
            if not relays:
                request.fail(address_error[1] if address_error else 508)
                return False
            if address_error is not None:
                failed_family, code = address_error
                extra.append((meaning.error_attribute, (failed_family, code, ERROR_REASONS[code])))
            return True
        family = self._family(meaning.family, request, self.relays.families)
        try:
            relay, reserved = self.relays.open(
                family, even=meaning.even_port, reserve_next=meaning.reserve
            )
        except RelayUnavailable as e:
            self._unavailable(e)
            request.fail(440 if e.family_unsupported else 508)
            return False
        relays[family] = relay
        if reserved is not None:
            token = self.reservations.hold(reserved, request.username)
            self._count_user(request.username, 1)
            extra.append((Attr.RESERVATION_TOKEN, token))
        return True

    def _open_both(self, relays: dict[int, IRelay], even: bool) -> tuple[int, int] | None:
        """
        A dual allocation: a relay of each family into C{relays}, or
        whichever can be had; returns (family, code) for one that could
        not (440 if the server has no such family, else 508).  With
        neither, the code says what to answer.
        """
        address_error = None
        unsupported = 0
        for wanted in (FAMILY_IPV4, FAMILY_IPV6):
            try:
                relays[wanted] = self.relays.open(wanted, even=even, reserve_next=False)[0]
            except RelayUnavailable as e:
                self._unavailable(e)
                unsupported += e.family_unsupported
                address_error = (wanted, 440 if e.family_unsupported else 508)
        if not relays:
            return (0, 440 if unsupported == 2 else 508)
        return address_error

    @staticmethod
    def _family(requested: int | None, request: Request, available: frozenset[int]) -> int:
        """
        The family to relay in: the requested one; else IPv4, or the
        client's own family when the server has no IPv4 relay.
        """
        if requested is not None:
            return requested
        if FAMILY_IPV4 in available:
            return FAMILY_IPV4
        return family_of(request.address[0])

    def _quota_error(self, request: Request, meaning: AllocateRequest) -> int | None:
        """
        486 when the user has all the allocations they may, 508 when the
        server has.  A reservation counts as an allocation, so an Allocate
        that asks for one (EVEN-PORT with R) needs two; one that redeems
        the user's own reservation needs none.
        """
        config = self.config
        username = request.username
        if meaning.token is not None and self.reservations.owner(meaning.token) == username:
            return None
        needed = meaning.places
        if config.user_quota and self._user_allocations[username] + needed > config.user_quota:
            self.stats["user_quota"] += 1
            return 486
        in_use = len(self.allocations) + len(self.reservations)
        if config.total_quota and in_use + needed > config.total_quota:
            self.stats["total_quota"] += 1
            return 508
        return None

    def _unavailable(self, error: RelayUnavailable) -> None:
        """
        Say why relays could not be had (a full port range, no
        descriptors left), once a minute per reason, not per Allocate.
        """
        if error.family_unsupported:
            return
        self.stats["relay_unavailable"] += 1
        self._error_log.emit(
            ("relay unavailable", str(error)),
            self.log.warn,
            "Allocate refused with 508: {reason}",
            reason=str(error),
        )

    def _count_user(self, username: str, delta: int) -> None:
        counts = self._user_allocations
        counts[username] += delta
        if counts[username] <= 0:
            del counts[username]

    def _allocated(
        self,
        request: Request,
        relays: dict[int, Any],
        lifetime: float,
        extra: list[tuple[int, Any]],
        tcp: bool = False,
    ) -> Allocation:
        """
        Record a new allocation over C{relays} and answer the request with
        its relayed addresses, C{extra}, LIFETIME and XOR-MAPPED-ADDRESS;
        the answer is kept for retransmissions.
        """
        client, address, username = request.client, request.address, request.username
        allocation = Allocation(
            self._reactor,
            client,
            address,
            username,
            self._forget,
            stats=self.stats,
            allocation_id=next(self._allocation_ids),
            emit=self.emit,
        )
        allocation.tcp = tcp
        if self.config.max_bps:
            allocation.bandwidth = TokenBucket(self._reactor, self.config.max_bps)
        self._count_user(username, 1)
        attributes: list[tuple[int, Any]] = []
        for relay_family, relay in sorted(relays.items()):
            allocation.add_relay(relay_family, relay, lifetime)
            attributes.append((Attr.XOR_RELAYED_ADDRESS, relay.advertised))
        self.allocations[(client, address)] = allocation
        self._by_channel.setdefault(client, set()).add(address)
        attributes += extra
        attributes += [(Attr.LIFETIME, int(lifetime)), (Attr.XOR_MAPPED_ADDRESS, address)]
        allocation.allocate_transaction = request.transaction_id
        allocation.allocate_response = request.succeed(*attributes)
        self.emit(
            AllocationCreated(
                allocation.id,
                username,
                address,
                client.transport_name,
                tuple(r.address for r in allocation.relays.values()),
                lifetime,
                tcp,
            )
        )
        return allocation

    def _allocate_tcp(self, request: Request, meaning: AllocateRequest) -> None:
        """
        RFC 6062 section 5.1: a TCP relayed address.
        """
        assert self.tcp_relays is not None
        family = self._family(meaning.family, request, self.tcp_relays.families)
        try:
            relay = self.tcp_relays.open_tcp(family)
        except RelayUnavailable as e:
            self._unavailable(e)
            return request.fail(440 if e.family_unsupported else 508)
        lifetime = self._lifetime(request) or self.config.default_lifetime
        allocation = self._allocated(request, {family: relay}, lifetime, [], tcp=True)
        relay.on_connection = lambda connection: self.tcp_allocations.peer_connected(
            allocation, connection
        )

    def _forget(self, allocation: Allocation) -> None:
        """
        The allocation has no relay left (expired, or deleted by Refresh):
        forget it and close its data connections, if it had any.
        """
        client = allocation.client
        if self.allocations.pop((client, allocation.client_address), None):
            self._count_user(allocation.username, -1)
            addresses = self._by_channel.get(client)
            if addresses is not None:
                addresses.discard(allocation.client_address)
                if not addresses:
                    del self._by_channel[client]
            self.emit(
                AllocationDeleted(
                    allocation.id,
                    allocation.username,
                    allocation.client_address,
                    client.transport_name,
                    allocation.end_reason,
                    self._reactor.seconds() - allocation.created,
                    Traffic(allocation.to_peers_packets, allocation.to_peers_bytes),
                    Traffic(allocation.to_client_packets, allocation.to_client_bytes),
                )
            )
        self.tcp_allocations.allocation_closed(allocation)

    def _delete(self, allocation: Allocation, reason: str) -> list[object]:
        allocation.end_reason = reason
        return allocation.close()

    def _refresh(self, request: Request) -> None:
        allocation = self.allocation_for(request)
        if allocation is None:
            return
        family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family not in allocation.relays:
            return request.fail(443)
        lifetime = self._lifetime(request)
        if lifetime == 0:
            allocation.end_reason = "refresh"
            if family is None:
                self._delete(allocation, "refresh")
            else:
                allocation.remove_family(family)
        else:
            allocation.refresh(lifetime, family)
            self.emit(
                AllocationRefreshed(allocation.id, request.username, request.address, lifetime)
            )
        request.succeed((Attr.LIFETIME, int(lifetime)))

    def peer_error(
        self, allocation: Allocation, peer: Address, port_matters: bool = True
    ) -> int | None:
        """
        The error code a peer address earns on any path, or C{None}.
        CreatePermission ignores the port (a permission is per IP).
        """
        if allocation.relay_for(peer[0]) is None:
            return 443
        allowed = (
            self.policy.allows_peer(peer[0], peer[1])
            if port_matters
            else self.policy.allows(peer[0])
        )
        if not allowed:
            self.stats["refused_peer"] += 1
            self.log.info(
                "Refused peer {peer} for {user}", peer=host_port(peer), user=allocation.username
            )
            return 403
        return None

    def _too_many_permissions(self, allocation: Allocation, hosts: set[str]) -> bool:
        limit = self.config.max_permissions
        if not limit:
            return False
        new = hosts - allocation.permissions.keys()
        if len(allocation.permissions) + len(new) > limit:
            self.stats["max_permissions"] += 1
            return True
        return False

    def _create_permission(self, request: Request) -> None:
        allocation = self.allocation_for(request)
        if allocation is None:
            return
        peers = request.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            return request.fail(400, "Missing XOR-PEER-ADDRESS")
        for peer in peers:
            code = self.peer_error(allocation, peer, port_matters=False)
            if code is not None:
                return request.fail(code)
        if self._too_many_permissions(allocation, {peer[0] for peer in peers}):
            return request.fail(508)
        for peer in peers:
            allocation.install_permission(peer[0])
        request.succeed()

    def _channel_bind(self, request: Request) -> None:
        allocation = self.allocation_for(request)
        if allocation is None:
            return
        if allocation.tcp:
            return request.fail(400, "Channels need a UDP allocation")
        channel = request.get(Attr.CHANNEL_NUMBER)
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if channel is None or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            return request.fail(400, "Missing or invalid CHANNEL-NUMBER")
        if peer is None:
            return request.fail(400, "Missing XOR-PEER-ADDRESS")
        code = self.peer_error(allocation, peer)
        if code is not None:
            return request.fail(code)
        if allocation.channel_conflict(channel, peer):
            return request.fail(400, "Channel or peer already bound")
        if self._too_many_permissions(allocation, {peer[0]}) or self._too_many_channels(
            allocation, channel
        ):
            return request.fail(508)
        relay = allocation.relay_for(peer[0])
        assert relay is not None  # peer_error checked the family
        allocation.bind_channel(channel, peer, relay)
        request.succeed()

    def _too_many_channels(self, allocation: Allocation, channel: int) -> bool:
        limit = self.config.max_channels
        if limit and channel not in allocation.channels and len(allocation.channels) >= limit:
            self.stats["max_channels"] += 1
            return True
        return False

    def _send_indication(self, request: Request) -> None:
        """
        A Send indication: relayed when well formed and permitted, else
        silently dropped, as indications get no answer.
        """
        allocation = self.allocations.get((request.client, request.address))
        if allocation is None or allocation.tcp or request.message.unknown_required():
            return
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        data = request.get(Attr.DATA)
        if peer is None or data is None or peer[0] not in allocation.permissions:
            return
        relay = allocation.relay_for(peer[0])
        if relay is None:
            return
        if not self.policy.allows_peer(peer[0], peer[1]):
            self.stats["refused_peer"] += 1
            return
        if allocation.bandwidth is not None and not allocation.bandwidth.take(len(data)):
            self.stats["dropped_bandwidth"] += 1
            return
        relay.send(data, peer)
        allocation.to_peers_packets += 1
        allocation.to_peers_bytes += len(data)

    # -- lifecycle ---------------------------------------------------------------------

    def connection_lost(self, client: IClientChannel) -> None:
        """
        A stream client channel closed: its allocations go with it.
        """
        for address in list(self._by_channel.get(client, ())):
            allocation = self.allocations.get((client, address))
            if allocation is not None:
                self._delete(allocation, "connection closed")

    def has_allocation(self, client: IClientChannel) -> bool:
        """
        Whether any allocation is held over C{client}: what decides
        whether an idle connection or DTLS session may be closed.
        """
        return client in self._by_channel

    def shutdown(self) -> defer.Deferred[Any]:
        """
        Delete every allocation and reservation, cancelling their timers;
        the Deferred fires when every relay port is closed.
        """
        closing = [
            c for a in list(self.allocations.values()) for c in self._delete(a, "server stopping")
        ]
        closing += self.reservations.close()
        return defer.gatherResults(
            [d for d in closing if isinstance(d, defer.Deferred)], consumeErrors=True
        )


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
