"""
Integration tests with real TURN clients on loopback: aioice's TURN client,
coturn's turnutils_uclient with turnutils_peer, and a real C{twistd turn}
process.

turnutils_* come from Debian's coturn package, which .ci/run installs; the
tests say so and skip when it is missing outside CI.
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, cast

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests.test_service import free_udp_port
from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.counters import Counter
from txturn.core.events import AllocationCreated, IServerObserver
from txturn.core.peer_policy import PeerPolicy
from txturn.core.server import ServerConfig
from txturn.testing import (
    StunClient,
    exchange,
    loopback_hosts,
    needs_ipv6,
    self_signed_certificate,
)
from txturn.transports.tls import TlsCredentials
from txturn.util.log_level import log_level, set_log_level
from txturn.wire.stun import Attr, Class, Message, Method

HERE = os.path.dirname(os.path.abspath(__file__))

reactor: Any = _reactor


def echo_ready(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    """
    Wait (blocking: call it in a thread) until the echo peer
    (turnutils_peer) on C{host}:C{port} answers, so a client started next
    does not find the port closed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.sendto(b"ping", (host, port))
                if s.recv(64) == b"ping":
                    return
            except OSError:
                pass
    raise AssertionError(f"no echo peer on {host}:{port}")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{tool} is missing: .ci/run must install coturn")
        raise SkipTest(f"{tool} not installed (apt-get install coturn)")
    return path


