"""
What a real C{twistd turn} logs: JSON lines an operator can ship
(L{txturn.observers.json_log}), and C{--log-level} governing every line, Twisted's
own included (L{txturn.util.log_level.gate}).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.test_interop import answers_binding, run_aioice, spawn, twistd_turn, udp_requester
from tests.test_service import free_udp_port
from txturn.wire.stun import Attr, Method


class JsonLogTests(TestCase):
    @defer.inlineCallbacks
    def test_structured(self) -> Any:
        """
        Every line is one flat JSON object with a time, a level name, a
        namespace, the rendered message and the event's fields (user,
        client as host:port, traffic as numbers), and none of Twisted's
        bookkeeping; Twisted's own chatter is not there at info.
        """
        port = free_udp_port()
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"]
        argv += ["--pidfile=", "--logger=txturn.observers.json_log.stdout_observer", "turn"]
        argv += ["--listen", "127.0.0.1", "--port", str(port), "--relay-ip", "127.0.0.1"]
        argv += ["--user", "alice:secret", "--allow-loopback-peers", "--no-tcp"]
        watcher = spawn(argv, self)
        yield watcher.wait_for(rb"TURN listening on")
        result = yield run_aioice(self, port, "alice", "secret", 5)
        self.assertEqual(result["received"], 5)
        yield watcher.wait_for(rb"deleted \(refresh\)")
        lines = [line for line in watcher.output.decode().splitlines() if line]
        events = [json.loads(line) for line in lines]
        for event in events:
            self.assertLessEqual({"time", "level", "namespace", "message"}, set(event))
            self.assertIn(event["level"], ("info", "warn", "error"))
            self.assertFalse([k for k in event if k.startswith("log_")], event)
            self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertLess(max(len(line) for line in lines), 1000)
        [created] = [e for e in events if e["message"].startswith("Allocated")]
        [deleted] = [e for e in events if "deleted (refresh)" in e["message"]]
        self.assertEqual(created["user"], "alice")
        self.assertRegex(created["client"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(deleted["reason"], "refresh")
        self.assertEqual(deleted["to_peers_packets"], 5)
        self.assertGreater(deleted["to_client_bytes"], 0)
        self.assertIn(" after ", deleted["message"])
        for chatter in ("starting on", "starting up", "reactor class"):
            self.assertFalse([e for e in events if chatter in e["message"]], chatter)


class LogLevelTests(TestCase):
    @defer.inlineCallbacks
    def test_warn_governs_every_line(self) -> Any:
        """
        With --log-level warn, twistd's log has warnings only: none of
        txturn's info lines, and none of Twisted's ("starting up",
        "starting on", "Port Closed").
        """
        port = free_udp_port()
        watcher = spawn(
            twistd_turn(port, "--user", "a:b", "--log-level", "warn", "--allow-loopback-peers"),
            self,
        )
        # With warnings only, no line says it listens: wait for answers
        # (the warning above comes before the listeners are bound).
        yield threads.deferToThread(answers_binding, port)
        _, request = udp_requester(self, port, "a", "b")
        answer = yield threads.deferToThread(
            request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
        )
        self.assertIsNotNone(answer)
        yield deferLater(_reactor(), 0.2, lambda: None)
        lines = watcher.output.decode().splitlines()
        self.assertTrue(lines)
        self.assertEqual([line for line in lines if "#warn]" not in line], [])


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor
