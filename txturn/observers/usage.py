# -*- test-case-name: tests.test_usage_records -*-
"""
One usage record per allocation, when it ends, as a line of JSON that a
billing or abuse pipeline can tail (C{--usage-file}): who, from where,
over what, relayed where, from when, for how long, how much each way, and
why it ended.

The log has the same facts in its deletion line (L{txturn.observers.event_log});
this file is for machines.  Records are written as allocations end, not
per packet, and the file is reopened on reload, so logrotate can move it.
"""

from __future__ import annotations

import datetime
import json
from typing import IO, Callable, Sequence

from zope.interface import implementer

from txturn.core.events import AllocationCreated, AllocationDeleted, IServerObserver
from txturn.core.interfaces import host_port
from txturn.util.log_level import logger


@implementer(IServerObserver)
class UsageRecords:
    """
    @param open_file: opens the file to append to (called again by
        L{reopen}).
    @param realm: the realm the records name.
    @param wall_clock: seconds since the epoch, for the start time (the
        core's clock only measures durations).
    @param also: more writers each record goes to (a Redis stream,
        L{txturn.fleet.usage}).
    """

    log = logger()

    def __init__(
        self,
        open_file: Callable[[], IO[str]] | None,
        realm: str,
        wall_clock: Callable[[], float],
        also: Sequence[Callable[[dict[str, object]], None]] = (),
    ) -> None:
        self._open = open_file
        self._file = open_file() if open_file is not None else None
        self._also = list(also)
        self._realm = realm
        self._wall_clock = wall_clock
        #: Allocation id -> (server address, relayed addresses, start):
        #: what the deletion event does not repeat.  Bounded by the
        #: allocations alive.
        self._live: dict[int, tuple[str, list[str], float]] = {}

    def observe(self, event: object) -> None:
        if isinstance(event, AllocationCreated):
            relayed = [host_port(address) for address in event.relays]
            server = host_port(event.server)
            self._live[event.allocation] = (server, relayed, self._wall_clock())
        elif isinstance(event, AllocationDeleted):
            server, relayed, start = self._live.pop(event.allocation, ("", [], self._wall_clock()))
            self.write(record(event, self._realm, server, relayed, start))

    def write(self, fields: dict[str, object]) -> None:
        for writer in self._also:
            writer(fields)
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(fields, sort_keys=True) + "\n")
            self._file.flush()
        except OSError as e:
            self.log.error("Cannot write a usage record: {error}", error=str(e))

    def move_to(self, open_file: Callable[[], IO[str]] | None) -> None:
        """
        Write to what C{open_file} opens from now on (C{None}: no file),
        as when C{--usage-file} changed on reload.
        """
        self._open = open_file
        self.reopen()

    def reopen(self) -> None:
        """
        Close the file and open it again (after logrotate moved it).
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._open is not None:
            self._file = self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def record(
    event: AllocationDeleted, realm: str, server: str, relayed: list[str], start: float
) -> dict[str, object]:
    """
    The usage record of an ended allocation.
    """
    return {
        "allocation": event.allocation,
        "user": event.username,
        "realm": realm,
        "client": host_port(event.client),
        "server": server,
        "transport": event.transport,
        "relayed": relayed,
        "start": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).isoformat(),
        "duration": round(event.duration, 3),
        "to_peers": {"packets": event.to_peers.packets, "bytes": event.to_peers.bytes},
        "to_client": {"packets": event.to_client.packets, "bytes": event.to_client.bytes},
        "dropped": dict(event.dropped),
        "reason": event.reason,
    }
