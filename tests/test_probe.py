"""
Tests for L{txturn.tools.probe}: against txturn in this process over UDP, TCP
and TLS, against coturn's turnserver, and the failures it must name.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_interop import alice_service, redirecting_pair, start_coturn
from tests.test_service import free_udp_port
from txturn.core.counters import Counter
from txturn.tools.probe import Probe, ProbeFailed, TurnUri
from txturn.tools.probe import main as probe_main
from txturn.util.printable import printable
from txturn.wire.stun import decode, encode, error_response

reactor: Any = _reactor


class UriTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        RFC 7065's forms, with the default ports and transports.
        """
        self.assertEqual(
            TurnUri.parse("turn:example.org"), TurnUri(False, "example.org", 3478, "udp")
        )
        self.assertEqual(
            TurnUri.parse("turn:192.0.2.1:80?transport=tcp"), TurnUri(False, "192.0.2.1", 80, "tcp")
        )
        self.assertEqual(
            TurnUri.parse("turns:example.org"), TurnUri(True, "example.org", 5349, "tcp")
        )
        self.assertEqual(
            TurnUri.parse("turn:[2001:db8::1]:3479"), TurnUri(False, "2001:db8::1", 3479, "udp")
        )
        for bad in ["stun:example.org", "turn:", "turns:x?transport=udp", "turn:x?transport=sctp"]:
            self.assertRaises(ValueError, TurnUri.parse, bad)


class ProbeTests(TestCase):
    """
    The probe against a TurnService on 127.0.0.1 (loopback peers allowed,
    as the probe's peer is on this host).
    """

    def setUp(self) -> None:
        self.service, self.cert = alice_service(self, {"udp", "tcp", "tls"})

    def probe(self, uri: str, password: str = "secret", **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 2)
        probe = Probe(TurnUri.parse(uri), "alice", password, count=5, **kwargs)
        return threads.deferToThread(probe.run)

    @defer.inlineCallbacks
    def test_transports(self) -> Any:
        """
        Every step passes over UDP, TCP and TLS, and the table says what
        the server announces.
        """
        udp, tcp = self.service.port_of("udp"), self.service.port_of("tcp")
        tls = self.service.port_of("tls")
        for uri, kwargs in [
            (f"turn:127.0.0.1:{udp}", {}),
            (f"turn:127.0.0.1:{tcp}?transport=tcp", {}),
            (f"turns:127.0.0.1:{tls}", {"ca_file": self.cert}),
        ]:
            report = yield self.probe(uri, **kwargs)
            rows = dict(report.rows)
            self.assertEqual(rows["round trips"].split(",")[0], "5 of 5")
            self.assertEqual(rows["nonce cookie (RFC 8489)"], "yes")
            self.assertEqual(rows["SHA-256 passwords"], "offered")
            self.assertTrue(rows["SOFTWARE"].startswith("txturn"))
            self.assertRegex(rows["relayed address"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(dict(self.service.server.allocations), {})  # each deleted its own

    @defer.inlineCallbacks
    def test_failures(self) -> Any:
        """
        A wrong password, a refused peer and a port nobody listens on each
        fail at their step, with the code or what the network said.
        """
        udp = self.service.port_of("udp")
        failure = yield self.assertFailure(
            self.probe(f"turn:127.0.0.1:{udp}", "wrong"), ProbeFailed
        )
        self.assertEqual(str(failure), "Allocate: error 401 Unauthenticated")
        failure = yield self.assertFailure(
            self.probe(f"turn:127.0.0.1:{udp}", peer_host="10.0.0.1"), ProbeFailed
        )
        self.assertEqual(str(failure), "CreatePermission: error 403 Forbidden")
        silent = free_udp_port()
        failure = yield self.assertFailure(self.probe(f"turn:127.0.0.1:{silent}"), ProbeFailed)
        self.assertEqual(str(failure), "Binding: Connection refused")
        mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mute.bind(("127.0.0.1", 0))
        self.addCleanup(mute.close)
        quiet = self.probe(f"turn:127.0.0.1:{mute.getsockname()[1]}", timeout=0.3)
        failure = yield self.assertFailure(quiet, ProbeFailed)
        self.assertEqual(str(failure), "Binding: no answer within 0.3 s")


class EscapeTests(SynchronousTestCase):
    """
    What a probed server sends reaches the terminal escaped.
    """

    def test_printable(self) -> None:
        self.assertEqual(printable("txturn 0.1 é"), "txturn 0.1 é")
        self.assertEqual(printable("\x1b[2Jowned\nline"), "\\x1b[2Jowned\\nline")
        self.assertEqual(printable("a\u202eb\nc", keep="\n"), "a\\u202eb\nc")

    def test_hostile_reason(self) -> None:
        """
        A server whose error reason clears the screen and forges a line:
        txturn-probe prints it escaped.
        """
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        self.addCleanup(server.close)

        def answer() -> None:
            data, address = server.recvfrom(2048)
            reason = "\x1b[2J\x1b[31mowned\nOK"
            server.sendto(encode(error_response(decode(data), 400, reason)), address)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "txturn.tools.probe",
                f"turn:127.0.0.1:{server.getsockname()[1]}",
            ]
            + ["-u", "alice", "--timeout", "5"],
            capture_output=True,
            env={**os.environ, "TXTURN_PROBE_PASSWORD": "secret"},
            timeout=30,
        )
        thread.join(5)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertNotIn(b"\x1b", done.stdout + done.stderr)
        self.assertIn(b"\\x1b[2J\\x1b[31mowned\\nOK", done.stderr)
        self.assertNotIn(b"visible to every local user", done.stderr)

    def test_secrets_on_argv_warned(self) -> None:
        """
        A password or REST secret on the command line is used, with a
        warning naming what keeps it out of ps.
        """
        mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mute.bind(("127.0.0.1", 0))
        self.addCleanup(mute.close)
        uri = f"turn:127.0.0.1:{mute.getsockname()[1]}"
        for given, instead in [
            (["-u", "alice", "-w", "secret"], "--password-file or $TXTURN_PROBE_PASSWORD"),
            (["--secret", "s3cret"], "--secret-file or $TXTURN_STATIC_AUTH_SECRET"),
        ]:
            errors = io.StringIO()
            self.patch(sys, "stderr", errors)
            self.assertEqual(probe_main([uri, *given, "--timeout", "0.1"]), 1)
            self.assertIn(
                f"on the command line is visible to every local user in ps; use {instead}",
                errors.getvalue(),
            )
            self.assertIn("no answer within 0.1 s", errors.getvalue())


