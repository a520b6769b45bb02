# -*- test-case-name: tests.test_health -*-
"""
C{/healthz} and C{/readyz}: what Kubernetes, load balancers and systemd
watchdogs ask a server, served beside C{/metrics} on the C{--prometheus}
listener.

 - C{/healthz} (liveness): 200 whenever the reactor can answer at all.
   A server that answers it is not wedged; restarting it would only drop
   its calls.
 - C{/readyz} (readiness): 200 while the server takes new allocations;
   503 with the reason while it drains, stops, or has no client listener
   bound (or, under C{--workers}, no worker running), so a load balancer
   sends new clients elsewhere while existing calls go on.
 - A ready server may be degraded by design: with C{--redis} unreachable
   it still serves (quotas counted per server, keys from the cache), so
   C{/readyz} stays 200 and says so ("ready, degraded: ...").  Taking it
   out of rotation would take every server of a fleet out at once when
   their shared Redis fails, which is worse than degraded service; alert
   on the body or on the log line instead.

The answers are a line of text, never per-client data, and cost one
method call: a probe every second is nothing.
"""

from __future__ import annotations

from typing import Callable

from twisted.web.resource import Resource
from twisted.web.server import Request

#: A readiness check: C{None} when ready, else why not.  It also answers
#: for degradations, which do not make the server unready.
Readiness = Callable[[], "str | None"]


class _Liveness(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        return b"ok\n"


class _Readiness(Resource):
    isLeaf = True

    def __init__(self, not_ready: Readiness, degraded: Readiness) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._not_ready = not_ready
        self._degraded = degraded

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        why = self._not_ready()
        if why is None:
            degraded = self._degraded()
            if degraded is not None:
                return f"ready, degraded: {degraded}\n".encode()
            return b"ready\n"
        request.setResponseCode(503)
        return f"not ready: {why}\n".encode()


def add_health(root: Resource, not_ready: Readiness, degraded: Readiness = lambda: None) -> None:
    """
    Put C{/healthz} and C{/readyz} under C{root}.
    """
    root.putChild(b"healthz", _Liveness())  # type: ignore[no-untyped-call]
    root.putChild(b"readyz", _Readiness(not_ready, degraded))
