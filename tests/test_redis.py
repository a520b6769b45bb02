"""
A fleet sharing one real C{redis-server}, started by each test on a
loopback port: two C{twistd turn} processes hold one per-user quota, a
killed server's allocations stop counting within C{--redis-ttl}, a
revocation from C{txturn-admin} reaches both within a second and deletes
the allocations, both keep serving while Redis is down and rejoin when
it is back; users kept in Redis relay real clients, and usage records
reach a Redis stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.protocols import portforward
from twisted.trial.unittest import SkipTest, TestCase

from tests.test_interop import (
    OutputWatcher,
    UdpDrops,
    assert_relayed,
    require,
    run_aioice,
    spawn,
    twistd_turn,
    uclient_args,
    udp_requester,
)
from tests.test_metrics import value
from tests.test_service import free_udp_port
from txturn.app.options import REDIS_VARIABLE, Options
from txturn.app.startup import warn_weakening
from txturn.auth.policy import mint_credential
from txturn.fleet.address import parse_redis_url
from txturn.testing import StunClient, self_signed_certificate
from txturn.wire.stun import Attr, Class, Message, Method

reactor: Any = _reactor

Requester = Callable[[int, list[tuple[int, Any]]], Message]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError("redis-server is missing: .ci/run must install it")
        raise SkipTest("redis-server not installed (apt-get install redis-server)")
    return path


class RedisProcess:
    """
    A C{redis-server} on 127.0.0.1 that keeps nothing on disk, stopped
    when the test ends.
    """

    def __init__(self, test: TestCase, certificate: tuple[str, str] | None = None) -> None:
        self.test = test
        self.port = free_tcp_port()
        self.certificate = certificate
        if certificate is None:
            self.url = f"redis://127.0.0.1:{self.port}"
        else:
            self.url = f"rediss://localhost:{self.port}/0?ssl_ca_certs={certificate[0]}"
        self.watcher: OutputWatcher | None = None

    def start(self) -> defer.Deferred[Any]:
        if self.certificate is None:
            ports = ["--port", str(self.port)]
        else:
            cert, key = self.certificate
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-auth-clients", "no"]  # fmt: skip
        argv = [
            redis_binary(),
            *ports,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
        self.watcher = spawn(argv, self.test)
        return self.watcher.wait_for(rb"Ready to accept connections")

    def stop(self) -> defer.Deferred[None]:
        assert self.watcher is not None and self.watcher.transport is not None
        self.watcher.transport.signalProcess("KILL")
        return self.watcher.ended

    def command(self, *args: str) -> Any:
        """
        One command, by a blocking client (call in a thread).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(
                f"*{len(args)}\r\n".encode()
                + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
            )
            reader = s.makefile("rb")
            return _reply(reader)


def _reply(reader: Any) -> Any:
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = reader.read(int(rest) + 2)[:-2]
        return data.decode()
    if kind == b"*":
        return [_reply(reader) for _ in range(max(int(rest), 0))]
    raise AssertionError(f"unexpected reply {line!r}")


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txturn.tools.admin", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TXTURN_PASSWORD": "from-the-environment"},
    )


