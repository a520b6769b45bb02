# -*- test-case-name: tests.test_tcp_allocation -*-
"""
The peer data connections of TCP allocations (RFC 6062), by CONNECTION-ID.

A connection is I{pending} from the moment it exists (a Connect succeeded,
or a permitted peer connected to the relay) until a ConnectionBind claims
it; a pending connection not claimed within C{bind_timeout} seconds is
closed.  Timers are on the injected reactor.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txturn.core.interfaces import Address, IPeerConnection

#: RFC 6062 section 5.2/5.3: a peer data connection with no ConnectionBind
#: after this long is closed.
BIND_TIMEOUT = 30.0


@dataclass
class Entry:
    """
    One peer data connection and what it belongs to.
    """

    connection_id: int
    allocation: Any
    connection: IPeerConnection
    timer: IDelayedCall | None
    bound: bool = False


@dataclass
class PeerConnections:
    """
    Every peer data connection of the server, by CONNECTION-ID, and the
    peers each allocation is connecting or connected to (for 446).

    Each allocation's connection ids are indexed too, so that a Connect,
    a count, or an allocation going away costs the size of that
    allocation's own set, never a scan of the whole server.
    """

    reactor: IReactorTime
    bind_timeout: float = BIND_TIMEOUT
    entries: dict[int, Entry] = field(default_factory=dict)
    #: allocation -> peers with a Connect in progress.
    connecting: dict[Any, set[Address]] = field(default_factory=dict)
    #: allocation -> the ids of its connections, pending or bound.
    by_allocation: dict[Any, set[int]] = field(default_factory=dict)
    #: Called with each entry that goes (closed, timed out, its allocation
    #: deleted).
    on_closed: Callable[[Entry], None] | None = None
    #: This server is worker C{worker} of C{workers}: its CONNECTION-IDs
    #: are those equal to C{worker} modulo C{workers}, so whichever worker
    #: a ConnectionBind reaches knows which one holds the connection.
    worker: int = 0
    workers: int = 1

    def owner(self, connection_id: int) -> int:
        """
        The worker whose connection C{connection_id} is.
        """
        return connection_id % self.workers

    def add(self, allocation: Any, connection: IPeerConnection) -> int:
        """
        Register a new pending connection; returns its CONNECTION-ID, a
        random 32-bit number unique on this server, of this worker's.
        """
        while True:
            connection_id = secrets.randbelow(2**32 // self.workers) * self.workers + self.worker
            if connection_id not in self.entries:
                break
        timer = self.reactor.callLater(self.bind_timeout, self._unclaimed, connection_id)
        self.entries[connection_id] = Entry(connection_id, allocation, connection, timer)
        self.by_allocation.setdefault(allocation, set()).add(connection_id)
        connection.on_lost = lambda _: self._lost(connection_id)
        return connection_id

    def _unclaimed(self, connection_id: int) -> None:
        entry = self.entries.get(connection_id)
        if entry is not None:
            entry.timer = None
            entry.connection.close()
            self._lost(connection_id)

    def _lost(self, connection_id: int) -> None:
        entry = self.entries.pop(connection_id, None)
        if entry is None:
            return
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        ids = self.by_allocation.get(entry.allocation)
        if ids is not None:
            ids.discard(connection_id)
            if not ids:
                del self.by_allocation[entry.allocation]
        if self.on_closed is not None:
            self.on_closed(entry)

    def pending(self, connection_id: int | None) -> Entry | None:
        """
        The pending (not yet bound) connection with this id, if any.
        """
        entry = self.entries.get(connection_id) if connection_id is not None else None
        return entry if entry is not None and not entry.bound else None

    def claim(self, connection_id: int) -> Entry | None:
        """
        The pending connection with this id, now bound; C{None} if there is
        no such pending connection.
        """
        entry = self.pending(connection_id)
        if entry is None:
            return None
        entry.bound = True
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = None
        return entry

    def unbound_count(self, allocation: Any) -> int:
        """
        Connections of C{allocation} not yet bound, and Connects in
        progress: what a client can pile up without reading anything.
        """
        entries = self.entries
        unbound = sum(1 for i in self.by_allocation.get(allocation, ()) if not entries[i].bound)
        return unbound + len(self.connecting.get(allocation, ()))

    def peers_of(self, allocation: Any) -> set[Address]:
        """
        Peers this allocation has a connection to, pending or bound, or a
        Connect in progress to.
        """
        entries = self.entries
        peers = {entries[i].connection.peer_address for i in self.by_allocation.get(allocation, ())}
        return peers | self.connecting.get(allocation, set())

    def close_allocation(self, allocation: Any) -> None:
        """
        Close every data connection of an allocation that is going away.
        """
        self.connecting.pop(allocation, None)
        for connection_id in list(self.by_allocation.get(allocation, ())):
            entry = self.entries.get(connection_id)
            if entry is not None:
                entry.connection.close()
