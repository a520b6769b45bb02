"""
The sessions API (L{txturn.sessions}): what it says of a session, on the
core with a Clock; over HTTP on a real service, with its token; and
C{txturn-admin sessions|kill|drain} against an installed C{twistd turn}.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, cast

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.test_events import Recorder
from tests.test_interop import require, spawn, twistd_turn, uclient_args
from tests.test_redis import FleetBase, RedisProcess, free_tcp_port
from tests.test_server import PEER, REALM
from tests.test_service import REALM as SERVICE_REALM
from tests.test_service import free_udp_port, make_service
from txturn.auth.credentials import (
    CredentialChain,
    RestApiCredentials,
    StaticCredentials,
    rest_api_password,
)
from txturn.auth.policy import mint_credential
from txturn.core.events import AllocationDeleted
from txturn.sessions.backend import LocalSessions
from txturn.sessions.service import SessionsService
from txturn.sessions.view import BadCursor, Rates, describe, page
from txturn.testing import (
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    exchange,
    make_server,
)
from txturn.wire.stun import Attr, Class, Method
from txturn.workers.sessions import WorkerSessions

reactor: Any = _reactor
TOKEN = "a-sessions-token-0123456789"


class ViewTests(SynchronousTestCase):
    """
    Sessions as the API shows them, on the core with a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorder = Recorder()
        self.server = make_server(
            realm=REALM,
            clock=self.clock,
            credentials=CredentialChain(
                [StaticCredentials(REALM, {"alice": "a"}), RestApiCredentials("s")]
            ),
            observers=[self.recorder],
        )
        self.channel = RecordingClientChannel()

    def allocate(self, client: StunClient, port: int) -> None:
        address = ("198.51.100.7", port)
        answer = authenticated_request(
            self.server,
            self.channel,
            client,
            Method.ALLOCATE,
            [(Attr.REQUESTED_TRANSPORT, 17)],
            address,
        )
        self.assertEqual(answer.cls, Class.SUCCESS)

    def test_describe(self) -> None:
        """
        Who, from where, over what, relayed where, for how long, to which
        peers (permissions and channels), and the counters each way.
        """
        alice = StunClient("alice", "a")
        self.allocate(alice, 40000)
        address = ("198.51.100.7", 40000)
        authenticated_request(
            self.server,
            self.channel,
            alice,
            Method.CHANNEL_BIND,
            [(Attr.CHANNEL_NUMBER, 0x4001), (Attr.XOR_PEER_ADDRESS, PEER)],
            address,
        )
        self.clock.advance(30)
        [allocation] = self.server.allocations.values()
        allocation.to_peers_packets, allocation.to_peers_bytes = 3, 300
        seen = describe(allocation, self.clock.seconds(), REALM, {})
        self.assertEqual(seen["user"], "alice")
        self.assertEqual(seen["client"], "198.51.100.7:40000")
        self.assertEqual(seen["transport"], "udp")
        self.assertEqual(seen["server"], "192.0.2.1:3478")
        self.assertEqual(seen["age"], 30)
        self.assertEqual(seen["lifetime_left"], 570)
        self.assertEqual(seen["permissions"], ["203.0.113.5"])
        self.assertEqual(seen["channels"], {"0x4001": "203.0.113.5:5000"})
        self.assertEqual(seen["to_peers"]["packets"], 3)
        self.assertEqual(len(seen["relays"]), 1)
        json.dumps(seen)

    def test_select_and_page(self) -> None:
        """
        Filtered by user (the user part of REST names too) and by peer;
        paged by id, with the cursor of the next page.
        """
        self.allocate(StunClient("alice", "a"), 40000)
        for port, name in [(40001, "9999999999:bob"), (40002, "9999999999:bob:x")]:
            self.allocate(StunClient(name, rest_api_password("s", name)), port)
        tables = list(self.server.allocations.values())
        self.assertEqual(
            [a.username for a in page(tables, user="bob")[0]],
            ["9999999999:bob", "9999999999:bob:x"],
        )
        self.assertEqual(len(page(tables, user="alice")[0]), 1)
        self.assertEqual(page(tables, peer="203.0.113.5"), ([], None))
        first, following = page(tables, limit=2)
        self.assertEqual([a.id for a in first], [1, 2])
        self.assertEqual(following, 2)
        assert following is not None
        rest, last = page(tables, after=following, limit=2)
        self.assertEqual([a.id for a in rest], [3])
        self.assertIsNone(last)

    def test_rates(self) -> None:
        """
        Rates are the counters' change over the last sampling interval.
        """
        self.allocate(StunClient("alice", "a"), 40000)
        [allocation] = self.server.allocations.values()
        rates = Rates()
        rates.sample([allocation], 10.0)
        allocation.to_client_packets, allocation.to_client_bytes = 50, 5000
        rates.sample([allocation], 15.0)
        self.assertEqual(rates.rates[allocation.id], (0.0, 0.0, 10.0, 1000.0))
        rates.sample([], 20.0)
        self.assertEqual(rates.rates, {})

    def test_end(self) -> None:
        """
        Ending one session, or all of a user's (REST names by their user
        part), deletes them with the usage reason C{admin}.
        """
        self.allocate(StunClient("alice", "a"), 40000)
        name = "9999999999:bob"
        self.allocate(StunClient(name, rest_api_password("s", name)), 40001)
        self.allocate(StunClient(name, rest_api_password("s", name)), 40002)
        self.assertTrue(self.server.end_allocation(1))
        self.assertFalse(self.server.end_allocation(1))
        self.assertEqual(self.server.end_allocations_of("bob"), 2)
        self.assertEqual(len(self.server.allocations), 0)
        self.assertEqual([e.reason for e in self.recorder.of(AllocationDeleted)], ["admin"] * 3)