class FleetBase(TestCase):
    """
    Servers sharing the Redis of C{self.redis}.
    """

    redis: RedisProcess
    secret = "fleet-secret"

    @defer.inlineCallbacks
    def server(self, *extra: str) -> Any:
        port = free_udp_port()
        watcher = spawn(
            twistd_turn(
                port,
                "--user",
                "test:secret",
                "--static-auth-secret",
                self.secret,
                "--user-quota",
                "3",
                "--redis",
                self.redis.url,
                "--redis-ttl",
                "2",
                "--relay-ip",
                "127.0.0.1",
                "--allow-loopback-peers",
                "--no-tcp",
                *extra,
            ),
            self,
        )
        yield watcher.wait_for(rb"TURN listening on UDP")
        # The first heartbeat: this server counts in the fleet.
        yield self.wait_until(lambda: self.servers_alive() >= 1)
        return port, watcher

    def servers_alive(self) -> int:
        return len(self.redis.command("KEYS", "txturn:server:*"))

    @defer.inlineCallbacks
    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> Any:
        """
        Poll C{condition} (in a thread: it may ask Redis) until true; the
        servers are other processes, so this is real time.
        """
        deadline = time.monotonic() + timeout
        while not (yield threads.deferToThread(condition)):
            if time.monotonic() > deadline:
                self.fail("condition not met in time")
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def allocate(self, port: int, user: str = "test", password: str = "secret") -> Any:
        _, request = udp_requester(self, port, user, password)
        response = yield threads.deferToThread(
            request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
        )
        return request, response

    def code(self, response: Message) -> int:
        return 0 if response.cls == Class.SUCCESS else response.get(Attr.ERROR_CODE)[0]


