# -*- test-case-name: tests.test_sessions -*-
"""
The sessions API's listener (C{--admin-port}, on C{--admin-address},
loopback unless told otherwise) and the live status page it serves at
C{/status}.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import Site

from txturn.sessions import MIN_TOKEN_LENGTH
from txturn.sessions.backend import ISessions
from txturn.sessions.http import SessionsApi, StaticFile
from txturn.transports.sockets import listen_tcp
from txturn.util.log_level import logger


class SessionsService(Service):
    """
    Serves L{SessionsApi} and the status page while running, answering
    from C{sessions}: a L{LocalSessions}, or the supervisor's view of its
    workers'.
    """

    log = logger("txturn.sessions")

    def __init__(
        self, reactor: Any, sessions: ISessions, address: tuple[str, int], token: bytes
    ) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the admin token must be at least {MIN_TOKEN_LENGTH} characters")
        self._reactor = reactor
        self.sessions = sessions
        self.address = address
        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"api", SessionsApi(reactor, sessions, token))
        files = importlib.resources.files("txturn.sessions") / "static"
        page = StaticFile(files.joinpath("status.html").read_bytes(), b"text/html; charset=utf-8")
        root.putChild(b"", page)
        root.putChild(b"status", page)
        root.putChild(
            b"status.js",
            StaticFile(files.joinpath("status.js").read_bytes(), b"text/javascript; charset=utf-8"),
        )
        # The API's description: no data, so no token.
        root.putChild(
            b"openapi.json",
            StaticFile(files.joinpath("openapi.json").read_bytes(), b"application/json"),
        )
        root.putChild(
            b"status.css",
            StaticFile(files.joinpath("status.css").read_bytes(), b"text/css; charset=utf-8"),
        )
        self.site = Site(root)  # type: ignore[no-untyped-call]
        self.site.noisy = False
        self._port: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        host, port = self.address
        self._port = listen_tcp(self._reactor, host, port, self.site)
        bound = self._port.getHost()
        self.log.info(
            "Sessions API on http://{host}:{port}/api/v1/sessions, status page at /status "
            "(bearer token)",
            host=host if ":" not in host else f"[{host}]",
            port=bound.port,
        )

    def port(self) -> int:
        """
        The port bound (for C{--admin-port 0}).
        """
        return int(self._port.getHost().port)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


def sessions_services(
    reactor: Any,
    local: ISessions,
    address: tuple[str, int],
    token: bytes,
    fleet: tuple[Any, str, str, bool] | None = None,
) -> list[Service]:
    """
    What serves the sessions API of one server: with C{fleet} (a Redis
    link, this node's id and name, whether stopping closes the link),
    the fleet's node in front of C{local}, then the listener.  A
    server's assembly and the supervisor of C{--workers} each add them
    to their service tree.
    """
    services: list[Service] = []
    answering = local
    if fleet is not None:
        from txturn.sessions.fleet import FleetSessions

        link, node, name, close_link = fleet
        node_service = FleetSessions(reactor, link, local, node, name, close_link=close_link)
        services.append(node_service)
        answering = node_service
    services.append(SessionsService(reactor, answering, address, token))
    return services