@defer.inlineCallbacks
def call(port: int, method: bytes, path: str, token: str | None = TOKEN) -> Any:
    headers = Headers({b"Authorization": [f"Bearer {token}".encode()]} if token else {})
    url = f"http://127.0.0.1:{port}{path}".encode()
    response = yield Agent(reactor).request(method, url, headers)
    body = yield readBody(response)
    return response.code, json.loads(body), response.headers


class HttpTests(TestCase):
    """
    The API on a real service on loopback, with a real UDP client.
    """

    def setUp(self) -> None:
        self.service = make_service(transports={"udp"})
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.drains: list[int] = []

        def drain() -> None:
            self.service.server.start_draining()
            self.drains.append(1)

        self.local = LocalSessions(reactor, self.service.server, drain)
        self.local.startService()
        self.addCleanup(self.local.stopService)
        self.sessions = SessionsService(reactor, self.local, ("127.0.0.1", 0), TOKEN.encode())
        self.sessions.startService()
        self.addCleanup(self.sessions.stopService)
        self.port = self.sessions.port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.sock.connect(("127.0.0.1", self.service.port_of("udp")))
        self.sock.setblocking(False)

    @defer.inlineCallbacks
    def allocate(self) -> Any:
        client = StunClient("alice", "secret")
        answers: list[bytes] = []

        def receive() -> bytes:
            return answers.pop(0)

        for _ in range(2):
            self.sock.send(client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
            for _ in range(100):
                try:
                    answers.append(self.sock.recv(2048))
                    break
                except BlockingIOError:
                    yield deferLater(0.01)
            response = client.learn(receive())
            if not client.challenged(response):
                break
        return response

    @defer.inlineCallbacks
    def test_token(self) -> Any:
        """
        No token or a wrong one: 401 with a Bearer challenge, nothing said
        about any session.
        """
        yield self.allocate()
        for token in (None, "wrong-token-wrong-token"):
            code, body, headers = yield call(self.port, b"GET", "/api/v1/sessions", token)
            self.assertEqual(code, 401)
            self.assertNotIn("sessions", body)
            self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="txturn"'])

    @defer.inlineCallbacks
    def test_list_and_end(self) -> Any:
        """
        A live allocation is listed; GET on C{end} changes nothing (405);
        POST ends it.
        """
        yield self.allocate()
        code, body, headers = yield call(self.port, b"GET", "/api/v1/sessions")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        [session] = body["sessions"]
        self.assertEqual((session["user"], session["transport"]), ("alice", "udp"))
        self.assertEqual(session["client"], f"127.0.0.1:{self.sock.getsockname()[1]}")
        path = f"/api/v1/sessions/{session['id']}"
        code, one, _ = yield call(self.port, b"GET", path)
        self.assertEqual(one["id"], session["id"])
        code, _, _ = yield call(self.port, b"GET", path + "/end")
        self.assertEqual(code, 405)
        self.assertEqual(len(self.service.server.allocations), 1)
        code, ended, _ = yield call(self.port, b"POST", path + "/end")
        self.assertEqual((code, ended), (200, {"ended": 1}))
        self.assertEqual(len(self.service.server.allocations), 0)
        code, _, _ = yield call(self.port, b"GET", path)
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_status(self) -> Any:
        """
        The status page's data: counts, users, the rate history, only with
        the token.
        """
        yield self.allocate()
        self.local.sample()
        code, body, _ = yield call(self.port, b"GET", "/api/v1/status", None)
        self.assertEqual(code, 401)
        code, body, _ = yield call(self.port, b"GET", "/api/v1/status")
        self.assertEqual(code, 200)
        self.assertEqual((body["allocations"], body["users"]), (1, 1))
        self.assertEqual(body["by_transport"], {"udp": 1})
        self.assertEqual(body["realm"], SERVICE_REALM)
        self.assertFalse(body["draining"])
        self.assertEqual(body["history"][-1]["allocations"], 1)

    @defer.inlineCallbacks
    def test_drain(self) -> Any:
        """
        POST drain starts one drain; a second says it already is.
        """
        code, body, _ = yield call(self.port, b"POST", "/api/v1/drain")
        self.assertEqual((code, body), (200, {"already": False, "draining": True}))
        code, body, _ = yield call(self.port, b"POST", "/api/v1/drain")
        self.assertEqual(body["already"], True)
        self.assertEqual(self.drains, [1])

    @defer.inlineCallbacks
    def test_openapi(self) -> Any:
        """
        The OpenAPI description the listener serves (without the token:
        it holds no data) is the packaged one, and every operation in it
        answers, with and without a session, what it describes: only the
        codes it lists, bodies that match its schemas, where no field is
        left undescribed.
        """
        spec = openapi()
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.port}/openapi.json".encode()
        )
        self.assertEqual(json.loads((yield readBody(response))), spec)
        yield self.allocate()
        self.local.sample()
        [session] = self.service.server.allocations.values()
        operations = [
            (path, method, operation)
            for path, methods in spec["paths"].items()
            for method, operation in methods.items()
        ]
        # Reads first, then the changes, the drain last.
        operations.sort(key=lambda o: (o[1] == "post", o[0].endswith("drain")))
        for path, method, operation in operations:
            for ref in (str(session.id), "999"):
                concrete = path.replace("{ref}", ref).replace("{name}", "alice")
                for token in (TOKEN, None):
                    code, body, _ = yield call(self.port, method.upper().encode(), concrete, token)
                    described = operation["responses"].get(str(code))
                    self.assertIsNotNone(described, f"{method} {concrete}: {code} undocumented")
                    check_schema(spec, described, body)
        code, _, _ = yield call(self.port, b"GET", "/api/v1/sessions?limit=x")
        self.assertEqual(code, 400)


