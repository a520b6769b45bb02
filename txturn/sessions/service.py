# -*- test-case-name: tests.test_sessions -*-
"""
The sessions API's listener (C{--admin-port}, on C{--admin-address},
loopback unless told otherwise), the live status page it serves at
C{/status}, and the sampler behind the rates of both.
"""

from __future__ import annotations

import importlib.resources
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Site

from txturn import __version__
from txturn.core.server import TurnServer
from txturn.sessions import MIN_TOKEN_LENGTH
from txturn.sessions.http import SessionsApi, StaticFile
from txturn.sessions.view import Rates, user_of
from txturn.util.log_level import logger

#: Seconds between two samples of every session's counters: the window
#: of the rates the API shows.
SAMPLE_INTERVAL = 5.0


class SessionsService(Service):
    """
    Serves L{SessionsApi} while running; samples rates every
    L{SAMPLE_INTERVAL} seconds on the reactor given.
    """

    log = logger("txturn.sessions")

    def __init__(
        self,
        reactor: Any,
        server: TurnServer,
        address: tuple[str, int],
        token: bytes,
        drain: Callable[[], object],
        degraded: Callable[[], str | None] = lambda: None,
        fleet: str = "none",
    ) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the admin token must be at least {MIN_TOKEN_LENGTH} characters")
        self._reactor = reactor
        self._server = server
        self.address = address
        self.rates = Rates()
        self._degraded = degraded
        self._fleet = fleet
        self._started = reactor.seconds()
        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"api", SessionsApi(reactor, server, token, self.rates, drain, self.status))
        files = importlib.resources.files("txturn.sessions") / "static"
        page = StaticFile(files.joinpath("status.html").read_bytes(), b"text/html; charset=utf-8")
        root.putChild(b"", page)
        root.putChild(b"status", page)
        root.putChild(
            b"status.js",
            StaticFile(files.joinpath("status.js").read_bytes(), b"text/javascript; charset=utf-8"),
        )
        root.putChild(
            b"status.css",
            StaticFile(files.joinpath("status.css").read_bytes(), b"text/css; charset=utf-8"),
        )
        self.site = Site(root)  # type: ignore[no-untyped-call]
        self.site.noisy = False
        self._port: Any = None
        self._sampler = LoopingCall(self._sample)
        self._sampler.clock = reactor

    def status(self) -> dict[str, Any]:
        """
        The whole server, for C{GET /api/v1/status} and the status page.
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

    def _sample(self) -> None:
        self.rates.sample(self._server.allocations.values(), self._reactor.seconds())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        host, port = self.address
        self._port = self._reactor.listenTCP(port, self.site, interface=host)
        bound = self._port.getHost()
        self.log.info(
            "Sessions API on http://{host}:{port}/api/v1/sessions, status page at /status "
            "(bearer token)",
            host=host if ":" not in host else f"[{host}]",
            port=bound.port,
        )
        self._sampler.start(SAMPLE_INTERVAL, now=True)

    def port(self) -> int:
        """
        The port bound (for C{--admin-port 0}).
        """
        return int(self._port.getHost().port)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._sampler.running:
            self._sampler.stop()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)
