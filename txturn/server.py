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
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txturn import __version__
from txturn.allocation import STREAM_TRANSPORTS, Allocation
from txturn.auth import ICredentialSource, NonceManager
from txturn.authenticator import AuthContext, Authenticator
from txturn.connections import PeerConnections
from txturn.interfaces import (
    Address,
    IClientChannel,
    IPeerConnection,
    IRelay,
    IRelayAllocator,
    ITcpRelayAllocator,
    RelayUnavailable,
    host_port,
)
from txturn.limits import LogThrottle, SourceLimiter, TokenBucket
from txturn.policy import PeerPolicy
from txturn.stun import (
    CHANNEL_DATA_HEADER,
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
    error_response,
    family_of,
    response_to,
)

UDP = 17
TCP = 6
CHANNEL_MIN = 0x4000
#: RFC 8656 narrowed channels to 0x4FFF, but RFC 5766 clients (coturn's
#: turnutils_uclient among them) pick numbers up to 0x7FFF, and coturn
#: accepts them; so do we.
CHANNEL_MAX = 0x7FFF
RESERVATION_LIFETIME = 30.0


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
    ) -> None:
        self._reactor = reactor
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
        )
        self.peer_connections = PeerConnections(reactor)
        self.allocations: dict[tuple[IClientChannel, Address], Allocation] = {}
        #: client channel -> the client addresses with an allocation on it,
        #: so a closing connection finds its own allocations directly.
        self._by_channel: dict[IClientChannel, set[Address]] = {}
        #: token -> (reserved relay, its expiry, the user it counts against).
        self._reservations: dict[bytes, tuple[IRelay, IDelayedCall, str]] = {}
        #: Unexpected errors are logged once a minute per kind, not per packet.
        self._error_log = LogThrottle(reactor)
        self._handlers: dict[int, Callable[[IClientChannel, Address, Message], None]] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
            Method.CONNECT: self._connect,
            Method.CONNECTION_BIND: self._connection_bind,
        }

    # -- entry point -------------------------------------------------------------

    def datagram_received(self, client: IClientChannel, data: bytes, address: Address) -> None:
        """
        Handle one STUN message or ChannelData frame from C{address}.

        Never raises: malformed input is dropped or answered with an error.
        """
        if not data:
            return
        first = data[0]
        if 0x40 <= first <= 0x7F:
            allocation = self.allocations.get((client, address))
            if allocation is not None and len(data) >= 4:
                channel, length = CHANNEL_DATA_HEADER.unpack_from(data)
                if length <= len(data) - 4:
                    allocation.from_client_channel(channel, data, length)
            return
        if first > 0x03:
            return
        try:
            message = decode(data)
        except StunDecodeError as e:
            self.log.debug(
                "Dropped malformed STUN from {client}: {error}",
                client=address,
                error=str(e),
            )
            return
        try:
            self.message_received(client, address, message)
        except StunDecodeError as e:
            # A well-framed message with a malformed attribute value.  The
            # precise reason is for our log, not for the sender.
            self.log.debug(
                "Malformed attribute from {client}: {error}", client=address, error=str(e)
            )
            if message.cls == Class.REQUEST:
                self._reply(client, address, message, error_response(message, 400))
        except Exception as e:
            # A bug, not bad input: say so (once a minute per kind, as a
            # sender could repeat it per packet), answer 500, keep serving.
            self._error_log.emit(
                _error_kind(e),
                self.log.failure,
                "Unexpected error handling a message from {client}",
                client=host_port(address),
            )
            if message.cls == Class.REQUEST:
                self._reply(client, address, message, error_response(message, 500))

    def message_received(self, client: IClientChannel, address: Address, message: Message) -> None:
        if message.is_classic:
            if message.method == Method.BINDING and message.cls == Class.REQUEST:
                response = response_to(message, Class.SUCCESS)
                response.add(Attr.MAPPED_ADDRESS, address)
                client.send(encode(response), address)
            return
        if message.cls == Class.INDICATION:
            if message.method == Method.SEND:
                self._send_indication(client, address, message)
            return
        if message.cls != Class.REQUEST:
            return
        if message.method == Method.BINDING:
            self._binding(client, address, message)
            return
        handler = self._handlers.get(message.method)
        if handler is None:
            self._reply(client, address, message, error_response(message, 400, "Unknown method"))
            return
        handler(client, address, message)

    # -- answering ---------------------------------------------------------------

    def _reply(
        self,
        client: IClientChannel,
        address: Address,
        request: Message,
        response: Message,
        auth: AuthContext | None = None,
    ) -> bytes:
        if self.config.software:
            response.add(Attr.SOFTWARE, self.config.software)
        data = encode(
            response,
            auth.key if auth is not None else None,
            sha256=auth.sha256 if auth is not None else False,
            add_fingerprint=request.has_fingerprint,
        )
        client.send(data, address)
        return data

    def _refuser(
        self,
        client: IClientChannel,
        address: Address,
        request: Message,
        auth: AuthContext | None,
    ) -> Callable[..., None]:
        """
        C{fail(code, reason=None)} for one request: answer it with that
        error, signed when it was authenticated.
        """

        def fail(code: int, reason: str | None = None) -> None:
            self._reply(client, address, request, error_response(request, code, reason), auth)

        return fail

    def _authenticate(
        self, client: IClientChannel, address: Address, request: Message
    ) -> AuthContext | None:
        """
        Authenticate C{request}; when it is refused, send the answer the
        L{Authenticator} chose (if any) and return C{None}.
        """
        result = self.authenticator.check(request, address)
        if isinstance(result, AuthContext):
            return result
        if result is not None:
            self._reply(client, address, request, result)
        return None

    def _check_unknown(
        self,
        client: IClientChannel,
        address: Address,
        request: Message,
        auth: AuthContext | None,
    ) -> bool:
        unknown = request.unknown_required()
        if unknown:
            response = error_response(request, 420)
            response.add(Attr.UNKNOWN_ATTRIBUTES, unknown)
            self._reply(client, address, request, response, auth)
            return True
        return False

    def _allocation_for(
        self, client: IClientChannel, address: Address, request: Message
    ) -> tuple[AuthContext, Allocation] | None:
        """
        Authenticate a request that needs an existing allocation; answer
        437 (none) or 441 (another user's) and return C{None} otherwise.
        """
        auth = self._authenticate(client, address, request)
        if auth is None or self._check_unknown(client, address, request, auth):
            return None
        allocation = self.allocations.get((client, address))
        if allocation is None:
            self._reply(client, address, request, error_response(request, 437), auth)
            return None
        if allocation.username != auth.username:
            self._reply(client, address, request, error_response(request, 441), auth)
            return None
        return auth, allocation

    # -- methods -------------------------------------------------------------------

    def _binding(self, client: IClientChannel, address: Address, request: Message) -> None:
        if self._check_unknown(client, address, request, None):
            return
        response = response_to(request, Class.SUCCESS)
        response.add(Attr.XOR_MAPPED_ADDRESS, address)
        self._reply(client, address, request, response)

    def _lifetime(self, request: Message) -> float:
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

    def _allocate(self, client: IClientChannel, address: Address, request: Message) -> None:
        auth = self._authenticate(client, address, request)
        if auth is None or self._check_unknown(client, address, request, auth):
            return
        existing = self.allocations.get((client, address))
        if existing is not None:
            if (
                existing.allocate_transaction == request.transaction_id
                and existing.username == auth.username
            ):
                client.send(existing.allocate_response, address)
            else:
                self._reply(client, address, request, error_response(request, 437), auth)
            return

        fail = self._refuser(client, address, request, auth)

        transport = request.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            return fail(400, "Missing REQUESTED-TRANSPORT")
        quota = self._quota_error(auth, request)
        if quota is not None:
            return fail(quota)
        if transport == TCP and self.tcp_relays is not None and self.config.tcp_relay:
            return self._allocate_tcp(client, address, request, auth, fail)
        if transport != UDP:
            return fail(442)
        if not self.config.udp_relay:
            return fail(403, "UDP relays are disabled")
        token = request.get(Attr.RESERVATION_TOKEN)
        even = request.get(Attr.EVEN_PORT)
        family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = request.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        error_attr = Attr.ADDRESS_ERROR_CODE
        if additional is None:
            # coturn's clients speak the draft codepoints; answer in kind.
            additional = request.get(Attr.LEGACY_ADDITIONAL_ADDRESS_FAMILY)
            error_attr = Attr.LEGACY_ADDRESS_ERROR_CODE
        if token is not None and (even is not None or family is not None or additional is not None):
            return fail(400, "RESERVATION-TOKEN with EVEN-PORT or an address family")
        if family is not None and additional is not None:
            return fail(400, "Both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY")
        if family is not None and family not in (FAMILY_IPV4, FAMILY_IPV6):
            return fail(440)
        if even and additional is not None:
            return fail(400, "EVEN-PORT reservation with ADDITIONAL-ADDRESS-FAMILY")
        if additional is not None and additional != FAMILY_IPV6:
            return fail(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
        lifetime = self._lifetime(request) or self.config.default_lifetime
        relays: dict[int, IRelay] = {}
        reserved: IRelay | None = None
        address_error: tuple[int, int] | None = None
        if token is not None:
            held = self._reservations.pop(token, None)
            if held is None:
                return fail(508, "Unknown reservation token")
            relay, timer, owner = held
            timer.cancel()
            self._count_user(owner, -1)
            relays[family_of(relay.address[0])] = relay
        elif additional is not None:
            # A dual allocation: both families, or whichever can be had
            # with ADDRESS-ERROR-CODE saying why the other could not.
            unsupported = 0
            for wanted in (FAMILY_IPV4, FAMILY_IPV6):
                try:
                    relays[wanted] = self.relays.open(
                        wanted, even=even is not None, reserve_next=False
                    )[0]
                except RelayUnavailable as e:
                    self._unavailable(e)
                    unsupported += e.family_unsupported
                    address_error = (wanted, 440 if e.family_unsupported else 508)
            if not relays:
                return fail(440 if unsupported == 2 else 508)
        else:
            if family is None:
                family = FAMILY_IPV4
                if FAMILY_IPV4 not in self.relays.families:
                    family = family_of(address[0])
            try:
                relay, reserved = self.relays.open(
                    family, even=even is not None, reserve_next=bool(even)
                )
            except RelayUnavailable as e:
                self._unavailable(e)
                return fail(440 if e.family_unsupported else 508)
            relays[family] = relay
        if request.has(Attr.DONT_FRAGMENT):
            for relay in relays.values():
                relay.set_dont_fragment(True)
        extra: list[tuple[int, Any]] = []
        if address_error is not None:
            failed_family, code = address_error
            extra.append((error_attr, (failed_family, code, ERROR_REASONS[code])))
        allocation, response = self._allocated(
            client, address, request, auth, relays, lifetime, extra
        )
        if reserved is not None:
            new_token = secrets.token_bytes(8)
            self._reservations[new_token] = (
                reserved,
                self._reactor.callLater(RESERVATION_LIFETIME, self._reservation_expired, new_token),
                auth.username,
            )
            self._count_user(auth.username, 1)
            response.add(Attr.RESERVATION_TOKEN, new_token)
        self._send_allocated(client, address, request, auth, allocation, response)

    def _quota_error(self, auth: AuthContext, request: Message) -> int | None:
        """
        486 when the user has all the allocations they may, 508 when the
        server has.  A reservation counts as an allocation, so an Allocate
        that asks for one (EVEN-PORT with R) needs two; one that redeems
        the user's own reservation needs none.
        """
        config = self.config
        token = request.get(Attr.RESERVATION_TOKEN)
        held = self._reservations.get(token) if token is not None else None
        if held is not None and held[2] == auth.username:
            return None
        needed = 2 if request.get(Attr.EVEN_PORT) else 1
        if config.user_quota and self._user_allocations[auth.username] + needed > config.user_quota:
            self.stats["user_quota"] += 1
            return 486
        in_use = len(self.allocations) + len(self._reservations)
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
        client: IClientChannel,
        address: Address,
        request: Message,
        auth: AuthContext,
        relays: dict[int, Any],
        lifetime: float,
        extra: list[tuple[int, Any]],
        tcp: bool = False,
    ) -> tuple[Allocation, Message]:
        """
        Record a new allocation over C{relays}; return it with the start of
        its success response (relayed addresses, C{extra}, LIFETIME).
        """
        allocation = Allocation(
            self._reactor, client, address, auth.username, self._forget, stats=self.stats
        )
        allocation.tcp = tcp
        if self.config.max_bps:
            allocation.bandwidth = TokenBucket(self._reactor, self.config.max_bps)
        self._count_user(auth.username, 1)
        response = response_to(request, Class.SUCCESS)
        for relay_family, relay in sorted(relays.items()):
            allocation.add_relay(relay_family, relay, lifetime)
            response.add(Attr.XOR_RELAYED_ADDRESS, relay.advertised)
        self.allocations[(client, address)] = allocation
        self._by_channel.setdefault(client, set()).add(address)
        for attr_type, value in extra:
            response.add(attr_type, value)
        response.add(Attr.LIFETIME, int(lifetime))
        return allocation, response

    def _send_allocated(
        self,
        client: IClientChannel,
        address: Address,
        request: Message,
        auth: AuthContext,
        allocation: Allocation,
        response: Message,
    ) -> None:
        response.add(Attr.XOR_MAPPED_ADDRESS, address)
        allocation.allocate_transaction = request.transaction_id
        allocation.allocate_response = self._reply(client, address, request, response, auth)
        self.log.info(
            "Allocated {relays} for {user} from {client} over {transport} for {lifetime:.0f}s",
            relays=", ".join(f"{r.address[0]}:{r.address[1]}" for r in allocation.relays.values()),
            user=auth.username,
            client=address,
            transport=client.transport_name,
            lifetime=allocation.expires_in(),
        )

    # -- TCP allocations (RFC 6062) ----------------------------------------------

    def _allocate_tcp(
        self,
        client: IClientChannel,
        address: Address,
        request: Message,
        auth: AuthContext,
        fail: Callable[..., None],
    ) -> None:
        """
        RFC 6062 section 5.1: a TCP relayed address, over a TCP or TLS
        control connection only.
        """
        assert self.tcp_relays is not None
        if client.transport_name not in STREAM_TRANSPORTS:
            return fail(400, "TCP allocations need a TCP or TLS connection")
        for forbidden in (Attr.DONT_FRAGMENT, Attr.EVEN_PORT, Attr.RESERVATION_TOKEN):
            if request.has(forbidden):
                return fail(400, "DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN in a TCP Allocate")
        if request.has(Attr.ADDITIONAL_ADDRESS_FAMILY) or request.has(
            Attr.LEGACY_ADDITIONAL_ADDRESS_FAMILY
        ):
            return fail(400, "Dual TCP allocations are not supported")
        family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family not in (FAMILY_IPV4, FAMILY_IPV6):
            return fail(440)
        if family is None:
            family = FAMILY_IPV4
            if FAMILY_IPV4 not in self.tcp_relays.families:
                family = family_of(address[0])
        try:
            relay = self.tcp_relays.open_tcp(family)
        except RelayUnavailable as e:
            self._unavailable(e)
            return fail(440 if e.family_unsupported else 508)
        lifetime = self._lifetime(request) or self.config.default_lifetime
        allocation, response = self._allocated(
            client, address, request, auth, {family: relay}, lifetime, [], tcp=True
        )
        relay.on_connection = lambda connection: self._peer_connected(allocation, connection)
        self._send_allocated(client, address, request, auth, allocation, response)

    def _peer_connected(self, allocation: Allocation, connection: IPeerConnection) -> None:
        """
        A peer opened a connection to a TCP relay (RFC 6062 section 5.3):
        closed at once without a permission (or against policy), else
        announced to the client with a ConnectionAttempt indication.
        """
        peer = connection.peer_address
        if (
            allocation.closed
            or peer[0] not in allocation.permissions
            or not self.policy.allows_peer(peer[0], peer[1])
        ):
            if not allocation.closed:
                self.stats["refused_peer"] += 1
            connection.close()
            return
        if self._too_many_pending(allocation):
            connection.close()
            return
        connection_id = self.peer_connections.add(allocation, connection)
        indication = Message(Method.CONNECTION_ATTEMPT, Class.INDICATION, secrets.token_bytes(12))
        indication.add(Attr.XOR_PEER_ADDRESS, peer)
        indication.add(Attr.CONNECTION_ID, connection_id)
        allocation.client.send(encode(indication, add_fingerprint=True), allocation.client_address)

    def _too_many_pending(self, allocation: Allocation) -> bool:
        limit = self.config.max_pending_connections
        if limit and self.peer_connections.unbound_count(allocation) >= limit:
            self.stats["max_pending_connections"] += 1
            return True
        return False

    def _connect(self, client: IClientChannel, address: Address, request: Message) -> None:
        """
        RFC 6062 section 5.2: open a connection from the relayed address to
        a peer, concurrently with others, within the connect timeout.
        """
        found = self._allocation_for(client, address, request)
        if found is None:
            return
        auth, allocation = found

        fail = self._refuser(client, address, request, auth)

        if not allocation.tcp:
            return fail(400, "Connect needs a TCP allocation")
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if peer is None:
            return fail(400, "Missing XOR-PEER-ADDRESS")
        code = self._peer_error(allocation, peer)
        if code is not None:
            return fail(code)
        if peer in self.peer_connections.peers_of(allocation):
            return fail(446)
        if self._too_many_pending(allocation):
            return fail(508)
        relay = allocation.relay_for(peer[0])
        connecting = self.peer_connections.connecting.setdefault(allocation, set())
        connecting.add(peer)
        attempt = relay.connect(peer)  # type: ignore[union-attr]
        attempt.addTimeout(self.config.tcp_connect_timeout, self._reactor)

        def connected(connection: IPeerConnection) -> None:
            connecting.discard(peer)
            if allocation.closed:
                connection.close()
                return
            connection_id = self.peer_connections.add(allocation, connection)
            response = response_to(request, Class.SUCCESS)
            response.add(Attr.CONNECTION_ID, connection_id)
            self._reply(client, address, request, response, auth)

        def failed(reason: Any) -> None:
            connecting.discard(peer)
            self.log.info(
                "Connect from {relay} to {peer} failed: {reason}",
                relay=relay.address,  # type: ignore[union-attr]
                peer=peer,
                reason=reason.getErrorMessage(),
            )
            if not allocation.closed:
                fail(447)

        attempt.addCallbacks(connected, failed)

    def _connection_bind(self, client: IClientChannel, address: Address, request: Message) -> None:
        """
        RFC 6062 section 5.4: turn this new connection into the client data
        connection of a pending peer data connection.
        """
        auth = self._authenticate(client, address, request)
        if auth is None or self._check_unknown(client, address, request, auth):
            return

        fail = self._refuser(client, address, request, auth)

        if client.transport_name not in STREAM_TRANSPORTS:
            return fail(400, "ConnectionBind needs a TCP or TLS connection")
        if (client, address) in self.allocations:
            return fail(400, "A control connection cannot be a data connection")
        entry = self.peer_connections.pending(request.get(Attr.CONNECTION_ID))
        if entry is None:
            return fail(400, "Missing or unknown CONNECTION-ID")
        if entry.allocation.username != auth.username:
            return fail(441)
        self.peer_connections.claim(entry.connection_id)
        self._reply(client, address, request, response_to(request, Class.SUCCESS), auth)
        client.attach(entry.connection)  # type: ignore[attr-defined]

    def _reservation_expired(self, token: bytes) -> None:
        relay, _, owner = self._reservations.pop(token)
        self._count_user(owner, -1)
        relay.close()

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
        self.peer_connections.close_allocation(allocation)

    def _delete(self, allocation: Allocation) -> list[object]:
        return allocation.close()

    def _refresh(self, client: IClientChannel, address: Address, request: Message) -> None:
        found = self._allocation_for(client, address, request)
        if found is None:
            return
        auth, allocation = found
        family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family not in allocation.relays:
            self._reply(client, address, request, error_response(request, 443), auth)
            return
        lifetime = self._lifetime(request)
        if lifetime == 0:
            if family is None:
                self._delete(allocation)
            else:
                allocation.remove_family(family)
            self.log.info(
                "Allocation for {user} from {client} deleted by Refresh",
                user=auth.username,
                client=address,
            )
        else:
            allocation.refresh(lifetime, family)
        response = response_to(request, Class.SUCCESS)
        response.add(Attr.LIFETIME, int(lifetime))
        self._reply(client, address, request, response, auth)

    def _peer_error(
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
            self.log.info("Refused peer {peer} for {user}", peer=peer, user=allocation.username)
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

    def _create_permission(
        self, client: IClientChannel, address: Address, request: Message
    ) -> None:
        found = self._allocation_for(client, address, request)
        if found is None:
            return
        auth, allocation = found
        peers = request.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            self._reply(
                client,
                address,
                request,
                error_response(request, 400, "Missing XOR-PEER-ADDRESS"),
                auth,
            )
            return
        for peer in peers:
            code = self._peer_error(allocation, peer, port_matters=False)
            if code is not None:
                self._reply(client, address, request, error_response(request, code), auth)
                return
        if self._too_many_permissions(allocation, {peer[0] for peer in peers}):
            self._reply(client, address, request, error_response(request, 508), auth)
            return
        for peer in peers:
            allocation.install_permission(peer[0])
        self._reply(client, address, request, response_to(request, Class.SUCCESS), auth)

    def _channel_bind(self, client: IClientChannel, address: Address, request: Message) -> None:
        found = self._allocation_for(client, address, request)
        if found is None:
            return
        auth, allocation = found

        fail = self._refuser(client, address, request, auth)

        if allocation.tcp:
            return fail(400, "Channels need a UDP allocation")
        channel = request.get(Attr.CHANNEL_NUMBER)
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if channel is None or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            return fail(400, "Missing or invalid CHANNEL-NUMBER")
        if peer is None:
            return fail(400, "Missing XOR-PEER-ADDRESS")
        code = self._peer_error(allocation, peer)
        if code is not None:
            return fail(code)
        if allocation.channel_conflict(channel, peer):
            return fail(400, "Channel or peer already bound")
        if self._too_many_permissions(allocation, {peer[0]}):
            return fail(508)
        limit = self.config.max_channels
        if limit and channel not in allocation.channels and len(allocation.channels) >= limit:
            self.stats["max_channels"] += 1
            return fail(508)
        relay = allocation.relay_for(peer[0])
        assert relay is not None  # _peer_error checked the family
        allocation.bind_channel(channel, peer, relay)
        self._reply(client, address, request, response_to(request, Class.SUCCESS), auth)

    def _send_indication(self, client: IClientChannel, address: Address, message: Message) -> None:
        """
        A Send indication: relayed when well formed and permitted, else
        silently dropped, as indications get no answer.
        """
        allocation = self.allocations.get((client, address))
        if allocation is None or allocation.tcp or message.unknown_required():
            return
        peer = message.get(Attr.XOR_PEER_ADDRESS)
        data = message.get(Attr.DATA)
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

    # -- lifecycle ---------------------------------------------------------------------

    def connection_lost(self, client: IClientChannel) -> None:
        """
        A stream client channel closed: its allocations go with it.
        """
        for address in list(self._by_channel.get(client, ())):
            allocation = self.allocations.get((client, address))
            if allocation is not None:
                self._delete(allocation)

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
        closing = [c for a in list(self.allocations.values()) for c in self._delete(a)]
        for relay, timer, _ in self._reservations.values():
            timer.cancel()
            closing.append(relay.close())
        self._reservations.clear()
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