def openapi() -> dict[str, Any]:
    import importlib.resources

    files = importlib.resources.files("txturn.sessions") / "static"
    spec: dict[str, Any] = json.loads(files.joinpath("openapi.json").read_text())
    return spec


def check_schema(spec: dict[str, Any], described: dict[str, Any], body: Any) -> None:
    """
    Check C{body} against a response of the OpenAPI description (a
    response, or a reference to one).
    """
    import jsonschema

    if "$ref" in described:
        described = spec["components"]["responses"][described["$ref"].rsplit("/", 1)[1]]
    schema = described["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": spec["components"]})


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


def token_in_environment(test: Any) -> None:
    """
    The API's token in TXTURN_ADMIN_TOKEN for the servers C{test}
    starts, until it ends.
    """
    os.environ["TXTURN_ADMIN_TOKEN"] = TOKEN
    test.addCleanup(os.environ.pop, "TXTURN_ADMIN_TOKEN", None)


def admin(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txturn.tools.admin", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TXTURN_ADMIN_TOKEN": token},
    )


class CommandLineTests(TestCase):
    """
    C{twistd turn --admin-port} with its token from the environment, and
    C{txturn-admin sessions|kill} against it, as an operator would.
    """

    @defer.inlineCallbacks
    def test_sessions_and_kill(self) -> Any:
        port, admin_port = free_udp_port(), free_tcp_port()
        token_in_environment(self)
        watcher = spawn(
            twistd_turn(
                port, "--user", "alice:secret", "--no-tls", "--admin-port", str(admin_port)
            ),
            self,
        )
        yield watcher.wait_for(rb"Sessions API on http://127\.0\.0\.1:\d+/api/v1/sessions")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        client = StunClient("alice", "secret")
        answer = exchange(
            client,
            Method.ALLOCATE,
            [(Attr.REQUESTED_TRANSPORT, 17)],
            sock.send,
            lambda: sock.recv(2048),
        )
        self.assertIsNotNone(answer.get(Attr.XOR_RELAYED_ADDRESS))
        url = f"http://127.0.0.1:{admin_port}"
        listed = admin("--admin-url", url, "sessions")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        header, row = listed.stdout.splitlines()
        self.assertTrue(header.startswith("ID  USER"))
        self.assertIn(f"alice  127.0.0.1:{sock.getsockname()[1]}  udp", row)
        refused = admin("--admin-url", url, "sessions", token="not-the-token-at-all")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("answered 401: wrong token", refused.stderr)
        killed = admin("--admin-url", url, "kill", "--user", "alice")
        self.assertEqual(killed.stdout, "ended 1\n")
        self.assertEqual(admin("--admin-url", url, "sessions").stdout.count("\n"), 1)
        yield watcher.wait_for(rb"deleted \(admin\)")
        yield watcher.wait_for(rb"Sessions API refused 127\.0\.0\.1:\d+: wrong token")

    @defer.inlineCallbacks
    def test_workers(self) -> Any:
        """
        Under C{--workers 2} the supervisor's API covers both workers:
        every session listed once, in id order, paged across them; one
        ended by id, the rest by user; the status counts both workers.
        """
        port, admin_port = free_udp_port(), free_tcp_port()
        token_in_environment(self)
        watcher = spawn(
            twistd_turn(
                port,
                "--user",
                "alice:secret",
                "--no-tls",
                "--workers",
                "2",
                "--admin-port",
                str(admin_port),
            ),
            self,
        )
        yield watcher.wait_for(rb"Sessions API on http://127\.0\.0\.1:\d+/api/v1/sessions")
        yield watcher.wait_for(rb"Worker 1 started", timeout=30)
        clients = []
        for _ in range(8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            answer = yield threads.deferToThread(
                exchange,
                StunClient("alice", "secret"),
                Method.ALLOCATE,
                [(Attr.REQUESTED_TRANSPORT, 17)],
                sock.send,
                lambda sock=sock: sock.recv(2048),  # type: ignore[misc]
            )
            self.assertEqual(answer.cls, Class.SUCCESS)
            clients.append(sock.getsockname()[1])
        url = f"http://127.0.0.1:{admin_port}"
        listed = yield threads.deferToThread(admin, "--admin-url", url, "sessions", "--json")
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        self.assertEqual(sorted(int(r["client"].rsplit(":", 1)[1]) for r in rows), sorted(clients))
        self.assertEqual([r["id"] for r in rows], sorted(r["id"] for r in rows))
        self.assertEqual({r["worker"] for r in rows}, {0, 1})
        code, body, _ = yield call(admin_port, b"GET", "/api/v1/sessions?limit=3")
        self.assertEqual([s["id"] for s in body["sessions"]], [r["id"] for r in rows[:3]])
        self.assertEqual((body["next"], body["total"]), (rows[2]["id"], 8))
        killed = yield threads.deferToThread(admin, "--admin-url", url, "kill", str(rows[5]["id"]))
        self.assertEqual(killed.stdout, "ended 1\n")
        code, status, _ = yield call(admin_port, b"GET", "/api/v1/status")
        self.assertEqual((status["workers"], status["allocations"]), (2, 7))
        killed = yield threads.deferToThread(admin, "--admin-url", url, "kill", "--user", "alice")
        self.assertEqual(killed.stdout, "ended 7\n")

    def test_token_required(self) -> None:
        """
        C{--admin-port} without a token, or with a short one: one line,
        no start.
        """
        env = {k: v for k, v in os.environ.items() if k != "TXTURN_ADMIN_TOKEN"}
        for extra, said in [
            ({}, "--admin-port needs a token: --admin-token-file FILE or TXTURN_ADMIN_TOKEN"),
            (
                {"TXTURN_ADMIN_TOKEN": "short"},
                "the sessions API token must be at least 16 characters",
            ),
        ]:
            done = subprocess.run(
                twistd_turn(free_udp_port(), "--admin-port", "0"),
                capture_output=True,
                text=True,
                env={**env, **extra},
                timeout=60,
            )
            self.assertNotEqual(done.returncode, 0)
            self.assertIn(f"twistd turn: {said}", done.stderr + done.stdout)
            self.assertNotIn("Traceback", done.stderr + done.stdout)


class FleetTests(FleetBase):
    """
    Two installed servers sharing a real C{redis-server}: A in one
    process, B under C{--workers 2} (its supervisor answers for its
    workers).  Either API lists, filters, pages and ends the sessions of
    both while C{turnutils_uclient} relays through B.
    """

    def setUp(self) -> Any:
        token_in_environment(self)
        self.redis = RedisProcess(self)
        return self.redis.start()

    def usage(self) -> list[dict[str, str]]:
        entries = self.redis.command("XRANGE", "txturn:usage", "-", "+")
        return [dict(zip(fields[::2], fields[1::2], strict=True)) for _, fields in entries]

    @defer.inlineCallbacks
    def test_fleet(self) -> Any:
        api_a, api_b = free_tcp_port(), free_tcp_port()
        both = ("--usage-stream", "txturn:usage", "--user-quota", "10")
        port_a, _ = yield self.server(*both, "--admin-port", str(api_a))
        port_b, watcher_b = yield self.server(*both, "--admin-port", str(api_b), "--workers", "2")
        yield watcher_b.wait_for(rb"Worker 1 started", timeout=30)
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        # 600 messages 20 ms apart: relaying for the whole test.
        spawn([require("turnutils_uclient"), *uclient_args(port_b, peer_port, 600, 1)], self)
        _, ours = yield self.allocate(port_a)
        self.assertEqual(self.code(ours), 0)
        bob, password = mint_credential(self.secret, "bob", int(time.time()) + 3600)
        refresh, answer = yield self.allocate(port_b, bob, password)
        self.assertEqual(self.code(answer), 0)

        @defer.inlineCallbacks
        def listed(api: int, query: str = "") -> Any:
            code, body, _ = yield call(api, b"GET", "/api/v1/sessions" + query)
            self.assertEqual(code, 200, body)
            return body

        # uclient's allocations (RTP and RTCP) relaying through B.
        deadline = time.monotonic() + 15
        while True:
            page = yield listed(api_a, "?user=test")
            # Those with a permission; uclient holds one more for its
            # EVEN-PORT reservation's pair.
            theirs = [s for s in page["sessions"] if s["permissions"]]
            if len(theirs) >= 2 and all(s["to_peers"]["packets"] for s in theirs):
                break
            self.assertLess(time.monotonic(), deadline, page)
            yield deferLater(0.2)
        tests = len(page["sessions"])
        nodes = {s["node"] for s in page["sessions"]}
        self.assertEqual(len(nodes), 2)
        self.assertEqual(page["total"], tests + 1)
        for session in page["sessions"]:
            self.assertEqual(session["ref"], f"{session['node']}-{session['id']}")
        # The same fleet from B, in the same (node, id) order.
        from_b = yield listed(api_b, "?user=test")
        self.assertEqual(
            [s["ref"] for s in from_b["sessions"]], [s["ref"] for s in page["sessions"]]
        )
        # Filters: the user part of a REST name; a peer.
        page = yield listed(api_b, "?user=bob")
        [bob_session] = page["sessions"]
        self.assertEqual(bob_session["user"], bob)
        page = yield listed(api_a, "?peer=127.0.0.1")
        self.assertEqual({s["ref"] for s in page["sessions"]}, {s["ref"] for s in theirs})
        # Pages of one across both servers, by ref.
        refs: list[str] = []
        after: str | None = "0"
        while after is not None:
            page = yield listed(api_a, f"?limit=1&after={after}")
            refs += [s["ref"] for s in page["sessions"]]
            after = page["next"]
        self.assertEqual(len(refs), tests + 1)
        self.assertEqual(len(set(refs)), tests + 1)
        # The status has a line for each server.
        code, status, _ = yield call(api_a, b"GET", "/api/v1/status")
        self.assertEqual(len(status["nodes"]), 2)
        self.assertEqual(status["fleet_allocations"], tests + 1)
        self.assertIn("2 workers", " ".join(n["name"] for n in status["nodes"]))
        # bob's session on B ended through A's API, by the command line.
        url_a = f"http://127.0.0.1:{api_a}"
        killed = yield threads.deferToThread(
            admin, "--admin-url", url_a, "kill", bob_session["ref"]
        )
        self.assertEqual(killed.stdout, "ended 1\n", killed.stderr)
        answer = yield threads.deferToThread(refresh, Method.REFRESH, [(Attr.LIFETIME, 600)])
        self.assertEqual(self.code(answer), 437)
        yield self.wait_until(lambda: any(r["user"] == bob for r in self.usage()))
        [record] = [r for r in self.usage() if r["user"] == bob]
        self.assertEqual(record["reason"], "admin")
        # Every session of test, on both servers, through B's API.
        url_b = f"http://127.0.0.1:{api_b}"
        killed = yield threads.deferToThread(admin, "--admin-url", url_b, "kill", "--user", "test")
        self.assertEqual(killed.stdout, f"ended {tests}\n", killed.stderr)
        listed_now = yield threads.deferToThread(admin, "--admin-url", url_a, "sessions")
        self.assertEqual(listed_now.stdout.count("\n"), 1, listed_now.stdout)
        yield self.wait_until(lambda: len(self.usage()) >= tests + 1)
        self.assertEqual({r["reason"] for r in self.usage()}, {"admin"})


class StatusPageTests(TestCase):
    """
    The live status page in headless Chromium, against an installed
    C{twistd turn} holding allocations of users whose names are markup:
    the names are shown as text, no script of theirs runs, and the page
    renders on a phone-sized screen.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_page(self) -> Any:
        from tests.test_browser import CHROMIUM_FLAGS, find_chromium

        chromium = find_chromium()
        port, admin_port = free_udp_port(), free_tcp_port()
        hostile = [
            ("<script>document.title='pwned'</script>", "pw1"),
            ('"><img src=x onerror="document.title=\'pwned\'">', "pw2"),
        ]
        users = [("alice", "secret"), *hostile]
        token_in_environment(self)
        watcher = spawn(
            twistd_turn(
                port,
                "--no-tls",
                "--admin-port",
                str(admin_port),
                *[arg for name, password in users for arg in ("--user", f"{name}:{password}")],
            ),
            self,
        )
        yield watcher.wait_for(rb"status page at /status")
        for name, password in users:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            answer = exchange(
                StunClient(name, password),
                Method.ALLOCATE,
                [(Attr.REQUESTED_TRANSPORT, 17)],
                sock.send,
                lambda sock=sock: sock.recv(2048),  # type: ignore[misc]
            )
            self.assertEqual(answer.cls, Class.SUCCESS, name)
        directory = self.mktemp()
        os.makedirs(directory)
        url = f"http://127.0.0.1:{admin_port}/status#token={TOKEN}"
        common = [
            *CHROMIUM_FLAGS,
            "--virtual-time-budget=5000",
            f"--user-data-dir={os.path.join(directory, 'profile')}",
        ]
        out, err, code = yield getProcessOutputAndValue(
            chromium, [*common, "--dump-dom", url], env=os.environ.copy()
        )
        dom = out.decode()
        self.assertIn("<title>txturn status</title>", dom, err[-2000:])
        self.assertIn("<td>alice</td>", dom)
        self.assertIn("<td>&lt;script&gt;document.title='pwned'&lt;/script&gt;</td>", dom)
        self.assertIn('<td>"&gt;&lt;img src=x onerror="document.title=\'pwned\'"&gt;</td>', dom)
        self.assertNotIn("<img", dom)
        self.assertIn('<span id="allocations" class="value">3</span>', dom)
        shot = os.path.join(directory, "status.png")
        yield getProcessOutputAndValue(
            chromium,
            [*common, "--window-size=390,844", f"--screenshot={shot}", url],
            env=os.environ.copy(),
        )
        with open(shot, "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(png), 10_000)
        # What the page was served with: no inline script could run.
        headers = yield page_headers(admin_port)
        self.assertIn(b"script-src 'self'", headers[b"content-security-policy"])
        self.assertNotIn(b"unsafe-inline", headers[b"content-security-policy"])


@defer.inlineCallbacks
def page_headers(port: int) -> Any:
    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/status".encode())
    yield readBody(response)
    return {name.lower(): values[0] for name, values in response.headers.getAllRawHeaders()}


def allocate_three(test: SynchronousTestCase, core: Any, first_port: int) -> None:
    """
    Three of alice's allocations on C{core}, from ports C{first_port} on.
    """
    for port in range(first_port, first_port + 3):
        answer = authenticated_request(
            core,
            RecordingClientChannel(),
            StunClient("alice", "a"),
            Method.ALLOCATE,
            [(Attr.REQUESTED_TRANSPORT, 17)],
            ("198.51.100.7", port),
        )
        test.assertEqual(answer.cls, Class.SUCCESS)


class _Control:
    """
    A worker's control connection, answering from its L{LocalSessions}
    (or failing, as a worker that is restarting does).
    """

    transport = object()

    def __init__(self, local: LocalSessions | None) -> None:
        self.local = local

    def callRemote(self, command: Any, action: str, arguments: str) -> Any:
        if self.local is None:
            return defer.fail(ConnectionError("worker restarting"))
        result = getattr(self.local, action)(**json.loads(arguments))
        return defer.succeed({"result": json.dumps(result)})


class _Worker:
    def __init__(self, control: _Control) -> None:
        self.control = control


class _Supervisor:
    def __init__(self, workers: dict[int, _Worker]) -> None:
        self.workers = workers
        self.count = len(workers)
        self.draining = False
        self.drained = 0

    def drain(self) -> None:
        self.draining = True
        self.drained += 1


class WorkerSessionsTests(SynchronousTestCase):
    """
    The supervisor's view (L{WorkerSessions}) of two workers' real cores:
    pages merged by id, a session's id routed to its worker, statuses
    summed, and a worker that does not answer left out, not fatal.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.cores = [
            make_server({"alice": "a"}, realm=REALM, clock=self.clock, worker=(i, 2))
            for i in range(2)
        ]
        self.locals = [
            LocalSessions(self.clock, core, lambda: None, worker=i)
            for i, core in enumerate(self.cores)
        ]
        self.supervisor = _Supervisor(
            {i: _Worker(_Control(local)) for i, local in enumerate(self.locals)}
        )
        self.sessions = WorkerSessions(self.clock, self.supervisor)
        for i, core in enumerate(self.cores):
            allocate_three(self, core, 40000 + 10 * i)

    def result(self, d: Any) -> Any:
        return self.successResultOf(defer.maybeDeferred(lambda: d))

    def test_pages(self) -> None:
        first = self.result(self.sessions.page(None, None, 0, 4))
        self.assertEqual([s["id"] for s in first["sessions"]], [1, 2, 3, 4])
        self.assertEqual([s["worker"] for s in first["sessions"]], [0, 1, 0, 1])
        self.assertEqual((first["next"], first["total"]), (4, 6))
        rest = self.result(self.sessions.page(None, None, 4, 4))
        self.assertEqual(([s["id"] for s in rest["sessions"]], rest["next"]), ([5, 6], None))

    def test_end_and_status(self) -> None:
        self.assertEqual(self.result(self.sessions.end(4)), 1)
        self.assertEqual(len(self.cores[1].allocations), 2)
        self.assertEqual(self.result(self.sessions.end(4)), 0)
        status = self.result(self.sessions.status())
        self.assertEqual((status["workers"], status["allocations"]), (2, 5))
        # alice holds allocations on both workers: one user.
        self.assertEqual(status["users"], 1)
        # A worker whose list is too long to send: the sum, an upper bound.
        self.patch(self.locals[0], "user_names", lambda: None)
        self.assertEqual(self.result(self.sessions.status())["users"], 2)
        self.assertEqual(self.result(self.sessions.end_user("alice")), 5)
        self.assertEqual(self.sessions.drain(), {"draining": True, "already": False})
        self.assertEqual(self.sessions.drain(), {"draining": True, "already": True})
        self.assertEqual(self.supervisor.drained, 1)

    def test_worker_not_answering(self) -> None:
        self.supervisor.workers[1].control.local = None
        page = self.result(self.sessions.page(None, None, 0, 10))
        self.assertEqual([s["id"] for s in page["sessions"]], [1, 3, 5])
        status = self.result(self.sessions.status())
        self.assertEqual((status["workers"], status["allocations"]), (1, 3))
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class _Hub:
    """
    Redis's publish/subscribe as the fleet sessions use it, in memory:
    PUBLISH delivers at once and answers how many listened.  A node can
    be deaf (counted as a listener, never answering), and Redis can be
    away.
    """

    def __init__(self) -> None:
        self.handlers: list[dict[str, Any]] = []
        self.up = True
        self.deaf = 0

    def subscribe(
        self, reactor: Any, link: Any, handlers: dict[str, Any], subscribed: Any = None
    ) -> Any:
        self.handlers.append(handlers)
        if subscribed is not None:
            subscribed()
        hub = self

        class Subscriber:
            def disconnect(self) -> None:
                hub.handlers.remove(handlers)

        return Subscriber()

    def call(self, command: str, channel: str, message: str) -> Any:
        assert command == "PUBLISH"
        if not self.up:
            return defer.fail(ConnectionError("Redis away"))
        listening = [h[channel] for h in self.handlers if channel in h]
        for handler in listening:
            handler(message.encode())
        return defer.succeed(len(listening) + (self.deaf if channel.endswith("sessions") else 0))


class FleetSessionsTests(SynchronousTestCase):
    """
    L{FleetSessions} of two nodes on real cores, through an in-memory
    Redis: pages in (node, id) order across nodes with refs as cursors,
    a ref routed to its node, counts summed, a node that does not answer
    left out after L{ANSWER_TIMEOUT} and counted, Redis away: this node
    alone.
    """

    def setUp(self) -> None:
        from txturn.sessions import fleet

        self.fleet = fleet
        self.clock = Clock()
        self.hub = _Hub()
        self.patch(fleet, "subscribe", self.hub.subscribe)
        self.cores = [make_server({"alice": "a"}, realm=REALM, clock=self.clock) for _ in "ab"]
        self.nodes: list[Any] = []
        for name, core in zip("ab", self.cores, strict=True):
            local = LocalSessions(self.clock, core, lambda: None)
            node = fleet.FleetSessions(
                self.clock, cast(Any, self.hub), local, name * 4, f"server {name}"
            )
            node.startService()
            self.addCleanup(node.stopService)
            self.nodes.append(node)
            allocate_three(self, core, 40000)

    def result(self, d: Any) -> Any:
        return self.successResultOf(defer.maybeDeferred(lambda: d))

    def test_pages(self) -> None:
        b = self.nodes[1]
        first = self.result(b.page(None, None, 0, 4))
        refs = [s["ref"] for s in first["sessions"]]
        self.assertEqual(refs, ["aaaa-1", "aaaa-2", "aaaa-3", "bbbb-1"])
        self.assertEqual((first["next"], first["total"]), ("bbbb-1", 6))
        rest = self.result(b.page(None, None, first["next"], 4))
        self.assertEqual([s["ref"] for s in rest["sessions"]], ["bbbb-2", "bbbb-3"])
        self.assertIsNone(rest["next"])
        middle = self.result(b.page(None, None, "aaaa-2", 2))
        self.assertEqual([s["ref"] for s in middle["sessions"]], ["aaaa-3", "bbbb-1"])
        self.assertEqual(self.result(b.page("bob", None, 0, 10))["sessions"], [])
        failure = self.failureResultOf(defer.maybeDeferred(b.page, None, None, "aaaa-x", 2))
        failure.trap(BadCursor)
        spec = openapi()
        for body in (first, rest):
            check_schema(spec, spec["paths"]["/api/v1/sessions"]["get"]["responses"]["200"], body)

    def test_refs(self) -> None:
        a, b = self.nodes
        self.assertEqual(self.result(a.one("bbbb-2"))["ref"], "bbbb-2")
        self.assertEqual(self.result(a.one("2"))["ref"], "aaaa-2")
        self.assertEqual(self.result(a.end("bbbb-2")), 1)
        self.assertEqual(len(self.cores[1].allocations), 2)
        self.assertEqual(self.result(a.end("bbbb-2")), 0)
        self.assertIsNone(self.result(a.one("bbbb-2")))
        self.assertEqual(self.result(b.end_user("alice")), 5)
        status = self.result(a.status())
        self.assertEqual([n["node"] for n in status["nodes"]], ["aaaa", "bbbb"])
        self.assertEqual(status["fleet"], "Redis, 2 servers")
        self.assertEqual(status["fleet_allocations"], 0)
        spec = openapi()
        check_schema(spec, spec["paths"]["/api/v1/status"]["get"]["responses"]["200"], status)

    def test_silent_node(self) -> None:
        """
        A node that heard the question and does not answer holds the
        answer back L{ANSWER_TIMEOUT} at most, and is counted; a question
        for a node that is gone gets no answer, and no warning.
        """
        self.hub.deaf = 1
        asked = self.nodes[0].page(None, None, 0, 10)
        self.assertNoResult(asked)
        self.clock.advance(self.fleet.ANSWER_TIMEOUT)
        page = self.result(asked)
        self.assertEqual((len(page["sessions"]), page["unanswered"]), (6, 1))
        gone = self.nodes[0].one("cccc-1")
        self.clock.advance(self.fleet.ANSWER_TIMEOUT)
        self.assertIsNone(self.result(gone))

    def test_redis_away(self) -> None:
        self.hub.up = False
        page = self.result(self.nodes[0].page(None, None, 0, 10))
        self.assertEqual([s["ref"] for s in page["sessions"]], ["aaaa-1", "aaaa-2", "aaaa-3"])

    def test_malformed(self) -> None:
        """
        What is not a question or an answer, or asks for what peers may
        not do (a drain), is logged and ignored.
        """
        from twisted.logger import capturedLogs

        with capturedLogs() as events:
            handlers = self.hub.handlers[0]
            handlers[self.fleet.ASKS](b"not json")
            handlers[self.fleet.ASKS](
                json.dumps({"from": "bbbb", "ask": 1, "action": "drain", "arguments": {}})
            )
            handlers[self.fleet.REPLIES + "aaaa"](b"{}")
        self.assertEqual(len(events), 3)
        self.assertFalse(self.cores[0].draining)
