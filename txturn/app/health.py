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

The answers are a line of text, never per-client data, and cost one
method call: a probe every second is nothing.
"""

from __future__ import annotations

from typing import Callable

from twisted.web.resource import Resource
from twisted.web.server import Request

#: A readiness check: C{None} when ready, else why not.
Readiness = Callable[[], "str | None"]


class _Liveness(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        return b"ok\n"


class _Readiness(Resource):
    isLeaf = True

    def __init__(self, not_ready: Readiness) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._not_ready = not_ready

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        why = self._not_ready()
        if why is None:
            return b"ready\n"
        request.setResponseCode(503)
        return f"not ready: {why}\n".encode()


def add_health(root: Resource, not_ready: Readiness) -> None:
    """
    Put C{/healthz} and C{/readyz} under C{root}.
    """
    root.putChild(b"healthz", _Liveness())  # type: ignore[no-untyped-call]
    root.putChild(b"readyz", _Readiness(not_ready))
