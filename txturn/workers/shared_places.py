# -*- test-case-name: tests.test_shared_places -*-
"""
The places of every worker (L{txturn.core.places.IPlaces}) in one table of
shared memory, so the quotas hold for the whole server.

The supervisor creates the memory (a C{memfd}) and hands its descriptor
to every worker.  The table has a row per user holding places, found by
a keyed hash of the name with linear probing, and a column per worker;
the places a worker holds are in its own column, so when a worker dies
the supervisor gives its share back by clearing that column
(L{SharedPlaces.clear}), and nothing a dead worker held stays counted.

A row whose places all go is deleted at once, by shifting the rows
after it on its probe path back (no tombstones): with REST credentials
every session is a new name, and rows left behind would lengthen every
probe for good (28 ms per Allocate after 700,000 names, the whole
server waiting on the lock).  The table only ever holds the users
holding places now, at most half full, so every probe stays short.

A POSIX record lock (C{lockf}) on the memory makes each change, and each
quota check with the places it takes (L{SharedPlaces.transaction}), one
step across processes; the kernel releases the lock of a process that
dies holding it.  A lock per Allocate is a system call or two, not one
per packet.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from typing import Iterator

from zope.interface import implementer

from txturn.core.places import IPlaces

_HEADER = struct.Struct("=8sII")
_MAGIC = b"txturnP1"
_KEY = struct.Struct("=Q")
_COUNT = struct.Struct("=i")
#: Rows of the table at least: users holding places at the same time.  A
#: row whose counts are all zero is reused, so only users holding places
#: now count.
DEFAULT_ROWS = 1 << 16
#: Rows at most: a million users holding places at once (72 MiB for 16
#: workers), beyond what one machine relays for.
MAX_ROWS = 1 << 20


def rows_for(places: int) -> int:
    """
    Rows enough for C{places} places held at once (each user holds one at
    least, so never more users than that), at most half full so probes
    stay short, within L{MAX_ROWS}.
    """
    rows = DEFAULT_ROWS
    while rows < 2 * places and rows < MAX_ROWS:
        rows *= 2
    return rows


class PlacesFull(Exception):
    """
    Every row holds a user: no new user can hold a place.
    """


def create(workers: int, rows: int = DEFAULT_ROWS) -> int:
    """
    New, zeroed shared memory for C{workers} workers; returns its
    descriptor, inheritable, for the supervisor to pass on.
    """
    fd = os.memfd_create("txturn-places", 0)
    os.ftruncate(fd, _size(workers, rows))
    with mmap.mmap(fd, _size(workers, rows)) as memory:
        _HEADER.pack_into(memory, 0, _MAGIC, workers, rows)
    os.set_inheritable(fd, True)
    return fd


def _size(workers: int, rows: int) -> int:
    return _HEADER.size + 4 * workers + rows * (8 + 4 * workers)


@implementer(IPlaces)
class SharedPlaces:
    """
    The places of all workers, seen from worker C{index} (which adds to
    its own column), or from the supervisor (C{index} C{None}, which
    only clears columns).

    @param fd: the descriptor L{create} returned.
    @param key: the key of the hash of user names, the same in every
        worker; secret, so no one can choose names that share rows.
    """

    def __init__(self, fd: int, index: int | None, key: bytes) -> None:
        self._fd = fd
        self._index = index
        self._key = key
        size = os.fstat(fd).st_size
        self._memory = mmap.mmap(fd, size)
        magic, workers, rows = _HEADER.unpack_from(self._memory, 0)
        if magic != _MAGIC or _size(workers, rows) != size:
            raise ValueError("not a table of shared places")
        self.workers: int = workers
        self.rows: int = rows
        self._totals: int = _HEADER.size
        self._table: int = self._totals + 4 * self.workers
        self._row: int = 8 + 4 * self.workers
        self._depth = 0

        # -- the lock -----------------------------------------------------------

        #: Rows looked at by probes so far (for tests).
        self.probes = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth == 0:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # -- IPlaces ------------------------------------------------------------

    def held_by(self, username: str) -> int:
        with self.transaction():
            row = self._find(self._hash(username), insert=False)
            if row is None:
                return 0
            return sum(self._counts(row))

    def in_use(self) -> int:
        with self.transaction():
            memory = self._memory
            return sum(
                _COUNT.unpack_from(memory, self._totals + 4 * i)[0] for i in range(self.workers)
            )

    def add(self, username: str, delta: int) -> None:
        index = self._index
        if index is None:
            raise ValueError("the supervisor holds no places")
        with self.transaction():
            row = self._find(self._hash(username), insert=True)
            assert row is not None
            self._bump(row + 8 + 4 * index, delta)
            self._bump(self._totals + 4 * index, delta)
            if delta < 0 and not any(self._counts(row)):
                self._delete(row)

    # -- the supervisor -----------------------------------------------------

    def clear(self, index: int) -> int:
        """
        Give back every place worker C{index} held (it has died); returns
        how many there were.
        """
        with self.transaction():
            memory = self._memory
            (held,) = _COUNT.unpack_from(memory, self._totals + 4 * index)
            _COUNT.pack_into(memory, self._totals + 4 * index, 0)
            kept = []
            end = self._table + self.rows * self._row
            for row in range(self._table, end, self._row):
                _COUNT.pack_into(memory, row + 8 + 4 * index, 0)
                if _KEY.unpack_from(memory, row)[0] and any(self._counts(row)):
                    kept.append(bytes(memory[row : row + self._row]))
            # Rebuilt without the rows that held only the dead worker's
            # places (rare: a worker's death).
            memory[self._table : end] = bytes(end - self._table)
            for contents in kept:
                (key,) = _KEY.unpack_from(contents, 0)
                place = self._find(key, insert=True)
                assert place is not None
                memory[place : place + self._row] = contents
            return int(held)

    def held_by_worker(self, index: int) -> int:
        with self.transaction():
            return int(_COUNT.unpack_from(self._memory, self._totals + 4 * index)[0])

    def close(self) -> None:
        self._memory.close()

    # -- the table ----------------------------------------------------------

    def _hash(self, username: str) -> int:
        digest = hashlib.blake2b(username.encode("utf-8"), digest_size=8, key=self._key)
        # 0 marks an empty row.
        return _KEY.unpack(digest.digest())[0] or 1

    def _counts(self, row: int) -> list[int]:
        memory = self._memory
        return [_COUNT.unpack_from(memory, row + 8 + 4 * i)[0] for i in range(self.workers)]

    def _find(self, key: int, insert: bool) -> int | None:
        """
        The offset of C{key}'s row; with C{insert}, a row is made for it
        if it has none: the empty row that ends its probe path.

        @raise PlacesFull: if C{insert} and no row is free.
        """
        memory = self._memory
        start: int = key % self.rows
        for step in range(self.rows):
            self.probes += 1
            row = self._table + ((start + step) % self.rows) * self._row
            (found,) = _KEY.unpack_from(memory, row)
            if found == key:
                return row
            if found == 0:
                if not insert:
                    return None
                _KEY.pack_into(memory, row, key)
                return row
        if not insert:
            return None
        raise PlacesFull()

    def _delete(self, row: int) -> None:
        """
        Empty the row at offset C{row}, moving back each later row of the
        cluster whose probe path passes the hole (backward-shift deletion:
        every key stays reachable from its home row, with no tombstone).
        """
        memory, size, rows = self._memory, self._row, self.rows
        hole = (row - self._table) // size
        j = hole
        while True:
            j = (j + 1) % rows
            offset = self._table + j * size
            (key,) = _KEY.unpack_from(memory, offset)
            if key == 0:
                break
            home = key % rows
            # Stays if its home lies cyclically in (hole, j].
            if (hole < home <= j) if hole <= j else (home > hole or home <= j):
                continue
            start = self._table + hole * size
            memory[start : start + size] = memory[offset : offset + size]
            hole = j
        start = self._table + hole * size
        memory[start : start + size] = bytes(size)

    def _bump(self, offset: int, delta: int) -> None:
        (value,) = _COUNT.unpack_from(self._memory, offset)
        _COUNT.pack_into(self._memory, offset, max(0, value + delta))