class FleetTests(FleetBase):
    """
    Two servers, A and B, sharing one Redis.
    """

    def setUp(self) -> Any:
        self.redis = RedisProcess(self)
        return self.redis.start()

    @defer.inlineCallbacks
    def test_quota_across_servers(self) -> Any:
        """
        Quota 3: two allocations on A and one on B, then 486 on both; A
        killed (SIGKILL: no goodbye), its two stop counting within
        --redis-ttl and B can have them.
        """
        port_a, watcher_a = yield self.server()
        port_b, _ = yield self.server()
        codes = []
        for port in (port_a, port_a, port_b, port_a, port_b):
            _, response = yield self.allocate(port)
            codes.append(self.code(response))
        self.assertEqual(codes, [0, 0, 0, 486, 486])
        shown = yield threads.deferToThread(admin, "--redis", self.redis.url, "allocations", "test")
        lines = shown.stdout.splitlines()
        self.assertEqual(sorted(line.split("\t")[1] for line in lines[:-1]), ["1", "2"])
        self.assertEqual(lines[-1], "total\t3")
        # Each server by its id and its host and process.
        for line in lines[:-1]:
            self.assertRegex(line, rf"^\w+ \({re.escape(socket.gethostname())} pid \d+\)\t")
        assert watcher_a.transport is not None
        watcher_a.transport.signalProcess("KILL")
        killed = time.monotonic()
        yield watcher_a.ended
        waited: list[float] = []
        for _ in range(2):
            while True:
                _, response = yield self.allocate(port_b)
                if self.code(response) == 0:
                    break
                self.assertEqual(self.code(response), 486)
                self.assertLess(time.monotonic() - killed, 10, "A's allocations still count")
                yield deferLater(reactor, 0.2, lambda: None)
            waited.append(time.monotonic() - killed)
        # Within the TTL (2 s), a heartbeat's slack and a busy machine's.
        self.assertLess(max(waited), 2.0 + 3)
        _, response = yield self.allocate(port_b)
        self.assertEqual(self.code(response), 486)

    @defer.inlineCallbacks
    def test_revocation(self) -> Any:
        """
        C{txturn-admin revoke}: within a second both servers delete the
        user's allocations, and refuse the credential; a REST credential
        revoked alone leaves its user's other credentials working.
        """
        port_a, watcher_a = yield self.server()
        port_b, watcher_b = yield self.server()
        request_a, response = yield self.allocate(port_a)
        self.assertEqual(self.code(response), 0)
        request_b, response = yield self.allocate(port_b)
        self.assertEqual(self.code(response), 0)
        revoked = yield threads.deferToThread(admin, "--redis", self.redis.url, "revoke", "test")
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        # Pushed (pub/sub: nothing polls Redis for revocations), so any
        # arrival proves the push; the deadline is generous for a busy
        # machine.
        for watcher in (watcher_a, watcher_b):
            yield watcher.wait_for(rb"Revoked test: 1 allocations deleted", timeout=10)
            yield watcher.wait_for(rb"Allocation \d+ of test from \S+ deleted \(revoked\)")
        for request in (request_a, request_b):
            refused = yield threads.deferToThread(request, Method.REFRESH, [(Attr.LIFETIME, 600)])
            self.assertEqual(self.code(refused), 401)
        listed = yield threads.deferToThread(admin, "--redis", self.redis.url, "revoked")
        self.assertEqual(listed.stdout, "test\tforever\n")

        first, first_password = mint_credential(self.secret, "rest", int(time.time()) + 600)
        second, second_password = mint_credential(self.secret, "rest", int(time.time()) + 601)
        yield threads.deferToThread(admin, "--redis", self.redis.url, "revoke", first)
        yield watcher_b.wait_for(b"Revoked " + first.encode(), timeout=10)
        _, response = yield self.allocate(port_b, first, first_password)
        self.assertEqual(self.code(response), 401)
        _, response = yield self.allocate(port_b, second, second_password)
        self.assertEqual(self.code(response), 0)
        # The user of REST names is found under each whole name.
        shown = yield threads.deferToThread(admin, "--redis", self.redis.url, "allocations", "rest")
        self.assertEqual(shown.stdout.splitlines()[-1], "total\t1")
        lifted = yield threads.deferToThread(admin, "--redis", self.redis.url, "unrevoke", "test")
        self.assertEqual(lifted.returncode, 0)
        yield watcher_a.wait_for(rb"Revocation of test lifted", timeout=10)
        _, response = yield self.allocate(port_a)
        self.assertEqual(self.code(response), 0)

    @defer.inlineCallbacks
    def test_realms_apart(self) -> Any:
        """
        User bob of realm C{r:eu} and user C{eu:bob} of realm C{r} have
        different keys (a realm's C{:} is escaped), so neither logs in as
        the other; listing gives the realm back as it was.
        """
        for realm in ("r:eu", "r"):
            name = "bob" if realm == "r:eu" else "eu:bob"
            added = yield threads.deferToThread(
                admin, "--redis", self.redis.url, "--realm", realm, "add", name
            )
            self.assertEqual(added.returncode, 0, added.stderr)
        keys = yield threads.deferToThread(self.redis.command, "KEYS", "txturn:user:*")
        self.assertEqual(sorted(keys), ["txturn:user:r%3Aeu:bob", "txturn:user:r:eu:bob"])
        listed = yield threads.deferToThread(admin, "--redis", self.redis.url, "list")
        self.assertEqual(listed.stdout, "eu:bob\tr\nbob\tr:eu\n")
        only = yield threads.deferToThread(
            admin, "--redis", self.redis.url, "--realm", "r:eu", "list"
        )
        self.assertEqual(only.stdout, "bob\tr:eu\n")

    @defer.inlineCallbacks
    def test_redis_down(self) -> Any:
        """
        Redis killed: both servers keep allocating (each to the quota on
        its own), say so once; Redis back: they say so, write their
        counts again, and the quota is the fleet's again.
        """
        metrics_port = free_tcp_port()
        port_a, watcher_a = yield self.server(
            "--prometheus",
            "--prometheus-address",
            "127.0.0.1",
            "--prometheus-port",
            str(metrics_port),
        )
        port_b, watcher_b = yield self.server()

        def connected() -> float:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as page:
                return value(page.read().decode(), "turn_fleet_connected")

        def readiness() -> tuple[int, str]:
            url = f"http://127.0.0.1:{metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=5) as page:
                return page.status, page.read().decode()

        self.assertEqual((yield threads.deferToThread(connected)), 1)
        self.assertEqual((yield threads.deferToThread(readiness)), (200, "ready\n"))
        _, response = yield self.allocate(port_a)
        self.assertEqual(self.code(response), 0)
        yield self.redis.stop()
        codes = []
        for port in (port_a, port_a, port_b, port_b):
            _, response = yield self.allocate(port)
            codes.append(self.code(response))
        self.assertEqual(codes, [0, 0, 0, 0])
        for watcher in (watcher_a, watcher_b):
            yield watcher.wait_for(rb"Redis at redis://127.0.0.1:\d+/0 unreachable")
        self.assertEqual((yield threads.deferToThread(connected)), 0)
        # Degraded by design, not unready: the server still allocates.
        status, body = yield threads.deferToThread(readiness)
        self.assertEqual(status, 200)
        self.assertRegex(
            body,
            r"^ready, degraded: Redis at redis://127\.0\.0\.1:\d+/0 unreachable: "
            r"quotas per server, keys from the cache\n$",
        )
        yield self.redis.start()
        for watcher in (watcher_a, watcher_b):
            yield watcher.wait_for(rb"Redis at redis://127.0.0.1:\d+/0 reachable again")
            self.assertEqual(watcher.output.count(b"unreachable"), 1)

        def counts() -> list[int]:
            flat = self.redis.command("HGETALL", "txturn:quota:test")
            return sorted(int(n) for n in flat[1::2])

        yield self.wait_until(lambda: counts() == [2, 3])
        self.assertEqual((yield threads.deferToThread(connected)), 1)
        self.assertEqual((yield threads.deferToThread(readiness)), (200, "ready\n"))
        _, response = yield self.allocate(port_b)
        self.assertEqual(self.code(response), 486)

    @defer.inlineCallbacks
    def test_users_and_usage_stream(self) -> Any:
        """
        A user added to Redis with txturn-admin relays turnutils_uclient
        and aioice; the usage records of both reach the Redis stream.
        """
        uclient = require("turnutils_uclient")
        added = yield threads.deferToThread(admin, "--redis", self.redis.url, "add", "carol")
        self.assertEqual(added.returncode, 0, added.stderr)
        listed = yield threads.deferToThread(admin, "--redis", self.redis.url, "list")
        self.assertEqual(listed.stdout, "carol\ttxturn\n")
        # uclient allocates for RTP and RTCP, one with a reservation.
        port, watcher = yield self.server("--usage-stream", "txturn:usage", "--user-quota", "10")
        result = yield run_aioice(self, port, "carol", "from-the-environment", 10)
        self.assertEqual(result["received"], 10)
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        args = uclient_args(port, peer_port, 10, 1)
        args[args.index("-u") + 1] = "carol"
        args[args.index("-w") + 1] = "from-the-environment"
        drops = UdpDrops()
        out, err, code = yield threads.deferToThread(
            lambda: subprocess.run([uclient, *args], capture_output=True, text=True)
        ).addCallback(lambda p: (p.stdout, p.stderr, p.returncode))
        # One client allocates twice (RTP and RTCP): 2 x 10 messages.
        assert_relayed(self, out + err, drops, sent=20)

        def records() -> list[dict[str, Any]]:
            entries = self.redis.command("XRANGE", "txturn:usage", "-", "+")
            return [dict(zip(fields[::2], fields[1::2], strict=True)) for _, fields in entries]

        yield self.wait_until(lambda: len(records()) >= 3)
        for record in records():
            self.assertEqual(record["user"], "carol")
            self.assertEqual(record["reason"], "refresh")
            self.assertGreater(json.loads(record["to_peers"])["packets"], 0)
        self.assertNotIn(b"Traceback", watcher.output)
        # An allocation the server ends as it stops reaches the stream too.
        _, response = yield self.allocate(port, "carol", "from-the-environment")
        self.assertEqual(self.code(response), 0)
        assert watcher.transport is not None
        watcher.transport.signalProcess("TERM")
        yield watcher.ended
        reasons = yield threads.deferToThread(lambda: [r["reason"] for r in records()])
        # Mine, and any of uclient's it left to expire.
        self.assertIn("server stopping", reasons[3:])
        self.assertEqual(set(reasons[3:]), {"server stopping"})


