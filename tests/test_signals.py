"""
Signals sent to a real C{twistd turn} process while real clients relay
through it: SIGHUP and SIGUSR2 reload the configuration file without
dropping a call, a broken file keeps the running settings, SIGUSR1 does
not kill, SIGTERM stops within 5 s and removes the pidfile.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

from cryptography import x509
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, readBody

from tests.test_interop import (
    OutputWatcher,
    UdpDrops,
    assert_relayed,
    require,
    run_aioice,
    spawn,
    uclient_args,
    uclient_totals,
    udp_requester,
)
from tests.test_metrics import value
from tests.test_service import free_udp_port
from txturn.testing import self_signed_certificate
from txturn.wire.stun import Attr, Class, Method

reactor: Any = _reactor


def twistd(*options: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        *options,
    ]


class SignalTests(TestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.port = free_udp_port()
        self.users = os.path.join(self.directory, "users")
        self.write(self.users, "test:secret\n")
        self.config = os.path.join(self.directory, "turnserver.conf")
        self.settings = [
            f"listening-port={self.port}",
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"userdb={self.users}",
            "allow-loopback-peers",
            "lt-cred-mech",
            "no-dtls",
        ]
        self.write(self.config, "\n".join(self.settings) + "\n")

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def start(self, *twistd_options: str) -> OutputWatcher:
        watcher = spawn(twistd(*twistd_options, "turn", "-c", self.config), self)
        return watcher

    def signal(self, watcher: OutputWatcher, name: str) -> None:
        assert watcher.transport is not None
        watcher.transport.signalProcess(getattr(signal, f"SIG{name}"))

    @defer.inlineCallbacks
    def test_reload_keeps_calls(self) -> Any:
        """
        While uclient relays, SIGHUP with a new user in the user file lets
        the new user in (aioice) and uclient loses nothing; SIGUSR2 does
        the same; a broken file keeps the running settings; SIGUSR1 does
        not kill.
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        watcher = self.start("--pidfile=")
        yield watcher.wait_for(rb"TURN listening on UDP")
        # 2 clients x 200 messages 20 ms apart: about 4 s of relaying.
        drops = UdpDrops()
        calls = getProcessOutputAndValue(
            uclient, uclient_args(self.port, peer_port, 200, 2), env=os.environ.copy()
        )
        # uclient's calls are up: its three allocations (-m 2 makes an
        # RTP/RTCP pair with a reservation, and one more).
        yield watcher.wait_for(rb"(Allocated .*? for test.*?){3}")
        _, request = udp_requester(self, self.port)

        allocated = yield threads.deferToThread(
            request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
        )
        self.assertEqual(allocated.cls, Class.SUCCESS)
        self.write(self.users, "test:secret\nbob:builder\n")
        self.signal(watcher, "HUP")
        yield watcher.wait_for(rb"SIGHUP: reloaded credentials, peer policy, quotas and limits")
        yield watcher.wait_for(rb"SIGHUP: users added: bob")
        result = yield run_aioice(self, self.port, "bob", "builder", 10)
        self.assertEqual(result["received"], 10)
        refreshed = yield threads.deferToThread(request, Method.REFRESH, [(Attr.LIFETIME, 600)])
        self.assertEqual(refreshed.cls, Class.SUCCESS)

        self.write(self.config, "\n".join(self.settings) + "\nmin-port=abc\n")
        self.signal(watcher, "USR2")
        yield watcher.wait_for(
            rb"SIGUSR2: reload failed, keeping the running settings: \S+turnserver.conf:8: "
            rb"--min-port must be a number"
        )
        self.signal(watcher, "USR1")
        yield watcher.wait_for(rb"SIGUSR1: logging to standard output")
        result = yield run_aioice(self, self.port, "bob", "builder", 10)
        self.assertEqual(result["received"], 10)

        out, err, code = yield calls
        assert_relayed(self, (out + err).decode(errors="replace"), drops, sent=400)
        self.assertIn(b"Allocated", watcher.output)
        self.assertNotIn(b"Traceback", watcher.output)

    @defer.inlineCallbacks
    def test_sigterm(self) -> Any:
        """
        SIGTERM while uclient relays: its allocations are deleted and
        logged with their usage (and written to the usage file), the
        process exits within 5 s and its pidfile is gone.
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        pidfile = os.path.join(self.directory, "turn.pid")
        records = os.path.join(self.directory, "usage.jsonl")
        metrics_port = free_udp_port()
        self.settings += [
            f"usage-file={records}",
            "prometheus",
            f"prometheus-port={metrics_port}",
        ]
        self.write(self.config, "\n".join(self.settings) + "\n")
        watcher = self.start(f"--pidfile={pidfile}")
        yield watcher.wait_for(rb"TURN listening on UDP")
        self.assertTrue(os.path.exists(pidfile))
        calls = getProcessOutputAndValue(
            uclient, uclient_args(self.port, peer_port, 150, 2), env=os.environ.copy()
        )
        yield watcher.wait_for(rb"Allocated .* for test")
        yield relaying(metrics_port)
        started = time.monotonic()
        self.signal(watcher, "TERM")
        yield watcher.ended
        self.assertLess(time.monotonic() - started, 5)
        self.assertRegex(
            watcher.output.decode(),
            r"deleted \(server stopping\) after \d+s: [1-9]\d* packets, [1-9]\d* bytes to peers",
        )
        self.assertFalse(os.path.exists(pidfile))
        with open(records) as f:
            ended = [json.loads(line) for line in f]
        self.assertTrue(ended)
        self.assertEqual({r["reason"] for r in ended}, {"server stopping"})
        self.assertEqual({r["user"] for r in ended}, {"test"})
        self.assertGreater(sum(r["to_peers"]["packets"] for r in ended), 0)
        yield calls  # uclient gives up on its own

    @defer.inlineCallbacks
    def test_sigquit_drains(self) -> Any:
        """
        SIGQUIT while uclient relays: a new client (aioice) is refused,
        uclient's calls go on, and the server loses nothing of them: every
        message uclient sent was relayed to the peer, every echo the peer
        sent back reached uclient, nothing was dropped; the server stops
        by itself once the calls end, with its pidfile removed; a second
        SIGQUIT changes nothing.

        uclient talks to the server over TCP (-t) and SIGQUIT is sent once
        relayed traffic shows on /metrics (so every allocation is made):
        UDP between two starved processes on one machine may lose a
        datagram in a socket buffer, which says nothing of the server, so
        the test counts what the server itself forwarded.
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        metrics_port = free_udp_port()
        self.settings += ["drain-timeout=60", "prometheus", f"prometheus-port={metrics_port}"]
        self.write(self.config, "\n".join(self.settings) + "\n")
        pidfile = os.path.join(self.directory, "turn.pid")
        watcher = self.start(f"--pidfile={pidfile}")
        yield watcher.wait_for(rb"TURN listening on TCP")
        calls = getProcessOutputAndValue(
            uclient, ["-t", *uclient_args(self.port, peer_port, 200, 2)], env=os.environ.copy()
        )
        yield relaying(metrics_port)
        self.signal(watcher, "QUIT")
        yield watcher.wait_for(rb"Draining: no new allocations")
        self.signal(watcher, "QUIT")  # a second one changes nothing
        script = os.path.join(os.path.dirname(__file__), "clients", "aioice_echo.py")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            [script, "127.0.0.1", str(self.port), "test", "secret", "3"],
            env=os.environ.copy(),
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"508", out + err)
        out, err, code = yield calls
        output = (out + err).decode(errors="replace")
        sent, received, lost = uclient_totals(output)
        self.assertEqual(sent, 400, output[-2000:])
        self.assertNotIn("error 5", output)
        yield watcher.ended
        log = watcher.output.decode()
        self.assertIn("Drained: the last allocation ended", log, log[-1500:])
        ended = re.findall(
            r"deleted \(([^)]*)\) after \d+s: (\d+) packets, \d+ bytes to peers; "
            r"(\d+) packets, \d+ bytes to the client([^\n]*)",
            log,
        )
        # uclient ended its calls itself: none was cut by the server.
        self.assertLessEqual({e[0] for e in ended}, {"refresh", "connection closed"}, ended)
        self.assertEqual(sum(int(e[1]) for e in ended), sent, ended)
        self.assertEqual(sum(int(e[2]) for e in ended), received, ended)
        self.assertEqual([e[3] for e in ended if e[3]], [], "the server dropped packets")
        self.assertEqual(log.count("Draining: "), 1)
        self.assertNotIn("Unhandled error", log)
        self.assertFalse(os.path.exists(pidfile))

    @defer.inlineCallbacks
    def test_privileges_dropped(self) -> Any:
        """
        proc-user and proc-group in the file: the server binds a port
        below 1024 as root, then runs as nobody, and relays (aioice).
        """
        if os.getuid() != 0:
            raise SkipTest("needs root to bind a low port and drop privileges")
        low = free_low_port()
        self.settings[0] = f"listening-port={low}"
        self.settings += ["proc-user=nobody", "proc-group=nogroup"]
        self.write(self.config, "\n".join(self.settings) + "\n")
        os.chmod(self.directory, 0o755)
        os.chmod(self.users, 0o644)
        watcher = self.start("--pidfile=")
        yield watcher.wait_for(rb"TURN listening on UDP")
        assert watcher.transport is not None
        pid = watcher.transport.pid
        with open(f"/proc/{pid}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        self.assertEqual(int(uid_line.split()[1]), pwd.getpwnam("nobody").pw_uid)
        result = yield run_aioice(self, low, "test", "secret", 5)
        self.assertEqual(result["received"], 5)

    @defer.inlineCallbacks
    def root_only_server(self, *options: str) -> Any:
        """
        A server started as root that drops to nobody, whose configuration
        file and private key are root's alone (0600, as Let's Encrypt's
        privkey.pem), with its pidfile and log in directories only root
        may write.  Returns (watcher, pidfile, log, TLS port, cert, key).
        """
        if os.getuid() != 0:
            raise SkipTest("needs root to drop privileges")
        cert, key = self_signed_certificate(self.directory)
        tls_port = free_udp_port()
        self.settings += [f"cert={cert}", f"pkey={key}", f"tls-listening-port={tls_port}"]
        self.settings += ["proc-user=nobody", "proc-group=nogroup"]
        self.write(self.config, "\n".join(self.settings) + "\n")
        for path in (self.config, key):
            os.chmod(path, 0o600)
        os.chmod(self.users, 0o644)
        os.chmod(self.directory, 0o755)
        run = os.path.join(self.directory, "run")
        os.makedirs(run, mode=0o755)
        pidfile, log = os.path.join(run, "turn.pid"), os.path.join(run, "turn.log")
        watcher = spawn(
            [
                sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                f"--pidfile={pidfile}", f"--logfile={log}", "-n",
                "turn", "-c", self.config, *options,
            ],
            self,
        )  # fmt: skip
        for _ in range(300):
            if os.path.exists(log) and b"TURN listening on TLS" in read_bytes(log):
                break
            yield deferLater(reactor, 0.1, lambda: None)
        return watcher, pidfile, log, tls_port, cert, key

    @defer.inlineCallbacks
    def test_reload_after_privilege_drop(self) -> Any:
        """
        After the drop to nobody, SIGHUP still reads the root-only file
        (a user added relays) and a renewed root-only key (new handshakes
        get the new certificate); SIGUSR1 says why it cannot rotate the
        root-owned log; on SIGTERM the pidfile in a root-only directory
        is removed.
        """
        watcher, pidfile, log, tls_port, cert, key = yield self.root_only_server()
        self.assertTrue(os.path.exists(pidfile))
        with open(pidfile) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        self.assertEqual(int(uid_line.split()[1]), pwd.getpwnam("nobody").pw_uid)
        first = yield threads.deferToThread(served_serial, tls_port)

        self.settings.append("user=bob:builder")
        self.write(self.config, "\n".join(self.settings) + "\n")
        os.makedirs(os.path.join(self.directory, "new"))
        new_cert, new_key = self_signed_certificate(os.path.join(self.directory, "new"))
        os.chmod(new_key, 0o600)
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        os.kill(pid, signal.SIGHUP)
        yield wait_in_file(log, b"users added: bob")
        self.assertNotIn(b"reload failed", read_bytes(log))
        result = yield run_aioice(self, self.port, "bob", "builder", 5)
        self.assertEqual(result["received"], 5)
        second = yield threads.deferToThread(served_serial, tls_port)
        self.assertNotEqual(first, second)

        os.kill(pid, signal.SIGUSR1)
        yield wait_in_file(log, b"SIGUSR1: cannot rotate the log file")
        os.kill(pid, signal.SIGTERM)
        yield watcher.ended
        for _ in range(100):
            if not os.path.exists(pidfile):
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(os.path.exists(pidfile))

    @defer.inlineCallbacks
    def test_workers_after_privilege_drop(self) -> Any:
        """
        --workers 2 with the same root-only files: the workers, which run
        as nobody from the start, read the configuration, relay, and
        reload a user added later.
        """
        if os.getuid() == 0:
            runs = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                + [sys.executable, "-c", "import txturn"],
                capture_output=True,
            )
            if runs.returncode != 0:
                raise SkipTest(
                    f"nobody cannot run {sys.executable} (an interpreter under a home only "
                    "root may enter?), so workers started as nobody could not either"
                )
        watcher, pidfile, log, _, _, _ = yield self.root_only_server("--workers", "2")
        for index in (0, 1):
            yield wait_in_file(log, rb"\[worker %d [^\]]*\] Relaying on" % index)
        self.settings.append("user=carol:c4rol")
        self.write(self.config, "\n".join(self.settings) + "\n")
        with open(pidfile) as f:
            os.kill(int(f.read()), signal.SIGHUP)
        # A worker still starting reloads once it is ready (a signal
        # before its handlers were installed killed it, and the server).
        yield wait_in_file(log, rb"(\[worker \d [^\]]*\] SIGHUP: reloaded.*){2}")
        self.assertNotIn(b"reload failed", read_bytes(log))
        self.assertNotIn(b"before it was ready", read_bytes(log))
        for _ in range(4):  # the kernel spreads new sources over both workers
            result = yield run_aioice(self, self.port, "carol", "c4rol", 3)
            self.assertEqual(result["received"], 3)

    @defer.inlineCallbacks
    def test_certificate_reload(self) -> Any:
        """
        A certificate replaced in place and SIGHUP: new TLS handshakes see
        the new certificate's serial number.
        """
        cert, key = self_signed_certificate(self.directory)
        tls_port = free_udp_port()
        self.settings += [f"cert={cert}", f"pkey={key}", f"tls-listening-port={tls_port}"]
        self.write(self.config, "\n".join(self.settings) + "\n")
        watcher = self.start("--pidfile=")
        yield watcher.wait_for(rb"TURN listening on TLS")
        first = yield threads.deferToThread(served_serial, tls_port)
        os.makedirs(os.path.join(self.directory, "new"))
        new_cert, new_key = self_signed_certificate(os.path.join(self.directory, "new"))
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        self.signal(watcher, "HUP")
        yield watcher.wait_for(rb"SIGHUP: reloaded .*certificate")
        second = yield threads.deferToThread(served_serial, tls_port)
        self.assertNotEqual(first, second)
        with open(cert, "rb") as f:
            self.assertEqual(second, x509.load_pem_x509_certificate(f.read()).serial_number)


def free_low_port() -> int:
    """
    A port below 1024 free for UDP and TCP on 127.0.0.1.
    """
    for port in range(600, 1000):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise SkipTest("no free port below 1024")


def served_serial(port: int) -> int:
    """
    The serial number of the certificate a TLS handshake on C{port} gets.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@defer.inlineCallbacks
def wait_in_file(path: str, pattern: bytes, timeout: float = 30) -> Any:
    """
    Wait until the file at C{path} matches C{pattern} (a log twistd
    writes, which the test cannot watch as a pipe).
    """
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and re.search(pattern, read_bytes(path), re.S):
            return
        yield deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"{pattern!r} not in {path}:\n{read_bytes(path).decode()[-2000:]}")


@defer.inlineCallbacks
def relaying(metrics_port: int, timeout: float = 30) -> Any:
    """
    Wait until the server's /metrics on C{metrics_port} shows relayed
    traffic: every allocation of a uclient run is made by then.
    """
    url = f"http://127.0.0.1:{metrics_port}/metrics".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = yield Agent(reactor).request(b"GET", url)
        text = (yield readBody(response)).decode()
        if value(text, "turn_relayed_packets_total", direction="to_peers"):
            return
        yield deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("no relayed traffic on /metrics")
