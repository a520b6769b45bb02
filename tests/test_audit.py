"""
Tests for L{txturn.tools.audit}: txturn refuses every form on every path;
Debian's coturn 4.6.1, with its default peer policy, grants several,
and the audit reports them.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from tests.test_interop import start_coturn
from tests.test_service import free_udp_port
from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.peer_policy import PeerPolicy, parse_range
from txturn.core.server import ServerConfig
from txturn.testing import loopback_hosts
from txturn.tools.audit import Audit
from txturn.tools.probe import Probe, TurnUri

reactor: Any = _reactor


class TxturnAuditTests(TestCase):
    def serve(self, policy: PeerPolicy) -> TurnService:
        service = TurnService(
            reactor,
            StaticCredentials("txturn", {"alice": "secret"}),
            [("127.0.0.1", 0)],
            loopback_hosts(),
            policy=policy,
            config=ServerConfig(realm="txturn"),
            transports={"udp", "tcp"},
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def audit(self, service: TurnService, transport: str) -> Any:
        port = service.port_of(transport)
        uri = TurnUri.parse(f"turn:127.0.0.1:{port}?transport={transport}")
        return threads.deferToThread(Audit(Probe(uri, "alice", "secret", timeout=2)).run)

    @defer.inlineCallbacks
    def test_all_refused(self) -> Any:
        """
        With the default policy, every form is refused on every path,
        over UDP and over TCP (RFC 6062 Connect included).
        """
        service = self.serve(PeerPolicy())
        for transport in ("udp", "tcp"):
            rows = yield self.audit(service, transport)
            self.assertEqual([r for r in rows if r.granted], [])
            tested = [r for r in rows if not r.result.startswith("untested")]
            self.assertGreater(len(tested), 30)
            paths = {r.path for r in tested}
            self.assertIn("Send indication", paths)
            if transport == "tcp":
                self.assertIn("Connect (RFC 6062)", paths)

    @defer.inlineCallbacks
    def test_finding(self) -> Any:
        """
        A policy opened to 10.0.0.0/8 and loopback is reported: the
        private form as granted, and a loopback form as delivered.
        """
        service = self.serve(PeerPolicy(allowed=parse_range("10.0.0.0/8"), allow_loopback=True))
        rows = yield self.audit(service, "udp")
        granted = {(r.form, r.path) for r in rows if r.granted}
        self.assertIn(("10.0.0.1", "CreatePermission"), granted)
        self.assertIn(("127.0.0.1", "Send indication"), granted)
        self.assertNotIn(("169.254.169.254", "CreatePermission"), granted)


class CoturnAuditTests(TestCase):
    @defer.inlineCallbacks
    def test_coturn_findings(self) -> Any:
        """
        Debian's coturn 4.6.1 with no peer options grants private, cloud
        metadata and IPv4-mapped loopback forms: txturn-probe --audit
        reports them and exits 3.
        """
        port = free_udp_port()
        yield start_coturn(self, port, "alice:secret")
        result = yield threads.deferToThread(
            subprocess.run,
            [sys.executable, "-m", "txturn.tools.probe", "--audit", f"turn:127.0.0.1:{port}"]
            + ["-u", "alice", "-w", "secret", "--timeout", "2"],
            capture_output=True,
        )
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 3, out + result.stderr.decode())
        forms = ["10.0.0.1", "169.254.169.254"]
        if "::1" in loopback_hosts():
            forms.append("::ffff:127.0.0.1")
        for form in forms:
            self.assertRegex(out, rf"!!  {form} .* CreatePermission +GRANTED")
        self.assertIn("FINDINGS", out)
