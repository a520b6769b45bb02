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
from typing import Any, Callable
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from txturn.core.interfaces import host_port
from txturn.core.server import TurnServer
from txturn.sessions.view import DEFAULT_PAGE, Rates, describe, page
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
    in one place.
    """

    isLeaf = True
    log = logger("txturn.sessions")

    def __init__(
        self,
        reactor: IReactorTime,
        server: TurnServer,
        token: bytes,
        rates: Rates,
        drain: Callable[[], object],
        status: Callable[[], dict[str, Any]],
        worker: int | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._reactor = reactor
        self._server = server
        self._token = token
        self._rates = rates
        self._drain = drain
        self._status = status
        self._worker = worker
        self._refusals = LogThrottle(reactor)

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        request.setHeader(b"X-Content-Type-Options", b"nosniff")  # type: ignore[no-untyped-call]
        try:
            self._authenticate(request)
            body = self._route(request)
        except ApiError as e:
            request.setResponseCode(e.code)
            body = {"error": str(e)}
        return json.dumps(body, sort_keys=True).encode() + b"\n"

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
        if path == [b"sessions"]:
            self._only(method, b"GET")
            return self._list(request)
        if path == [b"status"]:
            self._only(method, b"GET")
            return self._status()
        if len(path) == 2 and path[0] == b"sessions":
            self._only(method, b"GET")
            allocation = self._find(path[1])
            return self._describe(allocation)
        if len(path) == 3 and path[0] == b"sessions" and path[2] == b"end":
            self._only(method, b"POST")
            allocation = self._find(path[1])
            self._server.end_allocation(allocation.id)
            self.log.info(
                "Sessions API ended allocation {allocation} of {user}",
                allocation=allocation.id,
                user=allocation.username,
            )
            return {"ended": 1}
        if len(path) == 3 and path[0] == b"users" and path[2] == b"end":
            self._only(method, b"POST")
            user = unquote(path[1].decode("utf-8", "replace"))
            ended = self._server.end_allocations_of(user)
            self.log.info(
                "Sessions API ended {ended} allocation(s) of {user}", ended=ended, user=user
            )
            return {"ended": ended}
        if path == [b"drain"]:
            self._only(method, b"POST")
            draining = self._server.draining
            if not draining:
                self.log.info("Sessions API started a drain")
                self._drain()
            return {"draining": True, "already": draining}
        raise ApiError(404, "no such resource")

    @staticmethod
    def _only(method: bytes, allowed: bytes) -> None:
        if method != allowed:
            raise ApiError(405, f"use {allowed.decode()}")

    def _find(self, text: bytes) -> Any:
        try:
            wanted = int(text)
        except ValueError:
            raise ApiError(404, "no such session") from None
        for allocation in self._server.allocations.values():
            if allocation.id == wanted:
                return allocation
        raise ApiError(404, "no such session")

    def _describe(self, allocation: Any) -> dict[str, Any]:
        return describe(
            allocation,
            self._reactor.seconds(),
            self._server.config.realm,
            self._rates.rates,
            self._worker,
        )

    def _list(self, request: Request) -> dict[str, Any]:
        args = request.args or {}

        def one(name: bytes) -> str | None:
            values = args.get(name)
            return values[0].decode("utf-8", "replace") if values else None

        try:
            after = int(one(b"after") or 0)
            limit = int(one(b"limit") or DEFAULT_PAGE)
        except ValueError:
            raise ApiError(400, "after and limit are numbers") from None
        chosen, following = page(
            self._server.allocations.values(), one(b"user"), one(b"peer"), after, limit
        )
        return {
            "sessions": [self._describe(a) for a in chosen],
            "next": following,
            "total": len(self._server.allocations),
            "draining": self._server.draining,
        }


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
