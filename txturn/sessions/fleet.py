# -*- test-case-name: tests.test_sessions -*-
"""
The sessions API of a fleet (C{--redis URL}): whichever server's API is
asked answers for every server, through Redis.

Why Redis and not the peers' own APIs: the APIs listen on loopback by
default, and should; the servers of a fleet already share Redis and
trust it (it holds their users, quotas and revocations); and Redis's
publish/subscribe tells the asker how many servers heard a question, so
it knows how many answers to wait for without a registry of addresses.

Every I{node} (a server process, or the supervisor of C{--workers N},
which answers for its workers) subscribes to C{txturn:sessions}, where
questions are published, and to C{txturn:sessions:reply:<node>}, where
its answers come.  A question names the node that asks, and the node it
is for, if one; each other node answers from its own sessions
(L{txturn.sessions.backend.LocalSessions}, or the supervisor's view of
its workers).  The asker waits for as many answers as C{PUBLISH} said
there were listeners, at most L{ANSWER_TIMEOUT}; a node that does not
answer in time is left out and counted as C{unanswered}.

Sessions are ordered by (node, id) and named fleet-wide by their I{ref},
C{<node>-<id>}; a page's C{next} is a ref.  A drain is the asked
server's own: a fleet is drained server by server.

Anyone who can publish to the fleet's Redis can end sessions through
this, as they can revoke credentials: Redis is the fleet's trust root,
to be reached with a password and TLS (C{rediss://}) off the host.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from txturn.fleet.link import PREFIX, RedisLink, subscribe
from txturn.sessions.backend import ISessions
from txturn.sessions.view import MAX_PAGE, BadCursor, number_of
from txturn.util.log_level import logger

#: Where questions are published; every node listens.
ASKS = PREFIX + "sessions"

#: Followed by a node's id: where its answers come.
REPLIES = PREFIX + "sessions:reply:"

#: Seconds the asker waits for the other nodes.
ANSWER_TIMEOUT = 2.0

#: What a peer may ask.  A drain is not among them: each server's own
#: API starts its own.
ACTIONS = frozenset({"page", "one", "end", "end_user", "status"})

#: An id past every allocation's: a node ordered before a page's cursor
#: has nothing left on it.
_PAST_ALL = 2**62


@dataclass
class _Question:
    """
    A question published and the answers come so far.
    """

    done: defer.Deferred[list[dict[str, Any]]]
    #: The node asked, if one: a question for a node that is gone goes
    #: unanswered without a warning.
    to: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)
    expected: int | None = None
    timer: IDelayedCall | None = None


class FleetSessions(Service):
    """
    L{ISessions} for the whole fleet, from C{local} (this node's
    sessions) and the other nodes', asked through C{link}'s Redis.

    @param node: this node's id: its quota id in Redis for a server, a
        random one for a supervisor.
    @param name: what the node is to an operator (host and process).
    @param close_link: whether stopping closes C{link} (a supervisor's,
        made for this alone).
    """

    log = logger("txturn.sessions")

    def __init__(
        self,
        reactor: Any,
        link: RedisLink,
        local: ISessions,
        node: str,
        name: str,
        close_link: bool = False,
    ) -> None:
        self._reactor = reactor
        self._close_link = close_link
        self.link = link
        self.local = local
        self.node = node
        self.name = name
        self._numbers = itertools.count(1)
        self._questions: dict[int, _Question] = {}
        self._subscriber: Any = None
        #: Whether this node hears the questions it publishes (then one
        #: listener fewer is another node).
        self._listening = False

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._subscriber = subscribe(
            self._reactor,
            self.link,
            {ASKS: self._asked, REPLIES + self.node: self._answered},
            self._subscribed,
        )

    def _subscribed(self) -> None:
        self._listening = True

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]
        for number in list(self._questions):
            self._finish(number)
        subscriber, self._subscriber = self._subscriber, None
        self._listening = False
        closing = []
        if subscriber is not None:
            closing.append(defer.maybeDeferred(subscriber.disconnect))
        if self._close_link:
            closing.append(self.link.close())
        return defer.gatherResults(closing, consumeErrors=True).addErrback(lambda _: None)

    # -- answering the other nodes --------------------------------------------

    def _asked(self, message: object) -> None:
        try:
            body = json.loads(message if isinstance(message, str | bytes) else str(message))
            asker, number = str(body["from"]), int(body["ask"])
            action, arguments = str(body["action"]), dict(body["arguments"])
            to = body.get("to")
        except (ValueError, KeyError, TypeError):
            self.log.warn("Ignored a malformed sessions question from Redis")
            return
        if asker == self.node or (to is not None and to != self.node):
            return
        if action not in ACTIONS:
            self.log.warn("Ignored a sessions question for {action!r}", action=action[:40])
            return
        answer = defer.maybeDeferred(self._answer, action, arguments)
        answer.addCallback(
            lambda result: self.link.call(
                "PUBLISH",
                REPLIES + asker,
                json.dumps({"ask": number, "node": self.node, "name": self.name, "result": result}),
            )
        )
        answer.addErrback(self._not_answered, action)

    def _answer(self, action: str, arguments: dict[str, Any]) -> Any:
        if action == "page":
            return self._local_page(
                arguments.get("user"),
                arguments.get("peer"),
                arguments.get("cursor"),
                int(arguments.get("limit", MAX_PAGE)),
            )
        if action == "status":
            return self.local.status()
        if action == "end_user":
            return self.local.end_user(str(arguments["name"]))
        return getattr(self.local, action)(number_of(arguments["ref"]))

    def _not_answered(self, failure: Failure, action: str) -> None:
        self.log.warn(
            "Could not answer a fleet sessions question ({action}): {error}",
            action=action,
            error=failure.getErrorMessage(),
        )

    def _local_page(
        self, user: str | None, peer: str | None, cursor: list[Any] | None, limit: int
    ) -> Any:
        """
        This node's part of a page that starts after C{cursor} (a node and
        an id; C{None} for the first page).
        """
        after = 0
        if cursor is not None:
            node, number = str(cursor[0]), int(cursor[1])
            if self.node == node:
                after = number
            elif self.node < node:
                after = _PAST_ALL
        return self.local.page(user, peer, after, limit)

    # -- asking them -----------------------------------------------------------

    def _ask(self, action: str, arguments: dict[str, Any], to: str | None = None) -> Any:
        """
        Ask the other nodes (or node C{to}); a Deferred of their answers,
        each C{{node, name, result}}.
        """
        number = next(self._numbers)
        question = _Question(defer.Deferred(), to)
        self._questions[number] = question
        body = {"from": self.node, "ask": number, "action": action, "arguments": arguments}
        if to is not None:
            body["to"] = to
        published = self.link.call("PUBLISH", ASKS, json.dumps(body))
        published.addCallback(self._published, number, to)
        published.addErrback(self._unpublished, number)
        return question.done

    def _published(self, listeners: Any, number: int, to: str | None) -> None:
        question = self._questions.get(number)
        if question is None:
            return
        others = int(listeners) - (1 if self._listening else 0)
        question.expected = min(others, 1) if to is not None else others
        if len(question.answers) >= question.expected:
            self._finish(number)
        else:
            question.timer = self._reactor.callLater(ANSWER_TIMEOUT, self._finish, number)

    def _unpublished(self, failure: Failure, number: int) -> None:
        # Redis is away (the link logged it): this node answers alone.
        self._finish(number)

    def _answered(self, message: object) -> None:
        try:
            body = json.loads(message if isinstance(message, str | bytes) else str(message))
            number = int(body["ask"])
            answer = {
                "node": str(body["node"]),
                "name": str(body["name"]),
                "result": body["result"],
            }
        except (ValueError, KeyError, TypeError):
            self.log.warn("Ignored a malformed sessions answer from Redis")
            return
        question = self._questions.get(number)
        if question is None:
            return  # too late: the question was answered without it
        question.answers.append(answer)
        if question.expected is not None and len(question.answers) >= question.expected:
            self._finish(number)

    def _finish(self, number: int) -> None:
        question = self._questions.pop(number)
        if question.timer is not None and question.timer.active():
            question.timer.cancel()
        missing = (question.expected or 0) - len(question.answers)
        if missing > 0 and question.to is None:
            self.log.warn(
                "{missing} fleet node(s) did not answer the sessions API in {timeout} s",
                missing=missing,
                timeout=ANSWER_TIMEOUT,
            )
        if missing > 0:
            question.answers.append({"unanswered": missing})
        question.done.callback(question.answers)

    def _with_local(
        self, local: Any, action: str, arguments: dict[str, Any]
    ) -> defer.Deferred[tuple[dict[str, Any], list[dict[str, Any]], int]]:
        """
        This node's answer and the others', and how many did not answer.
        """
        mine = defer.maybeDeferred(lambda: local)
        theirs = self._ask(action, arguments)
        both = defer.gatherResults([mine, theirs], consumeErrors=True)

        def split(results: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
            answers = [a for a in results[1] if "unanswered" not in a]
            missing = sum(a["unanswered"] for a in results[1] if "unanswered" in a)
            return {"node": self.node, "name": self.name, "result": results[0]}, answers, missing

        def first_error(failure: Failure) -> Failure:
            error = failure.value
            return error.subFailure if isinstance(error, defer.FirstError) else failure

        both.addErrback(first_error)
        return both.addCallback(split)

    # -- ISessions -------------------------------------------------------------

    def ref(self, node: str, number: int) -> str:
        return f"{node}-{number}"

    def _split(self, ref: int | str) -> tuple[str, int]:
        """
        The node and id a ref names; a bare id is this node's.
        """
        node, _, number = str(ref).rpartition("-")
        return node or self.node, number_of(number)

    def _cursor(self, after: int | str) -> list[Any] | None:
        if str(after) in ("", "0"):
            return None
        node, _, number = str(after).rpartition("-")
        try:
            return [node or self.node, int(number)]
        except ValueError:
            raise BadCursor("after is the ref of a session (node-id)") from None

    def page(self, user: str | None, peer: str | None, after: int | str, limit: int) -> Any:
        cursor = self._cursor(after)
        limit = max(1, min(limit, MAX_PAGE))
        arguments = {"user": user, "peer": peer, "cursor": cursor, "limit": limit}
        parts = self._with_local(self._local_page(user, peer, cursor, limit), "page", arguments)
        return parts.addCallback(self._merged, limit)

    def _merged(
        self, parts: tuple[dict[str, Any], list[dict[str, Any]], int], limit: int
    ) -> dict[str, Any]:
        mine, theirs, missing = parts
        sessions: list[dict[str, Any]] = []
        total = 0
        more = False
        for part in [mine, *theirs]:
            node, page = part["node"], part["result"]
            total += page["total"]
            more = more or page["next"] is not None
            for session in page["sessions"]:
                sessions.append(session | {"node": node, "ref": self.ref(node, session["id"])})
        sessions.sort(key=lambda s: (s["node"], s["id"]))
        following = None
        if len(sessions) > limit or (more and sessions):
            sessions = sessions[:limit]
            following = sessions[-1]["ref"]
        answer = {
            "sessions": sessions,
            "next": following,
            "total": total,
            "draining": mine["result"]["draining"],
        }
        if missing:
            answer["unanswered"] = missing
        return answer

    def _one_node(self, action: str, ref: int | str) -> Any:
        node, number = self._split(ref)
        if node == self.node:
            return defer.maybeDeferred(getattr(self.local, action), number)
        asked = self._ask(action, {"ref": number}, to=node)
        return asked.addCallback(
            lambda answers: next((a["result"] for a in answers if "result" in a), None)
        )

    def one(self, ref: int | str) -> Any:
        def named(session: dict[str, Any] | None) -> dict[str, Any] | None:
            if session is None:
                return None
            node = self._split(ref)[0]
            return session | {"node": node, "ref": self.ref(node, session["id"])}

        return self._one_node("one", ref).addCallback(named)

    def end(self, ref: int | str) -> Any:
        return self._one_node("end", ref).addCallback(lambda n: n or 0)

    def end_user(self, name: str) -> Any:
        ended = self._with_local(self.local.end_user(name), "end_user", {"name": name})
        return ended.addCallback(
            lambda parts: parts[0]["result"] + sum(a["result"] for a in parts[1])
        )

    def drain(self) -> Any:
        return self.local.drain()

    def status(self) -> Any:
        both = self._with_local(self.local.status(), "status", {})
        return both.addCallback(self._fleet_status)

    def _fleet_status(
        self, parts: tuple[dict[str, Any], list[dict[str, Any]], int]
    ) -> dict[str, Any]:
        """
        This node's status, with a line for every node of the fleet.
        """
        mine, theirs, missing = parts
        nodes = []
        for part in [mine, *sorted(theirs, key=lambda a: a["node"])]:
            status = part["result"]
            nodes.append(
                {
                    "node": part["node"],
                    "name": part["name"],
                    "allocations": status["allocations"],
                    "users": status["users"],
                    "workers": status["workers"],
                    "draining": status["draining"],
                    "degraded": status["degraded"],
                    "version": status["version"],
                    "uptime": status["uptime"],
                }
            )
        status = dict(mine["result"])
        status["fleet"] = f"Redis, {len(nodes)} servers" + (
            f", {missing} not answering" if missing else ""
        )
        status["nodes"] = nodes
        status["fleet_allocations"] = sum(n["allocations"] for n in nodes)
        return status