class OutputWatcher(ProcessProtocol):
    """
    Collects a process's output and fires Deferreds when patterns appear.
    """

    def __init__(self) -> None:
        self.output = b""
        self.watches: list[tuple[re.Pattern[bytes], defer.Deferred[re.Match[bytes]]]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, d in list(self.watches):
            match = pattern.search(self.output)
            if match:
                self.watches.remove((pattern, d))
                d.callback(match)

    errReceived = outReceived

    def wait_for(self, pattern: bytes, timeout: float = 30) -> defer.Deferred[re.Match[bytes]]:
        d: defer.Deferred[re.Match[bytes]] = defer.Deferred()
        self.watches.append((re.compile(pattern, re.S), d))
        d.addTimeout(timeout, reactor)
        self.outReceived(b"")
        return d

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def spawn(argv: list[str], test: TestCase, env: dict[str, str] | None = None) -> OutputWatcher:
    """
    Start a process that the test kills and reaps when it is done; in the
    test's environment and C{env}.
    """
    watcher = OutputWatcher()
    process = reactor.spawnProcess(watcher, argv[0], argv, env={**os.environ, **(env or {})})

    def stop() -> defer.Deferred[None]:
        try:
            process.signalProcess("TERM")
        except Exception:
            pass
        return watcher.ended

    test.addCleanup(stop)
    return watcher


def alice_service(test: TestCase, transports: set[str]) -> tuple[TurnService, str]:
    """
    A started TurnService on 127.0.0.1 with user alice/secret in realm
    txturn, loopback peers allowed, over C{transports} (TLS with a
    self-signed certificate, whose path is returned), stopped after
    C{test}.
    """
    directory = test.mktemp()
    os.makedirs(directory)
    cert, key = self_signed_certificate(directory)
    service = TurnService(
        reactor,
        StaticCredentials("txturn", {"alice": "secret"}),
        [("127.0.0.1", 0)],
        ["127.0.0.1"],
        policy=PeerPolicy(allow_loopback=True),
        config=ServerConfig(realm="txturn"),
        tls=TlsCredentials(cert, key),
        tls_port=0,
        transports=transports,
    )
    service.startService()
    test.addCleanup(service.stopService)
    return service, cert


def uclient_totals(output: str) -> tuple[int, int, int]:
    """
    (sent, received, lost) from turnutils_uclient's summary.
    """
    sent = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\n", output)
    lost = re.search(r"Total lost packets (\d+)", output)
    if not sent or lost is None:
        raise AssertionError(f"no summary in turnutils_uclient output:\n{output[-2000:]}")
    return int(sent[-1][0]), int(sent[-1][1]), int(lost.group(1))


def udp_receive_drops() -> int:
    """
    Datagrams the kernel has dropped in this network namespace because a
    UDP socket's receive buffer was full (IPv4 and IPv6 together).

    A process that is not scheduled for a while (under a CPU hog, on a
    busy CI machine) loses datagrams this way whatever the server does:
    uclient's own socket, the echoing peer's, or the server's.
    """
    total = 0
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    total += int(rows[1][rows[0].index("RcvbufErrors")])
    if os.path.exists("/proc/net/snmp6"):
        with open("/proc/net/snmp6") as f:
            for line in f:
                name, _, number = line.partition(" ")
                if name == "Udp6RcvbufErrors":
                    total += int(number)
    return total


class UdpDrops:
    """
    The kernel's count of full-buffer UDP drops since this was made: how
    many of uclient's messages a run may miss without the server having
    lost any (see L{assert_relayed}).
    """

    def __init__(self) -> None:
        self.before = udp_receive_drops()

    def since(self) -> int:
        return udp_receive_drops() - self.before


def assert_relayed(
    test: TestCase, output: str, drops: UdpDrops, sent: int | None = None
) -> tuple[int, int]:
    """
    Assert that turnutils_uclient's C{output} shows every message relayed
    both ways, except at most as many as the kernel dropped for full
    receive buffers since C{drops} was made; return (sent, received).

    On a quiet machine the kernel drops none, so this is "0 lost": a
    message the server itself loses (user space, where the kernel counts
    nothing) fails the test on a quiet machine and under a CPU hog alike.
    C{sent}, if given, is how many messages uclient must have sent.
    """
    total, received, _ = uclient_totals(output)
    if sent is not None:
        test.assertEqual(total, sent, output[-2000:])
    dropped = drops.since()
    missing = total - received
    test.assertGreaterEqual(missing, 0, output[-2000:])
    test.assertLessEqual(
        missing,
        dropped,
        f"uclient missed {missing} of {total} messages while the kernel dropped "
        f"{dropped} datagrams for full receive buffers:\n{output[-2000:]}",
    )
    return total, received


def uclient_args(
    port: int,
    peer_port: int,
    messages: int,
    clients: int,
    peer: str = "127.0.0.1",
    server: str = "127.0.0.1",
    length: int = 120,
) -> list[str]:
    """
    turnutils_uclient options for user test/secret relaying C{messages}
    from each of C{clients} through C{server}:C{port} to C{peer}:C{peer_port}.
    """
    return [
        "-u", "test", "-w", "secret", "-e", peer, "-r", str(peer_port), "-p", str(port),
        "-n", str(messages), "-m", str(clients), "-l", str(length), server,
    ]  # fmt: skip


def udp_requester(
    test: TestCase, port: int, username: str = "test", password: str = "secret"
) -> tuple[socket.socket, Callable[[int, list[tuple[int, Any]]], Message]]:
    """
    A blocking UDP socket on 127.0.0.1, closed when C{test} ends, and a
    function making an authenticated request through it to
    127.0.0.1:C{port} (for a deferToThread: the server is another
    process).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    test.addCleanup(sock.close)
    client = StunClient(username, password)

    def request(method: int, attrs: list[tuple[int, Any]]) -> Message:
        return exchange(
            client,
            method,
            attrs,
            lambda data: sock.sendto(data, ("127.0.0.1", port)),
            lambda: sock.recv(4096),
        )

    return sock, request


def twistd_turn(port: int, *options: str, listen: str = "127.0.0.1") -> list[str]:
    """
    The command line of C{twistd -n turn} on C{listen}, run by this
    interpreter (the installed package, outside the checkout).
    """
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "turn",
        "--listen",
        listen,
        "--port",
        str(port),
        *options,
    ]


@defer.inlineCallbacks
def run_aioice(
    test: TestCase, port: int, username: str, password: str, count: int, *extra: str
) -> Any:
    """
    Relay C{count} datagrams with aioice's TURN client to an echo peer;
    returns the client script's JSON result.
    """
    script = os.path.join(HERE, "clients", "aioice_echo.py")
    out, err, code = yield getProcessOutputAndValue(
        sys.executable,
        [script, "127.0.0.1", str(port), username, password, str(count), *extra],
        env=os.environ.copy(),
    )
    test.assertEqual(code, 0, err.decode())
    return json.loads(out.decode().strip().splitlines()[-1])


class InProcessServer:
    """
    A TurnService on the test's reactor on 127.0.0.1 and ::1, every
    transport on free ports, relaying on both families, with a
    self-signed certificate for TLS and DTLS.
    """

    def start(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.cert, key = self_signed_certificate(self.directory)
        self.service = TurnService(
            reactor,
            StaticCredentials("txturn", {"test": "secret"}),
            [(host, 0) for host in loopback_hosts()],
            loopback_hosts(),
            policy=PeerPolicy(allow_loopback=True),
            config=ServerConfig(realm="txturn"),
            tls=TlsCredentials(self.cert, key),
            tls_port=0,
        )
        self.service.startService()
        self.port = self.service.port_of("udp")

    def stop(self) -> Any:
        shutil.rmtree(self.directory, ignore_errors=True)
        return self.service.stopService()


class AioiceTests(TestCase):
    """
    aioice's TURN client relays through the server over UDP, TCP and TLS.
    """

    def setUp(self) -> None:
        self.server = InProcessServer()
        self.server.start()
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def echo(self, transport: str, *extra: str) -> Any:
        port = self.server.service.port_of(transport)
        result = yield run_aioice(self, port, "test", "secret", 100, *extra)
        self.assertEqual(result["received"], 100, result)
        self.assertTrue(result["intact"])
        self.assertEqual(result["relayed"][0], "127.0.0.1")
        return result

    @defer.inlineCallbacks
    def test_udp_echo(self) -> Any:
        """
        100 datagrams sent through aioice's relay to an echo peer all come
        back intact, and the allocation is deleted when aioice closes.
        """
        yield self.echo("udp")
        self.assertEqual(self.server.service.server.allocations, {})

    def test_tcp_echo(self) -> Any:
        """
        The same over TURN/TCP.
        """
        return self.echo("tcp", "tcp")

    def test_tls_echo(self) -> Any:
        """
        The same over TURN/TLS, aioice verifying our certificate.
        """
        return self.echo("tls", "tcp", self.server.cert)


class UclientTests(TestCase):
    """
    coturn's turnutils_uclient relays through the server to turnutils_peer
    over every client transport and both relay families.
    """

    def setUp(self) -> None:
        self.uclient = require("turnutils_uclient")
        peer = require("turnutils_peer")
        self.server = InProcessServer()
        self.server.start()
        self.addCleanup(self.server.stop)
        self.peer_port = free_udp_port()
        for host in loopback_hosts():
            spawn([peer, "-L", host, "-p", str(self.peer_port)], self)

    @defer.inlineCallbacks
    def run_uclient(
        self,
        *flags: str,
        transport: str = "udp",
        peer: str = "127.0.0.1",
        server: str = "127.0.0.1",
        messages: int = 50,
        clients: int = 5,
    ) -> Any:
        port = self.server.service.port_of(transport, server)
        drops = UdpDrops()
        out, err, code = yield getProcessOutputAndValue(
            self.uclient,
            [*flags, *uclient_args(port, self.peer_port, messages, clients, peer, server)],
            env=os.environ.copy(),
        )
        output = out.decode(errors="replace") + err.decode(errors="replace")
        sent, _ = assert_relayed(self, output, drops)
        self.assertGreaterEqual(sent, messages * clients, output[-2000:])
        self.assertNotIn("error 4", output)
        return output

    def test_channels(self) -> Any:
        """
        UDP with channels (the default): every message echoed, 0 lost.
        """
        return self.run_uclient()

    def test_send_indications(self) -> Any:
        """
        UDP with -s (Send and Data indications): every message echoed, 0 lost.
        """
        return self.run_uclient("-s")

    def test_tcp(self) -> Any:
        """
        TURN over TCP (-t).
        """
        return self.run_uclient("-t", transport="tcp", clients=2, messages=20)

    def test_tls(self) -> Any:
        """
        TURN over TLS (-S -t).
        """
        return self.run_uclient("-S", "-t", transport="tls", clients=2, messages=20)

    @defer.inlineCallbacks
    def test_dtls(self) -> Any:
        """
        TURN over DTLS (-S).  uclient opens half its sessions with DTLS
        1.0, which we refuse with an alert; it retries with 1.2 at once.
        """
        output = yield self.run_uclient("-S", transport="dtls", clients=2, messages=20)
        self.assertIn("method=DTLSv1.2", output)

    @needs_ipv6
    def test_ipv6_relay(self) -> Any:
        """
        An IPv6 relay (-x) to an IPv6 peer, the client on IPv4.
        """
        return self.run_uclient("-x", peer="::1", clients=2, messages=20)

    @needs_ipv6
    def test_ipv6_client(self) -> Any:
        """
        Everything over IPv6: client, server and peer on ::1, over TCP.
        """
        return self.run_uclient(
            "-t", "-x", transport="tcp", peer="::1", server="::1", clients=2, messages=20
        )

    @defer.inlineCallbacks
    def test_tcp_allocation_active(self) -> Any:
        """
        TCP allocations (-T): pairs of uclient allocations Connect to each
        other's relayed addresses and relay both ways, 0 lost.
        """
        yield self.run_uclient("-T", transport="tcp", clients=2, messages=20)

    @needs_ipv6
    def test_tcp_allocation_tls_ipv6(self) -> Any:
        """
        TCP allocations over TLS, with IPv6 relays.
        """
        return self.run_uclient("-T", "-S", "-x", transport="tls", clients=2, messages=20)

    @defer.inlineCallbacks
    def test_tcp_allocation_passive(self) -> Any:
        """
        Passive TCP (-P): a plain TCP peer connects to the relayed address,
        the client answers the ConnectionAttempt.  uclient's peer socket
        does not count what it receives (coturn's own server gives the
        same "N sent, N/2 received"), so this asserts that the passive
        clients received every message the peers sent; tests/
        test_tcp_relay.py proves both directions with its own peer.
        """
        port = self.server.service.port_of("tcp")
        out, err, code = yield getProcessOutputAndValue(
            self.uclient,
            [
                "-P",
                "-u",
                "test",
                "-w",
                "secret",
                "-p",
                str(port),
                "-n",
                "20",
                "-m",
                "2",
                "-l",
                "120",
                "127.0.0.1",
            ],
            env=os.environ.copy(),
        )
        output = out.decode(errors="replace") + err.decode(errors="replace")
        sent, received, _ = uclient_totals(output)
        # 20 messages x 2 clients sent, half of them by the peers.
        self.assertEqual((sent, received), (40, 20), output[-2000:])
        self.assertNotIn("error 4", output)

    @defer.inlineCallbacks
    def test_negative_and_abuse(self) -> Any:
        """
        uclient's negative tests (-N) and protocol-abuse tests (-R, which
        corrupts random bytes of one message in ten) leave the server
        running and serving: afterwards a normal run relays with 0 lost,
        and nothing reached the last-resort error handler.

        -N ends with the 400 it provokes (rebinding a peer to another
        channel) and exit status 255, as it does against coturn.  -R waits
        forever for answers to messages whose FINGERPRINT it broke, which
        RFC 8489 says to discard silently, so it is stopped after 10 s.
        """
        failures: list[Any] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                failures.append(event["log_failure"])

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        core = self.server.service.server
        port = self.server.service.port_of("udp")
        common = uclient_args(port, self.peer_port, 10, 2, length=100)
        out, err, code = yield getProcessOutputAndValue(self.uclient, ["-N", *common])
        self.assertIn(b"error 400", out + err)
        # uclient makes its clients one after another, so when the first
        # Allocate is the one it corrupts (dropped in silence, as RFC 8489
        # asks) it waits forever and sends nothing more: that drop, logged
        # at debug level, is then all that shows -R reached the core.
        # uclient -R may corrupt the first byte of its very first message,
        # which the core then drops without a word (it is no STUN); so what
        # shows -R reached the core is the datagrams the core was given,
        # counted here, not a log line that may never come.
        given: list[bytes] = []
        receive = core.datagram_received

        def counting(client: Any, data: bytes, address: Any) -> None:
            given.append(data)
            receive(client, data, address)

        self.patch(core, "datagram_received", counting)
        abusive = uclient_args(port, self.peer_port, 10, 8, length=100)
        level = log_level()
        set_log_level(LogLevel.debug)
        try:
            yield getProcessOutputAndValue("/usr/bin/timeout", ["10", self.uclient, "-R", *abusive])
        finally:
            set_log_level(level)
        # -R's traffic reached the core (and, below, nothing failed).
        self.assertGreater(len(given), 0)
        # Over TCP: -R was killed with its UDP allocations alive, and a new
        # UDP client given one of its old ports would rightly get 437.
        yield self.run_uclient("-t", transport="tcp", clients=2, messages=20)
        self.assertEqual(failures, [])

    @needs_ipv6
    @defer.inlineCallbacks
    def test_dual_allocation(self) -> Any:
        """
        Dual allocation (-Z): every allocation gets both relays (uclient
        later deletes one family of some with a Refresh, which is allowed).
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.run_uclient("-Z", clients=2, messages=20)
        allocated = [e["relays"] for e in events if "relays" in e]
        self.assertTrue(allocated)
        for relays in allocated:
            self.assertEqual(len(relays.split(", ")), 2, relays)


