"""
A browser's relay-only WebRTC call through the server, over UDP, TCP and
TLS: headless Chromium
(Debian's package, which .ci/run installs) opens two peer connections with
C{iceTransportPolicy: "relay"} and sends data-channel messages between
them, which can only flow through two TURN allocations on our server.
And the same call through a server that redirects every Allocate to
another (300 Try Alternate), in a network namespace the test creates.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any
from urllib.parse import urlencode, urlunsplit

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server, static

from tests.test_interop import HERE, InProcessServer, OutputWatcher, spawn, twistd_turn

reactor: Any = _reactor


CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
]


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
        root.putChild(b"relay_call.js", static.File(os.path.join(HERE, "clients", "relay_call.js")))
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
                *CHROMIUM_FLAGS,
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


_namespaces = itertools.count()


def network_namespace(test: TestCase) -> str:
    """
    A network namespace of the test's own, deleted after it, with
    10.99.0.1/24 on one end of a veth pair whose other end is in it too
    (libwebrtc will not follow a redirect to a loopback address); skips
    where namespaces cannot be made.
    """
    name = f"txturn-test-{os.getpid()}-{next(_namespaces)}"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        ["ip", "-n", name, "addr", "add", "10.99.0.1/24", "dev", "v0"],
        ["ip", "-n", name, "link", "set", "v0", "up"],
        ["ip", "-n", name, "link", "set", "v1", "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    if shutil.which("ip") is None:
        raise SkipTest("no ip command (iproute2)")
    for i, command in enumerate(commands):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            if i:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            raise SkipTest(f"cannot make a network namespace: {done.stderr.strip()}")
        if i == 0:
            test.addCleanup(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
    return name


class RedirectTests(TestCase):
    """
    Chromium, given only a server that redirects every Allocate (300 Try
    Alternate), gets its relay candidates from the alternate and relays
    the call there, over UDP and over TCP.  Before txturn redirected
    Allocates that carry no credentials yet, libwebrtc carried the first
    server's nonce to the alternate, got 438 and gave up: no candidate.
    """

    timeout = 90

    @defer.inlineCallbacks
    def servers(self, inside: list[str]) -> Any:
        """
        In the namespace: the target on 3479, and the server given to the
        client on 3478, which redirects every Allocate to it.
        """
        servers = {}
        for name, port, extra in [
            ("target", 3479, []),
            ("redirecting", 3478, ["--alternate-server", "10.99.0.1:3479"]),
        ]:
            servers[name] = spawn(
                [
                    *inside,
                    *twistd_turn(
                        port,
                        "--relay-ip",
                        "10.99.0.1",
                        "--allowed-peer-ip",
                        "10.99.0.1",
                        "--realm",
                        "txturn",
                        "--user",
                        "test:secret",
                        "--no-tls",
                        "--no-dtls",
                        *extra,
                        listen="10.99.0.1",
                    ),
                ],
                self,
            )
            yield servers[name].wait_for(rb"Relaying on 10\.99\.0\.1", timeout=30)
        return servers

    def check(self, result: dict[str, Any], servers: dict[str, Any]) -> None:
        """
        Every message arrived over a relay-to-relay pair, every candidate
        is a relay of the target, which made both allocations.
        """
        self.assertEqual(result["error"], "", result)
        self.assertEqual(result["received"], 20, result)
        self.assertEqual(result["pair"], ["relay", "relay"])
        self.assertTrue(result["candidates"])
        for candidate in result["candidates"]:
            self.assertIn("typ relay", candidate)
            self.assertIn("10.99.0.1", candidate)
        allocated = re.compile(rb"Allocated 10\.99\.0\.1:\d+ for test from 10\.99\.0\.1:\d+ over ")
        self.assertEqual(len(allocated.findall(servers["target"].output)), 2)
        self.assertEqual(allocated.findall(servers["redirecting"].output), [])

    @defer.inlineCallbacks
    def call(self, transport: str) -> Any:
        chromium = find_chromium()
        namespace = network_namespace(self)
        inside = ["ip", "netns", "exec", namespace]
        servers = yield self.servers(inside)
        profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, profile, True)
        query = urlencode(
            {
                "turn": f"turn:10.99.0.1:3478?transport={transport}",
                "user": "test",
                "pass": "secret",
                "count": "20",
            }
        )
        page = urlunsplit(
            ("file", "", os.path.join(HERE, "clients", "webrtc_relay.html"), query, "")
        )
        browser: OutputWatcher = spawn(
            [
                *inside,
                chromium,
                *CHROMIUM_FLAGS,
                "--enable-logging=stderr",
                "--v=0",
                f"--user-data-dir={profile}",
                page,
            ],
            self,
        )
        found = yield browser.wait_for(rb'RESULT (\{[^\n]*\})", source', timeout=40)
        result = json.loads(found.group(1))
        self.check(result, servers)
        return result

    @defer.inlineCallbacks
    def node_call(self, transport: str) -> Any:
        """
        The same call from libwebrtc in Node (@roamhq/wrtc, which
        .ci/run installs from the npm registry into TXTURN_NODE_MODULES).
        """
        node = shutil.which("node")
        modules = os.environ.get("TXTURN_NODE_MODULES", "")
        if node is None or not os.path.isdir(os.path.join(modules, "@roamhq", "wrtc")):
            if os.environ.get("CI"):
                raise AssertionError("node and @roamhq/wrtc are missing: .ci/run installs them")
            raise SkipTest("node or @roamhq/wrtc not installed (set TXTURN_NODE_MODULES)")
        namespace = network_namespace(self)
        inside = ["ip", "netns", "exec", namespace]
        servers = yield self.servers(inside)
        script = os.path.join(HERE, "clients", "webrtc_relay.js")
        client = spawn(
            [*inside, node, script, f"turn:10.99.0.1:3478?transport={transport}", "test",
             "secret", "20"],
            self,
            env={"NODE_PATH": modules},
        )  # fmt: skip
        found = yield client.wait_for(rb"RESULT (\{[^\n]*\})", timeout=40)
        self.check(json.loads(found.group(1)), servers)

    def test_udp(self) -> Any:
        return self.call("udp")

    def test_tcp(self) -> Any:
        return self.call("tcp")

    def test_node_udp(self) -> Any:
        return self.node_call("udp")

    def test_node_tcp(self) -> Any:
        return self.node_call("tcp")