class CoturnProbeTests(TestCase):
    @defer.inlineCallbacks
    def test_coturn(self) -> Any:
        """
        txturn-probe checks coturn's turnserver as it checks txturn: every
        step passes, and the table shows coturn's SOFTWARE and that 4.6.1
        offers neither the nonce cookie nor SHA-256.
        """
        port = free_udp_port()
        yield start_coturn(self, port, "alice:secret", "--allow-loopback-peers")
        result = yield threads.deferToThread(
            subprocess.run,
            [sys.executable, "-m", "txturn.tools.probe", f"turn:127.0.0.1:{port}", "-u", "alice"]
            + ["-w", "secret", "-n", "5"],
            capture_output=True,
        )
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 0, out + result.stderr.decode())
        self.assertIn("Coturn", out)
        self.assertIn("5 of 5", out)
        self.assertRegex(out, r"nonce cookie \(RFC 8489\)\s+no")


class RedirectTests(TestCase):
    @defer.inlineCallbacks
    def test_follows_alternate(self) -> Any:
        """
        A server that redirects every Allocate to another (300 Try
        Alternate): the probe follows it, says so, and relays there.
        """
        target, redirecting = redirecting_pair(self, ("alice", "secret"))
        uri = TurnUri.parse(f"turn:127.0.0.1:{redirecting.port_of('udp')}")
        probe = Probe(uri, "alice", "secret", count=3, timeout=2)
        report = yield threads.deferToThread(probe.run)
        rows = dict(report.rows)
        self.assertEqual(rows["redirected to"], f"127.0.0.1:{target.port_of('udp')}")
        self.assertEqual(rows["round trips"].split(",")[0], "3 of 3")
        self.assertEqual(redirecting.server.counters[Counter.REDIRECTED], 1)
