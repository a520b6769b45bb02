# -*- test-case-name: tests.test_sessions -*-
"""
What the sessions API says about live allocations: plain dicts for JSON,
selected and paged, from the core's own objects.  Pure: no I/O, the time
is passed in.

An allocation is named by its id, the number its lifecycle log lines and
usage record carry, so an operator can go from a log line to the session
and back.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping

from txturn.auth.revocations import rest_user
from txturn.core.allocation import Allocation
from txturn.core.interfaces import host_port

#: Most sessions one page holds; a client pages with C{after}.
MAX_PAGE = 1000

#: What a page holds when the client does not say.
DEFAULT_PAGE = 100

#: Most permissions and channels a session shows (with their totals):
#: one session's answer stays small whatever it holds.
SHOWN = 64

#: Samples of the whole server's rates kept for the status page: ten
#: minutes at the service's five-second interval.
HISTORY = 120


class NoSuchSession(LookupError):
    """
    No live session has that id (or what was given is no id).
    """


class BadCursor(ValueError):
    """
    What a page was asked to start after is no session's id.
    """


def number_of(ref: int | str) -> int:
    """
    The allocation id C{ref} gives, from the API's path or a fleet peer.

    @raise NoSuchSession: if it is not a number.
    """
    try:
        return int(ref)
    except ValueError:
        raise NoSuchSession(str(ref)[:40]) from None


def cursor_of(after: int | str) -> int:
    """
    The id a page starts after.

    @raise BadCursor: if it is not a number.
    """
    try:
        return int(after)
    except ValueError:
        raise BadCursor("after is the id (or ref) of a session") from None


class Rates:
    """
    Packets and bytes per second each way, per allocation, over the last
    sampling interval: L{sample} is called every few seconds with the
    allocations' counters; at most one entry per live allocation is kept.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, tuple[int, int, int, int]]] = {}
        self.rates: dict[int, tuple[float, float, float, float]] = {}
        #: The server's totals at each sample, oldest first, L{HISTORY} at most.
        self.history: collections.deque[dict[str, float]] = collections.deque(maxlen=HISTORY)

    def sample(self, allocations: Iterable[Allocation], now: float) -> None:
        last, self._last = self._last, {}
        rates: dict[int, tuple[float, float, float, float]] = {}
        for allocation in allocations:
            allocation.take_counters()
            counters = _counters(allocation)
            self._last[allocation.id] = (now, counters)
            before = last.get(allocation.id)
            if before is not None and now > before[0]:
                elapsed = now - before[0]
                then = before[1]
                rates[allocation.id] = (
                    (counters[0] - then[0]) / elapsed,
                    (counters[1] - then[1]) / elapsed,
                    (counters[2] - then[2]) / elapsed,
                    (counters[3] - then[3]) / elapsed,
                )
        self.rates = rates
        totals = [sum(r[i] for r in rates.values()) for i in range(4)]
        self.history.append(
            {
                "time": now,
                "allocations": len(self._last),
                "to_peers_pps": round(totals[0], 1),
                "to_peers_bps": round(totals[1], 1),
                "to_client_pps": round(totals[2], 1),
                "to_client_bps": round(totals[3], 1),
            }
        )


def _counters(allocation: Allocation) -> tuple[int, int, int, int]:
    return (
        allocation.to_peers_packets,
        allocation.to_peers_bytes,
        allocation.to_client_packets,
        allocation.to_client_bytes,
    )


def user_of(username: str) -> str:
    """
    The user a username belongs to: itself, or the user part of a TURN
    REST name (C{<expiry>:user[:policy]}).
    """
    return rest_user(username) or username


def describe(
    allocation: Allocation,
    now: float,
    realm: str,
    rates: Mapping[int, tuple[float, float, float, float]],
    worker: int | None = None,
) -> dict[str, Any]:
    """
    One session as JSON: who, from where, relayed where, for how long,
    to which peers, and how much each way.  Counters are as of now (what
    the fast path relayed is collected first).
    """
    allocation.take_counters()
    rate = rates.get(allocation.id, (0.0, 0.0, 0.0, 0.0))
    client = allocation.client
    described: dict[str, Any] = {
        "id": allocation.id,
        "user": allocation.username,
        "user_part": user_of(allocation.username),
        "realm": realm,
        "client": host_port(allocation.client_address),
        "transport": client.transport_name,
        "server": host_port(client.local_address) if client.local_address else None,
        "relays": sorted(host_port(r.advertised) for r in allocation.relays.values()),
        "tcp": allocation.tcp,
        "age": round(now - allocation.created, 3),
        "lifetime_left": round(max(0.0, allocation.expires_in()), 3) if allocation.relays else 0,
        "permissions": sorted(allocation.permissions)[:SHOWN],
        "permissions_total": len(allocation.permissions),
        "channels": {
            f"0x{number:04x}": host_port(peer)
            for number, (peer, _) in sorted(allocation.channels.items())[:SHOWN]
        },
        "channels_total": len(allocation.channels),
        "to_peers": {
            "packets": allocation.to_peers_packets,
            "bytes": allocation.to_peers_bytes,
            "packets_per_second": round(rate[0], 1),
            "bytes_per_second": round(rate[1], 1),
        },
        "to_client": {
            "packets": allocation.to_client_packets,
            "bytes": allocation.to_client_bytes,
            "packets_per_second": round(rate[2], 1),
            "bytes_per_second": round(rate[3], 1),
        },
        "dropped": {reason.key: n for reason, n in allocation.dropped.items()},
    }
    if worker is not None:
        described["worker"] = worker
    return described


def matches(allocation: Allocation, user: str | None, peer: str | None) -> bool:
    """
    Whether C{allocation} is C{user}'s (its username or the user part of
    its REST name) and reaches C{peer} (an IP address with a permission,
    or a channel to it); C{None} matches anything.
    """
    if user is not None and user not in (allocation.username, user_of(allocation.username)):
        return False
    if peer is not None:
        peers = set(allocation.permissions)
        peers.update(p[0] for p, _ in allocation.channels.values())
        if peer not in peers:
            return False
    return True


def page(
    allocations: Iterable[Allocation],
    user: str | None = None,
    peer: str | None = None,
    after: int = 0,
    limit: int = DEFAULT_PAGE,
) -> tuple[list[Allocation], int | None]:
    """
    The allocations that match, by id, after id C{after}, at most
    C{limit}; and the id to ask C{after} for the next page, or C{None}
    when this is the last.
    """
    limit = max(1, min(limit, MAX_PAGE))
    chosen = sorted(
        (a for a in allocations if a.id > after and matches(a, user, peer)),
        key=lambda a: a.id,
    )
    if len(chosen) > limit:
        return chosen[:limit], chosen[limit - 1].id
    return chosen, None
