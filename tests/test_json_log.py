"""
Tests for L{txturn.json_log}: a real C{twistd turn} logging JSON while
aioice relays through it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.test_interop import run_aioice, spawn
from tests.test_service import free_udp_port


class JsonLogTests(TestCase):
    @defer.inlineCallbacks
    def test_structured(self) -> Any:
        """
        Every line is a JSON object, and an allocation's lines carry its
        fields: user, client as host:port, traffic as numbers.
        """
        port = free_udp_port()
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"]
        argv += ["--pidfile=", "--logger=txturn.json_log.stdout_observer", "turn"]
        argv += ["--listen", "127.0.0.1", "--port", str(port), "--relay-ip", "127.0.0.1"]
        argv += ["--user", "alice:secret", "--allow-loopback-peers", "--no-tcp"]
        watcher = spawn(argv, self)
        yield watcher.wait_for(rb"TURN listening on")
        result = yield run_aioice(self, port, "alice", "secret", 5)
        self.assertEqual(result["received"], 5)
        yield watcher.wait_for(rb"deleted \({reason}\)")
        events = [json.loads(line) for line in watcher.output.decode().splitlines() if line]
        [created] = [e for e in events if e["log_format"].startswith("Allocated")]
        [deleted] = [e for e in events if "deleted ({reason})" in e["log_format"]]
        self.assertEqual(created["user"], "alice")
        self.assertRegex(created["client"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(deleted["reason"], "refresh")
        self.assertEqual(deleted["to_peers_packets"], 5)
        self.assertGreater(deleted["to_client_bytes"], 0)