class NonceKeyTests(FleetBase):
    """
    The fleet's nonce keys (L{txturn.fleet.nonces}): one server's nonce
    is taken by its peer, and keys rotate without refusing a nonce
    still fresh.
    """

    def setUp(self) -> Any:
        self.redis = RedisProcess(self)
        return self.redis.start()

    @defer.inlineCallbacks
    def test_peer_takes_the_nonce(self) -> Any:
        """
        A client challenged by A (401 with A's nonce) allocates on B
        with that nonce at once, as a client redirected after
        authenticating does: B does not answer 438.
        """
        port_a, watcher_a = yield self.server()
        port_b, watcher_b = yield self.server()
        for watcher in (watcher_a, watcher_b):
            yield watcher.wait_for(rb"Nonces signed with the fleet's key")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        self.addCleanup(sock.close)
        client = StunClient("test", "secret")

        def ask(port: int, authenticate: bool) -> Message:
            request = client.request(
                Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], authenticate=authenticate
            )
            sock.sendto(request, ("127.0.0.1", port))
            return client.learn(sock.recv(4096))

        challenge = yield threads.deferToThread(ask, port_a, False)
        self.assertEqual(self.code(challenge), 401)
        answer = yield threads.deferToThread(ask, port_b, True)
        self.assertEqual(self.code(answer), 0)

    @defer.inlineCallbacks
    def test_rotation(self) -> Any:
        """
        Two servers' nonce managers on one Redis: what one signs the
        other takes; after a rotation both sign with the former next key
        and still take nonces signed before it; a retired key goes once
        its nonces are stale.
        """
        from txturn.auth.credentials import NonceManager
        from txturn.fleet import nonces as module
        from txturn.fleet.link import RedisLink

        address = parse_redis_url(self.redis.url)
        links = [RedisLink(reactor, address) for _ in range(2)]
        for link in links:
            self.addCleanup(link.close)
        managers = [NonceManager(lifetime=600) for _ in links]
        shared = [module.SharedNonceKeys(link, m) for link, m in zip(links, managers, strict=True)]
        yield defer.gatherResults([s.refresh() for s in shared])
        self.assertTrue(all(s.shared for s in shared))
        now = time.time()
        before = managers[0].issue("192.0.2.1", now)
        self.assertTrue(managers[1].is_valid(before, "192.0.2.1", now))
        self.assertFalse(managers[1].is_valid(before, "192.0.2.2", now))
        stored = json.loads(self.redis.command("GET", module.NONCE_KEYS))
        self.patch(module, "ROTATION", 0)
        yield shared[0].refresh()
        rotated = json.loads(self.redis.command("GET", module.NONCE_KEYS))
        self.assertEqual(rotated["current"], stored["next"])
        self.assertEqual([k["key"] for k in rotated["old"]], [stored["current"]])
        # B has not read the keys yet: it still signs with the old key,
        # which A takes; once B reads them, A takes what B signs.
        lagging = managers[1].issue("192.0.2.1", now)
        self.assertTrue(managers[0].is_valid(lagging, "192.0.2.1", now))
        self.patch(module, "ROTATION", 3600)
        yield shared[1].refresh()
        after = managers[1].issue("192.0.2.1", now)
        self.assertNotEqual(after, before)
        for nonce in (before, after):
            self.assertTrue(managers[0].is_valid(nonce, "192.0.2.1", now))
            self.assertTrue(managers[1].is_valid(nonce, "192.0.2.1", now))
        # A retired key is kept only while its nonces can be fresh.
        rotated["old"][0]["until"] = 1
        self.redis.command("SET", module.NONCE_KEYS, json.dumps(rotated))
        yield shared[0].refresh()
        self.assertEqual(json.loads(self.redis.command("GET", module.NONCE_KEYS))["old"], {})
        self.assertFalse(managers[0].is_valid(before, "192.0.2.1", now))


