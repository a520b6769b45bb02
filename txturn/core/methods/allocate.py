# -*- test-case-name: tests.test_server -*-
"""
Allocate and Refresh (RFC 8656 sections 7.2 and 7.3, RFC 6062 section
5.1): what an allocation's life looks like from the client's side.

What an Allocate means is decided by the pure L{parse_allocate}; this
module does what it says: checks the quotas, opens (or redeems) the
relays, records the allocation in the table and answers.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

from txturn.core.allocation import Allocation
from txturn.core.counters import Counter
from txturn.core.events import AllocationCreated, AllocationRefreshed
from txturn.core.interfaces import IRelay, RelayUnavailable
from txturn.core.methods.allocate_attributes import AllocateRequest, Refusal, parse_allocate
from txturn.core.request import Request
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle, TokenBucket
from txturn.wire.stun import ERROR_REASONS, FAMILY_IPV4, FAMILY_IPV6, Attr, family_of

if TYPE_CHECKING:
    from txturn.core.methods.tcp import TcpAllocations
    from txturn.core.state import CoreState

#: Extra attributes of an Allocate success, after the relayed addresses.
Extra = list[tuple[int, Any]]


class AllocationRequests:
    """
    The Allocate and Refresh methods of one state.
    """

    log = logger()

    def __init__(self, state: "CoreState", tcp_allocations: "TcpAllocations | None" = None) -> None:
        #: Reservation tokens being fetched from other workers.
        self._fetching: set[bytes] = set()
        #: Allocates waiting for the fleet's ledger, by 5-tuple and transaction.
        self._asking: set[tuple[object, ...]] = set()
        self._state = state
        #: Where a TCP relay's peer connections go (RFC 6062).
        self._tcp_allocations = tcp_allocations
        self._table = state.table
        # Ids unique on the whole server, also under --workers N.
        worker, workers = state.worker
        self._ids = itertools.count(worker + 1, workers)
        self._next_alternate = 0
        #: Why relays could not be had, once a minute per reason.
        self._unavailable_log = LogThrottle(state.reactor)

    def lifetime(self, request: Request) -> float:
        """
        RFC 8656 sections 7.2 and 7.3: the requested lifetime capped at the
        maximum, and never below the default; 0 only when asked for.
        """
        requested = request.get(Attr.LIFETIME)
        if requested == 0:
            return 0.0
        if requested is None:
            return self._state.config.default_lifetime
        return float(
            max(
                self._state.config.default_lifetime,
                min(requested, self._state.config.max_lifetime),
            )
        )

    # -- Allocate ----------------------------------------------------------------

    def allocate(self, request: Request) -> None:
        self._allocate(request, fetch=True)

    def _allocate(self, request: Request, fetch: bool) -> None:
        state = self._state
        if self._retransmitted(request):
            return
        meaning = parse_allocate(
            request.message,
            udp_relays=self._state.config.udp_relay,
            tcp_relays=state.tcp_relays is not None and self._state.config.tcp_relay,
            over_stream=bool(request.client.stream),
        )
        # An Allocate that redeems a RESERVATION-TOKEN is the second half
        # of a pair (RTCP beside RTP) whose first half this server
        # granted: a call already being set up.  A drain or a redirect
        # would break that call, so only the others are refused or sent
        # elsewhere.
        pair = not isinstance(meaning, Refusal) and meaning.token is not None
        if not pair and self._redirected(request):
            return
        if state.draining and not pair:
            state.count(Counter.DRAINING)
            return request.fail(508, "Server draining")
        if isinstance(meaning, Refusal):
            return request.fail(meaning.code, meaning.reason)
        if fetch and meaning.token is not None and self._fetching_elsewhere(request, meaning.token):
            return
        if self._asking_ledger(request, meaning):
            return
        self._create(request, meaning)

    def _create(self, request: Request, meaning: AllocateRequest) -> None:
        """
        Check the server's own quotas, open the relays and answer.
        """
        # The quota check and the places the allocation then takes are one
        # step, also when workers share the places.
        with self._table.places.transaction():
            quota = self._quota_error(request, meaning)
            if quota is not None:
                return request.fail(quota)
            if meaning.tcp:
                return self._allocate_tcp(request, meaning)
            relays: dict[int, IRelay] = {}
            extra: Extra = []
            if not self._open_udp(request, meaning, relays, extra):
                return
            if meaning.dont_fragment:
                for relay in relays.values():
                    relay.set_dont_fragment(True)
            lifetime = self.lifetime(request) or self._state.config.default_lifetime
            self._allocated(request, relays, lifetime, extra)

    def _asking_ledger(self, request: Request, meaning: AllocateRequest) -> bool:
        """
        With a fleet-wide ledger (C{--redis}): ask it for one more
        allocation of the user, and create it when it says yes; 486 when
        it says no; with no answer, go on with this server's own counts.
        A retransmission meanwhile is not answered: the first one will be.
        """
        state = self._state
        ledger = state.ledger
        if ledger is None or (
            meaning.token is not None and state.reservations.owner(meaning.token) is not None
        ):
            return False
        key = (request.client, request.address, request.transaction_id)
        if key in self._asking:
            return True
        self._asking.add(key)
        username = request.username
        limit = request.policy.narrow(state.config.user_quota or 0)

        def answered(granted: bool | None) -> None:
            self._asking.discard(key)
            if granted is False:
                self._over_quota(username, limit)
                request.fail(486)
                return
            try:
                self._create(request, meaning)
            finally:
                if granted and not self._created(request):
                    ledger.release(username)

        ledger.acquire(username, limit).addCallback(answered).addErrback(state.unexpected, request)
        return True

    def _created(self, request: Request) -> bool:
        existing = self._table.get(request.client, request.address)
        return existing is not None and existing.allocate_transaction == request.transaction_id

    def _fetching_elsewhere(self, request: Request, token: bytes) -> bool:
        """
        Under C{--workers N}: a RESERVATION-TOKEN another worker holds is
        fetched from it, and the Allocate is handled again once the
        reservation is this worker's (a retransmission meanwhile is not
        answered: the first one will be).
        """
        state = self._state
        broker = state.reservation_broker
        reservations = state.reservations
        owner = reservations.worker_of(token)
        if broker is None or owner == reservations.worker or reservations.owner(token):
            return False
        if token in self._fetching:
            return True
        self._fetching.add(token)
        username = request.username

        def fetched(relay: IRelay | None) -> None:
            self._fetching.discard(token)
            if relay is not None:
                reservations.adopt(token, relay, username)
                self._table.count_user(username, 1)
                state.count(Counter.RESERVATIONS_FETCHED)
            # Without the reservation, the Allocate fails as for an
            # unknown token; with it, it succeeds here.
            self._allocate(request, fetch=False)

        broker.fetch(owner, token, username).addCallback(fetched)
        return True

    def redirect_before_authentication(
        self, request: Request, allow: Callable[[str], bool]
    ) -> bool:
        """
        Answer an Allocate that carries no credentials yet with 300 Try
        Alternate, unsigned, when this server would redirect it once
        authenticated; whether it was answered (or, past its source's share
        of unauthenticated answers, C{allow}, dropped).

        This is what coturn does and what browsers need: libwebrtc carries
        the nonce of a 401 from the first server to the alternate, gets 438
        there and gives up, so a redirect after the 401 is one it never
        follows.  A retransmission from a 5-tuple that has an allocation,
        and the second half of a reserved pair, go through authentication
        as before.  C{allow} is the per-source limit on 401s: a 300 is
        no larger than a 401, and goes unasked to whoever a source claims
        to be.
        """
        if (
            not self.would_redirect()
            or self._table.get(request.client, request.address) is not None
            or request.message.has(Attr.RESERVATION_TOKEN)
        ):
            return False
        if not allow(request.address[0]):
            self._state.count(Counter.CHALLENGES_LIMITED)
            return True
        return self._redirected(request)

    def would_redirect(self) -> bool:
        """
        Whether an Allocate would now be redirected (there are alternates,
        and this server is draining or holds C{alternate_load}
        allocations, always if that is 0).
        """
        config = self._state.config
        if not config.alternate_servers:
            return False
        busy = not config.alternate_load or len(self._table) >= config.alternate_load
        return busy or self._state.draining

    def _redirected(self, request: Request) -> bool:
        """
        RFC 8489 section 10: 300 Try Alternate, naming the next alternate
        server in turn, when L{would_redirect}.  An authenticated request's
        answer is signed, as RFC 8489 asks.
        """
        if not self.would_redirect():
            return False
        config, state = self._state.config, self._state
        alternates = config.alternate_servers
        target = alternates[self._next_alternate % len(alternates)]
        self._next_alternate += 1
        state.count(Counter.REDIRECTED)
        attributes: list[tuple[int, Any]] = [(Attr.ALTERNATE_SERVER, target)]
        if config.server_name and request.client.transport_name == "tls":
            attributes.append((Attr.ALTERNATE_DOMAIN, config.server_name))
        request.fail(300, None, *attributes)
        return True

    def _retransmitted(self, request: Request) -> bool:
        """
        For a 5-tuple that has an allocation already: the same answer,
        byte for byte, to a retransmission of the Allocate that made it,
        437 to anything else.
        """
        existing = self._table.get(request.client, request.address)
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

    def _quota_error(self, request: Request, meaning: AllocateRequest) -> int | None:
        """
        486 when the user has all the allocations they may, 508 when the
        server has.  A reservation counts as an allocation, so an Allocate
        that asks for one (EVEN-PORT with R) needs two; one that redeems
        the user's own reservation needs none.
        """
        config, state = self._state.config, self._state
        username = request.username
        if meaning.token is not None and state.reservations.owner(meaning.token) == username:
            return None
        needed = meaning.places
        limit = request.policy.narrow(config.user_quota or 0)
        if limit and self._table.held_by(username) + needed > limit:
            self._over_quota(username, limit)
            return 486
        in_use = self._table.places.in_use()
        if config.total_quota and in_use + needed > config.total_quota:
            state.count(Counter.TOTAL_QUOTA)
            self._unavailable_log.emit(
                ("total quota",),
                self.log.warn,
                "Allocate refused with 508: {limit} allocations on the server, the "
                "--total-quota (or what the descriptor limit allows)",
                limit=config.total_quota,
            )
            return 508
        return None

    def _over_quota(self, username: str, limit: int) -> None:
        self._state.count(Counter.USER_QUOTA)
        self._unavailable_log.emit(
            ("user quota", username),
            self.log.info,
            "Allocate by {user} refused with 486: the user holds the {limit} allocations "
            "one user may (--user-quota, by default half of what the server can hold, "
            "or the credential's own limit); if many clients share this credential, "
            "raise --user-quota",
            user=username,
            limit=limit,
        )

    def _open_udp(
        self, request: Request, meaning: AllocateRequest, relays: dict[int, IRelay], extra: Extra
    ) -> bool:
        """
        Open (or redeem) the UDP relays C{meaning} asks for into
        C{relays}, with what the answer must say about them into C{extra};
        answer the request and return C{False} when none can be had.
        """
        state = self._state
        if meaning.token is not None:
            redeemed = state.reservations.redeem(meaning.token)
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
        family = _family(meaning.family, request, state.relays.families)
        try:
            relay, reserved = state.relays.open(
                family, even=meaning.even_port, reserve_next=meaning.reserve
            )
        except RelayUnavailable as e:
            self._unavailable(e)
            request.fail(440 if e.family_unsupported else 508)
            return False
        relays[family] = relay
        if reserved is not None:
            token = state.reservations.hold(reserved, request.username)
            self._table.count_user(request.username, 1)
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
                relays[wanted] = self._state.relays.open(wanted, even=even, reserve_next=False)[0]
            except RelayUnavailable as e:
                self._unavailable(e)
                unsupported += e.family_unsupported
                address_error = (wanted, 440 if e.family_unsupported else 508)
        if not relays:
            return (0, 440 if unsupported == 2 else 508)
        return address_error

    def _unavailable(self, error: RelayUnavailable) -> None:
        """
        Say why relays could not be had (a full port range, no
        descriptors left), once a minute per reason, not per Allocate.
        """
        if error.family_unsupported:
            return
        self._state.count(Counter.RELAY_UNAVAILABLE)
        self._unavailable_log.emit(
            ("relay unavailable", str(error)),
            self.log.warn,
            "Allocate refused with 508: {reason}",
            reason=str(error),
        )

    def _allocate_tcp(self, request: Request, meaning: AllocateRequest) -> None:
        """
        RFC 6062 section 5.1: a TCP relayed address.
        """
        state = self._state
        assert state.tcp_relays is not None
        family = _family(meaning.family, request, state.tcp_relays.families)
        try:
            relay = state.tcp_relays.open_tcp(family)
        except RelayUnavailable as e:
            self._unavailable(e)
            return request.fail(440 if e.family_unsupported else 508)
        lifetime = self.lifetime(request) or self._state.config.default_lifetime
        allocation = self._allocated(request, {family: relay}, lifetime, [], tcp=True)
        tcp_allocations = self._tcp_allocations
        assert tcp_allocations is not None
        relay.on_connection = lambda connection: tcp_allocations.peer_connected(
            allocation, connection
        )

    def _allocated(
        self,
        request: Request,
        relays: dict[int, Any],
        lifetime: float,
        extra: Extra,
        tcp: bool = False,
    ) -> Allocation:
        """
        Record a new allocation over C{relays} and answer the request with
        its relayed addresses, C{extra}, LIFETIME and XOR-MAPPED-ADDRESS;
        the answer is kept for retransmissions.
        """
        state = self._state
        client, address, username = request.client, request.address, request.username
        policy = request.policy
        max_bps = policy.narrow_bps(state.config.max_bps)
        allocation = Allocation(
            state.reactor,
            client,
            address,
            username,
            state.forget,
            count=state.count,
            allocation_id=next(self._ids),
            emit=state.emit,
            forwarding=state.forwarding,
            bandwidth=TokenBucket(state.reactor, max_bps) if max_bps else None,
        )
        allocation.tcp = tcp
        allocation.policy = policy
        attributes: Extra = []
        for relay_family, relay in sorted(relays.items()):
            allocation.add_relay(relay_family, relay, lifetime)
            attributes.append((Attr.XOR_RELAYED_ADDRESS, relay.advertised))
        self._table.add(allocation)
        attributes += extra
        attributes += [(Attr.LIFETIME, int(lifetime)), (Attr.XOR_MAPPED_ADDRESS, address)]
        allocation.allocate_transaction = request.transaction_id
        allocation.allocate_response = request.succeed(*attributes)
        state.emit(
            AllocationCreated(
                allocation.id,
                username,
                address,
                client.transport_name,
                tuple(r.address for r in allocation.relays.values()),
                lifetime,
                tcp,
                client.local_address,
            )
        )
        return allocation

    # -- Refresh -----------------------------------------------------------------

    def refresh(self, request: Request) -> None:
        allocation = self._state.allocation_for(request)
        if allocation is None:
            return
        family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family not in allocation.relays:
            return request.fail(443)
        lifetime = self.lifetime(request)
        if lifetime == 0:
            allocation.end_reason = "refresh"
            if family is None:
                allocation.close()
            else:
                allocation.remove_family(family)
        else:
            allocation.refresh(lifetime, family)
            self._state.emit(
                AllocationRefreshed(allocation.id, request.username, request.address, lifetime)
            )
        request.succeed((Attr.LIFETIME, int(lifetime)))


def _family(requested: int | None, request: Request, available: frozenset[int]) -> int:
    """
    The family to relay in: the requested one; else IPv4, or the client's
    own family when the server has no IPv4 relay.
    """
    if requested is not None:
        return requested
    if FAMILY_IPV4 in available:
        return FAMILY_IPV4
    return family_of(request.address[0])
