# -*- test-case-name: tests.test_server -*-
"""
EVEN-PORT reservations (RFC 8656 section 14.9): the relay port next to an
allocation's, held for C{lifetime} seconds under a random token that a
later Allocate may redeem.  A reservation counts against its owner's
quota, so the owner is remembered with it.
"""

from __future__ import annotations

import secrets
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txturn.interfaces import IRelay

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
    ) -> None:
        self._reactor = reactor
        self._released = released
        self.lifetime = lifetime
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
        Reserve C{relay} for C{owner}; returns its new token.
        """
        token = secrets.token_bytes(8)
        timer = self._reactor.callLater(self.lifetime, self._expired, token)
        self._held[token] = (relay, timer, owner)
        return token

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
