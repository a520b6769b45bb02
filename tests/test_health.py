"""
C{/healthz} and C{/readyz} (L{txturn.app.health}) on a real service's
metrics listener, and on the supervisor of C{--workers}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.test_service import REALM, free_udp_port
from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.server import ServerConfig

reactor: Any = _reactor


@defer.inlineCallbacks
def get(port: int, path: str) -> Any:
    """
    (status, body) of C{GET path} on 127.0.0.1:C{port}.
    """
    url = f"http://127.0.0.1:{port}{path}".encode()
    response = yield Agent(reactor).request(b"GET", url)
    body = yield readBody(response)
    return response.code, body.decode()


class HealthTests(TestCase):
    def setUp(self) -> None:
        self.metrics_port = free_udp_port()
        self.service = TurnService(
            reactor,
            StaticCredentials(REALM, {"alice": "secret"}),
            [("127.0.0.1", 0)],
            ["127.0.0.1"],
            config=ServerConfig(realm=REALM),
            transports={"udp"},
            metrics_listen=("127.0.0.1", self.metrics_port),
        )

    @defer.inlineCallbacks
    def test_ready_then_draining(self) -> Any:
        """
        Live and ready once listening; still live but 503 "draining"
        while it drains (load balancers send new clients elsewhere).
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual((yield get(self.metrics_port, "/healthz")), (200, "ok\n"))
        self.assertEqual((yield get(self.metrics_port, "/readyz")), (200, "ready\n"))
        self.service.drain(60)
        self.assertEqual((yield get(self.metrics_port, "/healthz")), (200, "ok\n"))
        self.assertEqual((yield get(self.metrics_port, "/readyz")), (503, "not ready: draining\n"))

    def test_not_ready_without_listeners(self) -> None:
        """
        Before it has bound a client listener, the service is not ready.
        """
        self.assertEqual(self.service.not_ready(), "not running")
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertIsNone(self.service.not_ready())
        for name, port in self.service.ports:
            if name != "metrics":
                port.stopListening()
        self.service.listeners.ports = [(n, p) for n, p in self.service.ports if n == "metrics"]
        self.assertEqual(self.service.not_ready(), "no client listener bound")

    @defer.inlineCallbacks
    def test_degraded_stays_ready(self) -> Any:
        """
        A degradation (Redis unreachable) is said on C{/readyz}, which
        stays 200: the server still serves, by design.
        """
        down = ["Redis at 127.0.0.1:6379 unreachable"]
        self.service.add_degradation(lambda: down[0] if down else None)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(
            (yield get(self.metrics_port, "/readyz")),
            (200, "ready, degraded: Redis at 127.0.0.1:6379 unreachable\n"),
        )
        down.clear()
        self.assertEqual((yield get(self.metrics_port, "/readyz")), (200, "ready\n"))