class TwistdTests(TestCase):
    """
    The installed plugin runs as C{twistd -n turn}.
    """

    @defer.inlineCallbacks
    def test_generated_user(self) -> Any:
        """
        With no credential options, twistd logs a generated user and an
        iceServers snippet; aioice relays with exactly those credentials.
        """
        port = free_udp_port()
        watcher = spawn(twistd_turn(port, "--allow-loopback-peers"), self)
        match = yield watcher.wait_for(rb"(\{\"iceServers\".*?\}\]\})")
        servers = json.loads(match.group(1))["iceServers"][0]
        self.assertEqual(
            servers["urls"],
            [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"],
        )
        result = yield run_aioice(self, port, servers["username"], servers["credential"], 20)
        self.assertEqual(result["received"], 20)

    @defer.inlineCallbacks
    def test_crowd_shares_one_user(self) -> Any:
        """
        With the default per-user limit, 1,000 allocations of one user in
        a burst are all granted, as coturn grants them, and then 50
        uclient clients sharing that user (RTP and RTCP: 100 more
        allocations, over TCP) all relay.
        """
        uclient, peer = require("turnutils_uclient"), require("turnutils_peer")
        port, peer_port = free_udp_port(), free_udp_port()
        spawn([peer, "-L", "127.0.0.1", "-p", str(peer_port)], self)
        watcher = spawn(twistd_turn(port, "--user", "test:secret", "--allow-loopback-peers"), self)
        yield watcher.wait_for(rb"TURN listening on TCP")

        def burst() -> list[int]:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft < 2000 <= hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (2000, hard))
            codes = []
            for _ in range(1000):
                _, request = udp_requester(self, port)
                answer = request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
                codes.append(200 if answer.cls == Class.SUCCESS else answer.get(Attr.ERROR_CODE)[0])
            return codes

        codes = yield threads.deferToThread(burst)
        self.assertEqual(collections.Counter(codes), {200: 1000})
        # uclient over TCP: 100 sockets answered at once over UDP may lose
        # an answer in uclient's own buffers, and uclient then retries its
        # ChannelBind with another number, which RFC 8656 rightly refuses
        # (400); what is tested here is the quota, not UDP buffers.
        drops = UdpDrops()
        out, err, code = yield getProcessOutputAndValue(
            uclient, ["-t", *uclient_args(port, peer_port, 10, 50)], env=os.environ.copy()
        )
        output = out.decode(errors="replace") + err.decode(errors="replace")
        self.assertNotIn("error 486", output)
        sent, _ = assert_relayed(self, output, drops)
        self.assertGreaterEqual(sent, 500, output[-2000:])

    def test_startup_failures_one_line(self) -> None:
        """
        Each start-up failure an operator can fix (a port in use, a relay
        address not on this host, a log file or usage file that cannot be
        written, a key that cannot be read) stops twistd with exactly one
        line and a non-zero exit, in the foreground and as a daemon, and
        leaves no pidfile.
        """
        port = free_udp_port()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", port))
        self.addCleanup(blocker.close)
        other = free_udp_port()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        missing = os.path.join(directory, "missing", "file")
        cert, _ = self_signed_certificate(directory)
        cases: list[tuple[list[str], list[object], str]] = [
            ([], [port], f"cannot listen on UDP 127.0.0.1 port {port}: Address already in use"),
            ([], [other, "--relay-ip", "192.0.2.55"], "relay address 192.0.2.55 (--relay-ip)"),
            (["--logfile", missing], [other], f"cannot write the log file {missing}"),
            ([], [other, "--usage-file", missing], f"cannot write --usage-file {missing}"),
            ([], [other, "--cert", cert, "--key", missing], f"cannot read private key {missing}"),
        ]
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        for mode in (["-n"], []):
            for before, after, expected in cases:
                pidfile = os.path.join(directory, "twistd.pid")
                argv = [*twistd, *mode, "--pidfile", pidfile, *before, "turn"]
                argv += ["--listen", "127.0.0.1", "--user", "a:b", "--port"]
                argv += [str(a) for a in after]
                result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                if os.path.exists(pidfile):
                    with open(pidfile) as f:
                        os.kill(int(f.read()), signal.SIGKILL)
                    self.fail(f"started: {argv}")
                said = (result.stdout + result.stderr).strip().splitlines()
                self.assertNotEqual(result.returncode, 0, argv)
                self.assertEqual(len(said), 1, (argv, said))
                self.assertTrue(said[0].startswith("twistd turn: "), said)
                self.assertIn(expected, said[0])


