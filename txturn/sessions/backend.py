# -*- test-case-name: tests.test_sessions -*-
"""
What the sessions API asks of a server, answered by one process
(L{LocalSessions}); the supervisor of C{--workers N} answers the same
questions by asking each worker's L{LocalSessions} over its control
connection (L{txturn.workers.sessions}).

Every answer is plain JSON-able data, and no answer is unbounded: a page
stops at C{max_bytes} of JSON (the control connection carries at most
64 KiB a value), and a session shows at most L{SHOWN} permissions and
channels, with their totals.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from txturn import __version__
from txturn.core.server import TurnServer
from txturn.sessions.view import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Rates,
    cursor_of,
    describe,
    number_of,
    page,
    user_of,
)

#: Seconds between two samples of every session's counters: the window
#: of the rates the API shows.
SAMPLE_INTERVAL = 5.0

#: Most JSON one answer of a page may hold, by default.
MAX_BYTES = 48 * 1024


class ISessions(Protocol):
    """
    What L{txturn.sessions.http.SessionsApi} asks; each method may answer
    with a value or a Deferred of one.
    """

    def page(
        self, user: str | None, peer: str | None, after: int | str, limit: int
    ) -> Any: ...  # pragma: no cover

    def one(self, ref: int | str) -> Any: ...  # pragma: no cover

    def end(self, ref: int | str) -> Any: ...  # pragma: no cover

    def end_user(self, name: str) -> Any: ...  # pragma: no cover

    def drain(self) -> Any: ...  # pragma: no cover

    def status(self) -> Any: ...  # pragma: no cover


class LocalSessions(Service):
    """
    One process's sessions, and the sampler of their rates (every
    L{SAMPLE_INTERVAL} seconds while running, on the reactor given).
    """

    def __init__(
        self,
        reactor: Any,
        server: TurnServer,
        drain: Callable[[], object],
        degraded: Callable[[], str | None] = lambda: None,
        fleet: str = "none",
        worker: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._server = server
        self._drain = drain
        self._degraded = degraded
        self._fleet = fleet
        self._worker = worker
        self.rates = Rates()
        self._started = reactor.seconds()
        self._sampler = LoopingCall(self.sample)
        self._sampler.clock = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._started = self._reactor.seconds()
        self._sampler.start(SAMPLE_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._sampler.running:
            self._sampler.stop()

    def sample(self) -> None:
        self.rates.sample(self._server.allocations.values(), self._reactor.seconds())

    def _describe(self, allocation: Any) -> dict[str, Any]:
        return describe(
            allocation,
            self._reactor.seconds(),
            self._server.config.realm,
            self.rates.rates,
            self._worker,
        )

    def page(
        self,
        user: str | None = None,
        peer: str | None = None,
        after: int | str = 0,
        limit: int = DEFAULT_PAGE,
        max_bytes: int = 0,
    ) -> dict[str, Any]:
        """
        Sessions by id after C{after}, at most C{limit}, and, with
        C{max_bytes}, no more than that much JSON (one at least); C{next}
        is the C{after} of the next page, or C{None}.
        """
        allocations = self._server.allocations
        chosen, following = page(
            allocations.values(), user, peer, cursor_of(after), min(limit, MAX_PAGE)
        )
        sessions: list[dict[str, Any]] = []
        size = 0
        for allocation in chosen:
            described = self._describe(allocation)
            if max_bytes:
                size += len(json.dumps(described))
                if sessions and size > max_bytes:
                    following = sessions[-1]["id"]
                    break
            sessions.append(described)
        return {
            "sessions": sessions,
            "next": following,
            "total": len(allocations),
            "draining": self._server.draining,
        }

    def one(self, ref: int | str) -> dict[str, Any] | None:
        allocation = self._server.allocation_numbered(number_of(ref))
        return self._describe(allocation) if allocation is not None else None

    def end(self, ref: int | str) -> int:
        return 1 if self._server.end_allocation(number_of(ref)) else 0

    def end_user(self, name: str) -> int:
        return self._server.end_allocations_of(name)

    def drain(self) -> dict[str, bool]:
        already = self._server.draining
        if not already:
            self._drain()
        return {"draining": True, "already": already}

    def user_names(self) -> list[str] | None:
        """
        The distinct users holding allocations (the user part of REST
        names), for the supervisor of C{--workers} to count users across
        its workers; C{None} when the list would pass L{MAX_BYTES} of JSON.
        """
        names = sorted({user_of(a.username) for a in self._server.allocations.values()})
        return names if len(json.dumps(names)) <= MAX_BYTES else None

    def status(self) -> dict[str, Any]:
        """
        The whole process, for C{GET /api/v1/status} and the status page.
        """
        server = self._server
        allocations = list(server.allocations.values())
        by_transport: dict[str, int] = {}
        for allocation in allocations:
            name = allocation.client.transport_name
            by_transport[name] = by_transport.get(name, 0) + 1
        return {
            "version": __version__,
            "realm": server.config.realm,
            "uptime": round(self._reactor.seconds() - self._started, 1),
            "draining": server.draining,
            "degraded": self._degraded(),
            "fleet": self._fleet,
            "workers": 1,
            "allocations": len(allocations),
            "by_transport": by_transport,
            "users": len({user_of(a.username) for a in allocations}),
            "history": list(self.rates.history),
            "counters": {
                counter.key: n for counter, n in sorted(server.counters.items(), key=str) if n
            },
        }
