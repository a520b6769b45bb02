# -*- test-case-name: tests.test_allocation_table,tests.test_shared_places -*-
"""
What the quotas count: the I{places} each user holds (an allocation, or
an EVEN-PORT reservation, is one place) and the places held in all.

One server process keeps them in a L{LocalPlaces}.  The workers of
C{--workers N} share one L{txturn.workers.shared_places.SharedPlaces}
instead, so that a user limited to 10 allocations gets 10 on the whole
server, not 10 on each worker.  The core sees only L{IPlaces}.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Iterator, Mapping

from zope.interface import Interface, implementer


class IPlaces(Interface):
    """
    Places held per user and in all.
    """

    def held_by(username: str) -> int:
        """
        The places C{username} holds.
        """

    def in_use() -> int:
        """
        The places held by everyone.
        """

    def add(username: str, delta: int) -> None:
        """
        C{username} holds C{delta} more places (or fewer, if negative).
        """

    def transaction() -> contextlib.AbstractContextManager[None]:
        """
        A context in which a quota check and the places it then adds are
        one step: no other process sharing these places checks in between.
        """


@implementer(IPlaces)
class LocalPlaces:
    """
    The places of one process: a counter.
    """

    def __init__(self) -> None:
        self._per_user: collections.Counter[str] = collections.Counter()
        self._total = 0

    def held_by(self, username: str) -> int:
        return self._per_user[username]

    def in_use(self) -> int:
        return self._total

    def add(self, username: str, delta: int) -> None:
        counts = self._per_user
        counts[username] += delta
        self._total += delta
        if counts[username] <= 0:
            del counts[username]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # One process handles one request at a time: nothing to exclude.
        yield

    @property
    def users(self) -> Mapping[str, int]:
        return dict(self._per_user)
