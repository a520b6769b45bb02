# -*- test-case-name: tests.test_sessions -*-
"""
The sessions API over HTTP: JSON, every request authenticated by a
bearer token, compared in constant time, every refusal logged (at most
a line per source a minute, with the count of the others).

 - C{GET /api/v1/sessions?user=&peer=&after=&limit=}: a page of
   sessions by id, and C{next}, the C{after} of the next page (or null);
 - C{GET /api/v1/sessions/ID}: one session;
 - C{POST /api/v1/sessions/ID/end}: end it (usage record reason
   C{admin});
 - C{POST /api/v1/users/NAME/end}: end every session of a user (the user
   part of REST names too);
 - C{POST /api/v1/drain}: start a drain, as SIGQUIT does;
 - C{GET /api/v1/status}: the whole server for the status page: counts,
   rates over the last minutes, refusals and drops, drain and fleet.

Reads are GET and never change anything; every change is a POST, which
a page on another origin cannot send with the token (there is no
cookie, and no CORS header is ever sent).
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txturn.core.interfaces import host_port
from txturn.sessions.backend import ISessions
from txturn.sessions.view import DEFAULT_PAGE, BadCursor, NoSuchSession
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle

PREFIX = [b"api", b"v1"]


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class SessionsApi(Resource):
    """
    The whole API as one leaf: routing is a few path comparisons, read
    in one place; the answers come from an L{ISessions}, at once (one
    process) or later (the supervisor asking its workers).
    """

    isLeaf = True
    log = logger("txturn.sessions")

    def __init__(self, reactor: IReactorTime, sessions: ISessions, token: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._sessions = sessions
        self._token = token
        self._refusals = LogThrottle(reactor)

    def render(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        request.setHeader(b"X-Content-Type-Options", b"nosniff")  # type: ignore[no-untyped-call]
        answer = defer.maybeDeferred(self._answer, request)
        answer.addErrback(self._failed, request)
        answer.addCallback(self._write, request)
        return NOT_DONE_YET

    def _answer(self, request: Request) -> Any:
        self._authenticate(request)
        return self._route(request)

    def _failed(self, failure: Failure, request: Request) -> dict[str, str]:
        error = failure.value
        if isinstance(error, NoSuchSession):
            error = ApiError(404, "no such session")
        elif isinstance(error, BadCursor):
            error = ApiError(400, str(error))
        if isinstance(error, ApiError):
            request.setResponseCode(error.code)
            return {"error": str(error)}
        self.log.failure("Sessions API call failed", failure)
        request.setResponseCode(500)
        return {"error": "the server could not answer"}

    @staticmethod
    def _write(body: Any, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        request.write(json.dumps(body, sort_keys=True).encode() + b"\n")  # type: ignore[no-untyped-call]
        request.finish()  # type: ignore[no-untyped-call]

    def _authenticate(self, request: Request) -> None:
        given = request.getHeader(b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token):
            return
        reason = "no bearer token" if not given else "wrong token"
        client = request.getClientAddress()  # type: ignore[no-untyped-call]
        source = getattr(client, "host", "?")
        self._refusals.emit(
            source,
            self.log.warn,
            "Sessions API refused {client}: {reason} ({method} {path})",
            client=host_port((source, getattr(client, "port", 0))),
            reason=reason,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace")[:200],
        )
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="txturn"')  # type: ignore[no-untyped-call]
        raise ApiError(401, reason)

    def _route(self, request: Request) -> Any:
        path = [segment for segment in request.path.split(b"/") if segment]
        if path[:2] != PREFIX:
            raise ApiError(404, "no such resource")
        path = path[2:]
        method = request.method
        sessions = self._sessions
        if path == [b"sessions"]:
            self._only(method, b"GET")
            return self._list(request)
        if path == [b"status"]:
            self._only(method, b"GET")
            return sessions.status()
        if len(path) == 2 and path[0] == b"sessions":
            self._only(method, b"GET")
            return defer.maybeDeferred(sessions.one, _ref(path[1])).addCallback(_found)
        if len(path) == 3 and path[0] == b"sessions" and path[2] == b"end":
            self._only(method, b"POST")
            wanted = _ref(path[1])
            ended = defer.maybeDeferred(sessions.end, wanted)
            return ended.addCallback(self._ended, f"session {wanted}")
        if len(path) == 3 and path[0] == b"users" and path[2] == b"end":
            self._only(method, b"POST")
            user = unquote(path[1].decode("utf-8", "replace"))
            ended = defer.maybeDeferred(sessions.end_user, user)
            return ended.addCallback(self._ended, f"the sessions of {user}", missing_ok=True)
        if path == [b"drain"]:
            self._only(method, b"POST")
            self.log.info("Sessions API asked for a drain")
            return sessions.drain()
        raise ApiError(404, "no such resource")

    def _ended(self, count: int, what: str, missing_ok: bool = False) -> dict[str, int]:
        if not count and not missing_ok:
            raise ApiError(404, "no such session")
        self.log.info("Sessions API ended {what}: {count}", what=what, count=count)
        return {"ended": count}

    @staticmethod
    def _only(method: bytes, allowed: bytes) -> None:
        if method != allowed:
            raise ApiError(405, f"use {allowed.decode()}")

    def _list(self, request: Request) -> Any:
        args = request.args or {}

        def one(name: bytes) -> str | None:
            values = args.get(name)
            return values[0].decode("utf-8", "replace") if values else None

        try:
            limit = int(one(b"limit") or DEFAULT_PAGE)
        except ValueError:
            raise ApiError(400, "limit is a number") from None
        after = (one(b"after") or "0")[:80]
        return self._sessions.page(one(b"user"), one(b"peer"), after, limit)


def _ref(text: bytes) -> str:
    """
    A session's id or, in a fleet, its ref (C{node-id}), as the path
    gave it: the backend reads it.
    """
    return text.decode("ascii", "replace")[:80]


def _found(described: dict[str, Any] | None) -> dict[str, Any]:
    if described is None:
        raise ApiError(404, "no such session")
    return described


#: What the status page may load and do: its own script and style, calls
#: to its own origin, nothing inline, in no frame.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class StaticFile(Resource):
    """
    One file of the status page, served with the headers that keep it
    to itself.  It holds no data: what it shows comes from the API, with
    the token.
    """

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        for name, value in [
            (b"Content-Type", self._type),
            (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"X-Frame-Options", b"DENY"),
            (b"Referrer-Policy", b"no-referrer"),
            (b"Cache-Control", b"no-store"),
        ]:
            request.setHeader(name, value)  # type: ignore[no-untyped-call]
        return self._body