def answers_binding(port: int, timeout: float = 15.0) -> None:
    """
    Wait until a STUN server on 127.0.0.1:C{port} answers a Binding
    (coturn logs to its own files, so its output says nothing).
    """
    deadline = time.monotonic() + timeout
    request = StunClient("", "").request(Method.BINDING, authenticate=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            sock.sendto(request, ("127.0.0.1", port))
            try:
                sock.recv(2048)
                return
            except OSError:
                continue
    raise AssertionError(f"nothing answers STUN on port {port}")


def start_coturn(test: TestCase, port: int, user: str, *extra: str) -> Any:
    """
    Debian's coturn turnserver on loopback (both families where IPv6
    works) with one user, stopped and reaped after the test; the Deferred
    fires once it answers STUN.
    """
    turnserver = require("turnserver")
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    process = subprocess.Popen(
        [
            turnserver,
            "-n",
            f"--listening-port={port}",
            *[f"--listening-ip={host}" for host in loopback_hosts()],
            *[f"--relay-ip={host}" for host in loopback_hosts()],
            "--realm=example.org",
            f"--user={user}",
            "--lt-cred-mech",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            *extra,
            f"--log-file={directory}/coturn.log",
            f"--pidfile={directory}/coturn.pid",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    test.addCleanup(process.wait)
    test.addCleanup(process.terminate)
    return threads.deferToThread(answers_binding, port)


def redirecting_pair(test: TestCase, user: tuple[str, str]) -> tuple[TurnService, TurnService]:
    """
    Two services on 127.0.0.1 over UDP: a target, and one that redirects
    every Allocate to it (300 Try Alternate).
    """
    services: list[TurnService] = []
    for redirect in (False, True):
        alternates: tuple[tuple[str, int], ...] = ()
        if redirect:
            alternates = (("127.0.0.1", services[0].port_of("udp")),)
        service = TurnService(
            reactor,
            StaticCredentials("txturn", {user[0]: user[1]}),
            [("127.0.0.1", 0)],
            ["127.0.0.1"],
            policy=PeerPolicy(allow_loopback=True),
            config=ServerConfig(realm="txturn", alternate_servers=alternates),
            transports={"udp"},
        )
        service.startService()
        test.addCleanup(service.stopService)
        services.append(service)
    return services[0], services[1]


class CoturnConfigTests(TestCase):
    """
    One coturn-syntax file starts coturn's turnserver and txturn, and
    uclient relays through each.
    """

    @defer.inlineCallbacks
    def test_same_file(self) -> Any:
        turnserver = require("turnserver")
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_udp_port()
        pidfile = os.path.join(directory, "turnserver.pid")
        config = os.path.join(directory, "turnserver.conf")
        with open(config, "w") as f:
            f.write(
                "# written for coturn\n"
                f"listening-port={port}\n"
                "listening-ip=127.0.0.1\n"
                "relay-ip=127.0.0.1\n"
                "min-port=40000\n"
                "max-port=48000\n"
                "realm=example.org\n"
                "lt-cred-mech\n"
                "fingerprint\n"
                "user=test:secret\n"
                "no-tls\n"
                "no-dtls\n"
                "allow-loopback-peers\n"
                "no-cli\n"
                "sock-buf-size=1\n"
                f"pidfile={pidfile}\n"
            )
        for argv in [
            [turnserver, "-c", config],
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"]
            + ["turn", "-c", config],
        ]:
            watcher = spawn(argv, self)
            try:
                yield threads.deferToThread(answers_binding, port)
            except AssertionError:
                self.fail(f"{argv[0]} did not start: {watcher.output[-2000:]!r}")
            self.assertTrue(os.path.exists(pidfile))
            drops = UdpDrops()
            out, err, code = yield getProcessOutputAndValue(
                uclient, uclient_args(port, peer_port, 20, 2), env=os.environ.copy()
            )
            assert_relayed(self, (out + err).decode(errors="replace"), drops, sent=40)
            assert watcher.transport is not None
            watcher.transport.signalProcess("TERM")
            yield watcher.ended
        self.assertIn(b"sock-buf-size is a coturn option txturn does not implement", watcher.output)


class RedirectTests(TestCase):
    """
    coturn's turnutils_uclient follows txturn's 300 Try Alternate.
    """

    @defer.inlineCallbacks
    def test_uclient_follows(self) -> Any:
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        target, redirecting = redirecting_pair(self, ("test", "secret"))
        created: list[object] = []

        @implementer(IServerObserver)
        class Created:
            def observe(self, event: object) -> None:
                if isinstance(event, AllocationCreated):
                    created.append(event)

        target.server.add_observer(Created())
        drops = UdpDrops()
        out, err, code = yield getProcessOutputAndValue(
            uclient,
            uclient_args(redirecting.port_of("udp"), peer_port, 10, 1, length=100),
            env=os.environ.copy(),
        )
        assert_relayed(self, (out + err).decode(errors="replace"), drops, sent=20)
        self.assertGreater(redirecting.server.counters[Counter.REDIRECTED], 0)
        self.assertEqual(len(redirecting.server.allocations), 0)
        self.assertGreater(len(created), 0)
