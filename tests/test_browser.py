"""
A browser's relay-only WebRTC call through the server, over UDP, TCP and
TLS: headless Chromium
(Debian's package, which .ci/run installs) opens two peer connections with
C{iceTransportPolicy: "relay"} and sends data-channel messages between
them, which can only flow through two TURN allocations on our server.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server, static

from tests.test_interop import HERE, InProcessServer, spawn

reactor: Any = _reactor


def find_chromium() -> str:
    for name in ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        raise AssertionError("chromium is missing: .ci/run must install it")
    raise SkipTest("chromium not installed (apt-get install chromium)")


class ResultResource(resource.Resource):
    """
    Receives the page's JSON result.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.result: defer.Deferred[dict[str, Any]] = defer.Deferred()

    def render_POST(self, request: Any) -> bytes:
        if not self.result.called:
            self.result.callback(json.loads(request.content.read()))
        return b"ok"


class BrowserTests(TestCase):
    """
    Chromium relays a WebRTC data channel through txturn over UDP.
    """

    timeout = 90

    def setUp(self) -> None:
        self.chromium = find_chromium()
        self.turn = InProcessServer()
        self.turn.start()
        self.addCleanup(self.turn.stop)
        root = resource.Resource()
        root.putChild(b"", static.File(os.path.join(HERE, "clients", "webrtc_relay.html")))
        self.results = ResultResource()
        root.putChild(b"result", self.results)
        self.web = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
        self.addCleanup(self.web.stopListening)
        self.profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.profile, True)

    @defer.inlineCallbacks
    def call(self, url: str) -> Any:
        """
        Run the page against C{url}: both peer connections gather only relay
        candidates on 127.0.0.1, connect relay to relay, and all 50
        messages arrive.
        """
        query = urlencode({"turn": url, "user": "test", "pass": "secret", "count": "50"})
        page = f"http://127.0.0.1:{self.web.getHost().port}/?{query}"
        spawn(
            [
                self.chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                # The test certificate is self-signed, and Chromium checks
                # TURN/TLS certificates like any other.
                "--ignore-certificate-errors",
                f"--user-data-dir={self.profile}",
                page,
            ],
            self,
        )
        result = yield self.results.result
        self.assertEqual(result["error"], "", result)
        self.assertEqual(result["received"], 50, result)
        self.assertEqual(result["pair"], ["relay", "relay"])
        self.assertTrue(result["candidates"])
        for candidate in result["candidates"]:
            self.assertIn("typ relay", candidate)
            self.assertIn("127.0.0.1", candidate)
        self.assertEqual(len(self.turn.service.server.allocations), 2)
        return result

    def test_udp(self) -> Any:
        """
        A relay-only call through turn: over UDP.
        """
        return self.call(f"turn:127.0.0.1:{self.turn.service.port_of('udp')}?transport=udp")

    @defer.inlineCallbacks
    def test_tcp(self) -> Any:
        """
        A relay-only call through turn: over TCP; both allocations are on
        TCP connections.
        """
        yield self.call(f"turn:127.0.0.1:{self.turn.service.port_of('tcp')}?transport=tcp")
        for channel, _ in self.turn.service.server.allocations:
            self.assertEqual(channel.transport_name, "tcp")

    @defer.inlineCallbacks
    def test_tls(self) -> Any:
        """
        A relay-only call through turns: (TURN over TLS).
        """
        yield self.call(f"turns:127.0.0.1:{self.turn.service.port_of('tls')}?transport=tcp")
        for channel, _ in self.turn.service.server.allocations:
            self.assertEqual(channel.transport_name, "tls")
