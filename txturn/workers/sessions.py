# -*- test-case-name: tests.test_workers -*-
"""
The sessions API of C{--workers N}: the supervisor listens, and answers
by asking every worker's L{txturn.sessions.backend.LocalSessions} over
its control connection (L{txturn.workers.control.SessionsCall}), so one
API covers the whole server.

Allocation ids are unique across workers (worker C{i} of C{n} numbers
them C{i+1}, C{i+1+n}, ...), so a session's id names its worker: asking
about one session asks that worker only.  A page merges the workers'
pages by id; each worker's is fetched in answers of at most
L{txturn.sessions.backend.MAX_BYTES} of JSON, which an AMP value holds.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from txturn import __version__
from txturn.sessions.backend import MAX_BYTES
from txturn.sessions.view import MAX_PAGE, cursor_of, number_of
from txturn.util.log_level import logger
from txturn.workers.control import SessionsCall


class Supervised(Protocol):
    """
    What this asks of the supervisor (L{txturn.workers.supervisor.Supervisor}).
    """

    workers: dict[int, Any]
    count: int
    draining: bool

    def drain(self) -> None: ...  # pragma: no cover


#: Seconds a worker has to answer.
ANSWER_TIMEOUT = 10.0


class WorkerSessions:
    """
    L{txturn.sessions.backend.ISessions} for the supervisor.
    """

    log = logger("txturn.workers.sessions")

    def __init__(self, reactor: Any, supervisor: Supervised) -> None:
        self._reactor = reactor
        self._supervisor = supervisor
        self._started = reactor.seconds()

    def _ask(self, index: int, action: str, **arguments: Any) -> defer.Deferred[Any]:
        worker = self._supervisor.workers.get(index)
        if worker is None or worker.control.transport is None:
            return defer.succeed(None)
        asked: defer.Deferred[Any] = worker.control.callRemote(
            SessionsCall, action=action, arguments=json.dumps(arguments)
        )
        asked.addTimeout(ANSWER_TIMEOUT, self._reactor)
        asked.addCallback(lambda answer: json.loads(answer["result"]))
        return asked.addErrback(self._unanswered, index)

    def _unanswered(self, failure: Failure, index: int) -> None:
        """
        A worker that did not answer (restarting, or stuck past
        L{ANSWER_TIMEOUT}) is left out of this answer, as a worker that is
        not running is, rather than failing the whole call: the operator
        still sees and steers the others.
        """
        self.log.warn(
            "Worker {index} did not answer the sessions API: {error}",
            index=index,
            error=failure.getErrorMessage(),
        )

    def _ask_all(self, action: str, **arguments: Any) -> defer.Deferred[list[Any]]:
        asked = [self._ask(i, action, **arguments) for i in sorted(self._supervisor.workers)]
        gathered = defer.gatherResults(asked, consumeErrors=True)
        return gathered.addCallback(lambda answers: [a for a in answers if a is not None])

    def _owner(self, allocation_id: int) -> int:
        return (allocation_id - 1) % self._supervisor.count

    @defer.inlineCallbacks
    def page(self, user: str | None, peer: str | None, after: int | str, limit: int) -> Any:
        after = cursor_of(after)
        limit = max(1, min(limit, MAX_PAGE))
        sessions: list[dict[str, Any]] = []
        total = 0
        more = False
        draining = self._supervisor.draining
        for index in sorted(self._supervisor.workers):
            cursor: int | None = after
            taken = 0
            while cursor is not None and taken < limit:
                part = yield self._ask(
                    index,
                    "page",
                    user=user,
                    peer=peer,
                    after=cursor,
                    limit=limit - taken,
                    max_bytes=MAX_BYTES,
                )
                if part is None:
                    break
                if cursor == after:
                    total += part["total"]
                    draining = draining or part["draining"]
                sessions += part["sessions"]
                taken += len(part["sessions"])
                cursor = part["next"]
            more = more or cursor is not None
        sessions.sort(key=lambda s: s["id"])
        following = None
        if len(sessions) > limit or (more and sessions):
            sessions = sessions[:limit]
            following = sessions[-1]["id"]
        return {"sessions": sessions, "next": following, "total": total, "draining": draining}

    def one(self, ref: int | str) -> defer.Deferred[Any]:
        number = number_of(ref)
        return self._ask(self._owner(number), "one", ref=number)

    def end(self, ref: int | str) -> defer.Deferred[Any]:
        number = number_of(ref)
        asked = self._ask(self._owner(number), "end", ref=number)
        return asked.addCallback(lambda n: n or 0)

    def end_user(self, name: str) -> defer.Deferred[Any]:
        return self._ask_all("end_user", name=name).addCallback(sum)

    def drain(self) -> dict[str, bool]:
        already = self._supervisor.draining
        if not already:
            self._supervisor.drain()
        return {"draining": True, "already": already}

    @defer.inlineCallbacks
    def status(self) -> Any:
        answers = yield self._ask_all("status")
        summed = self._summed(answers)
        names = yield self._ask_all("user_names")
        if len(names) == len(answers) and all(n is not None for n in names):
            # A user on two workers is one user.
            summed["users"] = len(set().union(*names))
        return summed

    def _summed(self, answers: list[dict[str, Any]]) -> dict[str, Any]:
        """
        The workers' statuses as one server's: counts summed (users too,
        which L{status} counts once each where the workers' lists are
        small enough to send), the rate histories summed sample by sample
        from the latest.
        """
        by_transport: dict[str, int] = {}
        counters: dict[str, int] = {}
        for answer in answers:
            for name, n in answer["by_transport"].items():
                by_transport[name] = by_transport.get(name, 0) + n
            for name, n in answer["counters"].items():
                counters[name] = counters.get(name, 0) + n
        length = max((len(a["history"]) for a in answers), default=0)
        history = []
        for back in range(length, 0, -1):
            samples = [a["history"][-back] for a in answers if len(a["history"]) >= back]
            history.append(
                {key: sum(s[key] for s in samples) for key in samples[0] if key != "time"}
                | {"time": max(s["time"] for s in samples)}
            )
        first = answers[0] if answers else {}
        return {
            "version": __version__,
            "realm": first.get("realm"),
            "uptime": round(self._reactor.seconds() - self._started, 1),
            "draining": self._supervisor.draining or any(a["draining"] for a in answers),
            "degraded": "; ".join(sorted({a["degraded"] for a in answers if a["degraded"]}))
            or None,
            "fleet": first.get("fleet", "none"),
            "workers": len(answers),
            "allocations": sum(a["allocations"] for a in answers),
            "by_transport": by_transport,
            "users": sum(a["users"] for a in answers),
            "history": history,
            "counters": counters,
        }
