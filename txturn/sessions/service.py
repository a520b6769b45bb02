# -*- test-case-name: tests.test_sessions -*-
"""
The sessions API's listener (C{--admin-port}, on C{--admin-address},
loopback unless told otherwise) and the sampler behind its per-session
rates.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Site

from txturn.core.server import TurnServer
from txturn.sessions import MIN_TOKEN_LENGTH
from txturn.sessions.http import SessionsApi
from txturn.sessions.view import Rates
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
    ) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the admin token must be at least {MIN_TOKEN_LENGTH} characters")
        self._reactor = reactor
        self._server = server
        self.address = address
        self.rates = Rates()
        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"api", SessionsApi(reactor, server, token, self.rates, drain))
        self.site = Site(root)  # type: ignore[no-untyped-call]
        self.site.noisy = False
        self._port: Any = None
        self._sampler = LoopingCall(self._sample)
        self._sampler.clock = reactor

    def _sample(self) -> None:
        self.rates.sample(self._server.allocations.values(), self._reactor.seconds())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        host, port = self.address
        self._port = self._reactor.listenTCP(port, self.site, interface=host)
        bound = self._port.getHost()
        self.log.info(
            "Sessions API on http://{host}:{port}/api/v1/sessions (bearer token)",
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