class SlowRedisTests(FleetBase):
    """
    Redis answering in 300 ms (a proxy delays both ways) while one source
    floods Allocates under made-up names.
    """

    delay = 0.15

    def setUp(self) -> Any:
        self.redis = RedisProcess(self)
        return self.redis.start()

    def slow_proxy(self) -> int:
        """
        A port that forwards to Redis, each chunk C{delay} late each way.
        """
        pending: list[Any] = []

        def later(call: Callable[..., Any], *args: Any) -> None:
            pending.append(reactor.callLater(self.delay, call, *args))

        class SlowClient(portforward.ProxyClient):
            def dataReceived(self, data: bytes) -> None:
                later(portforward.ProxyClient.dataReceived, self, data)

        class SlowClientFactory(portforward.ProxyClientFactory):
            protocol = SlowClient
            noisy = False

        class SlowServer(portforward.ProxyServer):
            clientProtocolFactory = SlowClientFactory

            def dataReceived(self, data: bytes) -> None:
                later(portforward.ProxyServer.dataReceived, self, data)

        factory = portforward.ProxyFactory("127.0.0.1", self.redis.port)
        factory.protocol = SlowServer
        factory.noisy = False
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(lambda: [c.cancel() for c in pending if c.active()])
        self.addCleanup(listening.stopListening)
        port: int = listening.getHost().port
        return port

    @defer.inlineCallbacks
    def test_flood_of_unknown_names(self) -> Any:
        """
        2,000 Allocates a second from one source, each under a new name:
        a static user and REST users, from another address, all get in
        (REST users got 500 on 16 of 24 attempts, and static users on 2
        of 20, when a full cache raised before they were asked); the
        flood reached Redis at most its source's share.
        """
        port = free_udp_port()
        metrics = free_udp_port()
        watcher = spawn(
            twistd_turn(
                port,
                "--user", "test:secret", "--static-auth-secret", self.secret,
                "--redis", f"redis://127.0.0.1:{self.slow_proxy()}",
                "--relay-ip", "127.0.0.1", "--no-tcp", "--prometheus",
                "--prometheus-address", "127.0.0.1", "--prometheus-port", str(metrics),
            ),
            self,
        )  # fmt: skip
        yield watcher.wait_for(rb"TURN listening on UDP")
        stop = threading.Event()

        def flood() -> int:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(5)
            client = StunClient("nobody", "x")
            sock.sendto(client.request(Method.ALLOCATE, authenticate=False), ("127.0.0.1", port))
            client.learn(sock.recv(4096))
            sock.setblocking(False)
            sent = 0
            while not stop.is_set():
                for _ in range(20):
                    client.username = f"nobody{sent}"
                    request = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
                    sock.sendto(request, ("127.0.0.1", port))
                    sent += 1
                time.sleep(0.01)
                with contextlib.suppress(BlockingIOError):
                    while sock.recv(4096):
                        pass
            sock.close()
            return sent

        def legitimate() -> list[int]:
            codes = []
            for i in range(44):
                if i < 20:
                    user, password = "test", "secret"
                else:
                    user, password = mint_credential(self.secret, f"u{i}", int(time.time()) + 600)
                sock, request = udp_requester(self, port, user, password)
                answer = request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
                codes.append(self.code(answer))
                if answer.cls == Class.SUCCESS:
                    request(Method.REFRESH, [(Attr.LIFETIME, 0)])
                sock.close()
            return codes

        flooding = threads.deferToThread(flood)
        yield deferLater(reactor, 1.0, lambda: None)
        codes = yield threads.deferToThread(legitimate)
        stop.set()
        sent = yield flooding
        self.assertEqual(codes, [0] * 44)
        self.assertGreater(sent, 1500)
        page = yield threads.deferToThread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode()
        )
        self.assertNotIn("Traceback", watcher.output.decode())
        # The flood's own names were answered 500 past its share.
        self.assertGreater(value(page, "turn_credentials_unavailable_total"), 0)


