# -*- test-case-name: tests.test_server -*-
"""
EVEN-PORT reservations (RFC 8656 section 14.9): the relay port next to an
allocation's, held for C{lifetime} seconds under a random token that a
later Allocate may redeem.  A reservation counts against its owner's
quota, so the owner is remembered with it.

Under C{--workers N} the Allocate that redeems a token may reach another
worker than the one holding the port (its 5-tuple hashes elsewhere): a
token says which worker holds it (its value modulo N), and that worker
L{take}s the reservation out and hands the relay's socket over, which
the other L{adopt}s (L{txturn.workers.reservation_broker}).
"""

from __future__ import annotations

import secrets
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txturn.core.interfaces import IRelay

#: How long a reserved port waits for its RESERVATION-TOKEN.
RESERVATION_LIFETIME = 30.0


class Reservations:
    """
    Reserved relays by token.

    @param released: called with the owner when a reservation ends,
        whether redeemed or expired, so the owner's quota is given back.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        released: Callable[[str], None],
        lifetime: float = RESERVATION_LIFETIME,
        worker: tuple[int, int] = (0, 1),
    ) -> None:
        self._reactor = reactor
        self._released = released
        self.lifetime = lifetime
        self.worker, self.workers = worker
        self._held: dict[bytes, tuple[IRelay, IDelayedCall, str]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def owner(self, token: bytes | None) -> str | None:
        """
        Who holds the reservation C{token}, if it exists.
        """
        held = self._held.get(token) if token is not None else None
        return held[2] if held is not None else None

    def hold(self, relay: IRelay, owner: str) -> bytes:
        """
        Reserve C{relay} for C{owner}; returns its new token, one of
        this worker's.
        """
        n = self.workers
        token = (secrets.randbelow(2**64 // n) * n + self.worker).to_bytes(8, "big")
        self.adopt(token, relay, owner)
        return token

    def worker_of(self, token: bytes) -> int:
        """
        The worker that holds the reservation C{token}, if anyone does.
        """
        return int.from_bytes(token, "big") % self.workers

    def adopt(self, token: bytes, relay: IRelay, owner: str) -> None:
        """
        Hold C{relay} for C{owner} under C{token}: a new reservation, or
        one another worker held.
        """
        timer = self._reactor.callLater(self.lifetime, self._expired, token)
        self._held[token] = (relay, timer, owner)

    def redeem(self, token: bytes) -> IRelay | None:
        """
        The relay reserved under C{token}, no longer reserved; C{None} if
        there is no such reservation.
        """
        held = self._held.pop(token, None)
        if held is None:
            return None
        relay, timer, owner = held
        timer.cancel()
        self._released(owner)
        return relay

    def take(self, token: bytes, owner: str) -> IRelay | None:
        """
        The relay C{owner} reserved under C{token}, no longer held here
        (it goes to another worker); C{None} if there is none.
        """
        if self.owner(token) != owner:
            return None
        return self.redeem(token)

    def _expired(self, token: bytes) -> None:
        relay, _, owner = self._held.pop(token)
        self._released(owner)
        relay.close()

    def close(self) -> list[object]:
        """
        Release every reservation (the server is stopping); returns what
        each relay's close returned.
        """
        closing = []
        for relay, timer, _ in self._held.values():
            timer.cancel()
            closing.append(relay.close())
        self._held.clear()
        return closing