class TlsTests(FleetBase):
    """
    The fleet over C{rediss://}: Redis with a TLS port only.
    """

    def setUp(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.redis = RedisProcess(self, self_signed_certificate(directory, "localhost"))
        return self.redis.start()

    def servers_alive(self) -> int:
        return 1  # the plain-text probe cannot speak TLS; allocate() proves it

    @defer.inlineCallbacks
    def test_over_tls(self) -> Any:
        """
        Quota and revocation through a TLS connection whose certificate
        is checked for the host name.
        """
        port_a, watcher_a = yield self.server()
        port_b, _ = yield self.server()
        yield watcher_a.wait_for(rb"TURN listening")
        codes = []
        for port in (port_a, port_b, port_a, port_b):
            _, response = yield self.allocate(port)
            codes.append(self.code(response))
        self.assertEqual(codes, [0, 0, 0, 486])
        revoked = yield threads.deferToThread(admin, "--redis", self.redis.url, "revoke", "test")
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        yield watcher_a.wait_for(rb"Revoked test: 2 allocations deleted", timeout=10)
        self.assertNotIn(b"unreachable", watcher_a.output)
        # A certificate from another CA is refused: that server counts on
        # its own, and says so.
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        untrusted, _ = self_signed_certificate(other, "localhost")
        wrong = self.redis.url.replace(self.redis.certificate[0], untrusted)  # type: ignore[index]
        port_c, watcher_c = yield self.server("--redis", wrong)
        yield watcher_c.wait_for(rb"Redis at rediss://localhost:\d+/0 unreachable")
        _, response = yield self.allocate(port_c)
        self.assertEqual(self.code(response), 0)


class AddressTests(TestCase):
    def test_urls(self) -> None:
        address = parse_redis_url("redis://u:p%40ss@cache.example:6380/2")
        self.assertEqual(
            (address.host, address.port, address.db, address.username, address.password),
            ("cache.example", 6380, 2, "u", "p@ss"),
        )
        self.assertEqual(parse_redis_url("redis://127.0.0.1").port, 6379)
        secure = parse_redis_url("rediss://cache.example/1?ssl_ca_certs=/etc/ca.pem")
        self.assertEqual((secure.tls, secure.ca_file, secure.db), (True, "/etc/ca.pem", 1))
        for bad in (
            "http://x",
            "redis://x/db",
            "redis://:1",
            "redis://x:port",
            "redis://x?ssl_ca_certs=/ca.pem",
            "rediss://x?verify=no",
        ):
            with self.assertRaises(ValueError, msg=bad):
                parse_redis_url(bad)

    def test_url_out_of_ps(self) -> None:
        """
        C{$TXTURN_REDIS_URL} stands in for C{--redis}, so a password stays
        out of ps; one on the command line is warned about.
        """
        self.patch(os, "environ", {REDIS_VARIABLE: "redis://:pw@127.0.0.1:6390/1"})
        options = Options()
        options.parseOptions(["--user", "a:b"])
        self.assertEqual(options["redis-address"].password, "pw")
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--redis", "redis://:pw@127.0.0.1:6390/1"])
        options["argv"] = ["--redis", "redis://:pw@127.0.0.1:6390/1"]
        with capturedLogs() as events:
            warn_weakening(options)
        self.assertIn("--redis (with a password)", [e.get("options") for e in events][-1])

    def test_admin_without_redis(self) -> None:
        """
        txturn-admin against a Redis that does not answer: one line, exit 1.
        """
        port = free_tcp_port()
        failed = admin("--redis", f"redis://127.0.0.1:{port}", "list")
        self.assertEqual(failed.returncode, 1)
        self.assertEqual(
            failed.stderr, f"txturn-admin: Redis at redis://127.0.0.1:{port}/0: no answer in 5 s\n"
        )
