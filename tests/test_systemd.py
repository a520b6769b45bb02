"""
systemd's readiness protocol (L{txturn.app.systemd}): a real C{twistd turn}
under a C{$NOTIFY_SOCKET} the test listens on, as systemd would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tests.test_interop import spawn, twistd_turn
from tests.test_service import free_udp_port
from txturn.app.systemd import notify

reactor: Any = _reactor


class Manager(DatagramProtocol):
    """
    What systemd's notification socket receives.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._waiting: list[tuple[str, defer.Deferred[None]]] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.messages.append(data.decode())
        for want, d in list(self._waiting):
            if want in self.messages[-1]:
                self._waiting.remove((want, d))
                d.callback(None)

    def wait_for(self, text: str) -> defer.Deferred[None]:
        if any(text in m for m in self.messages):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((text, d))
        return d.addTimeout(30, reactor)


class NotifyTests(TestCase):
    def listen(self) -> tuple[Manager, str]:
        # A Unix socket's path must be short (108 bytes): not under trial's.
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        manager = Manager()
        port = reactor.listenUNIXDatagram(path, manager)
        self.addCleanup(port.stopListening)
        return manager, path

    def test_no_socket(self) -> None:
        """
        Without $NOTIFY_SOCKET, or with one that is not there, nothing is
        sent and nothing fails.
        """
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/socket"}))

    @defer.inlineCallbacks
    def test_ready_draining_stopping(self) -> Any:
        """
        READY=1 once the listeners are bound (and not before), "Draining"
        on SIGQUIT, STOPPING=1 as the server stops.
        """
        manager, path = self.listen()
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": path})
        port = free_udp_port()
        watcher = spawn(twistd_turn(port, "--user", "a:b"), self)
        yield manager.wait_for("READY=1")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(probe.close)
        with self.assertRaises(OSError):
            probe.bind(("127.0.0.1", port))  # bound by the server already
        assert watcher.transport is not None
        self.assertIn(f"MAINPID={watcher.transport.pid}", manager.messages[0])
        watcher.transport.signalProcess(signal.SIGQUIT)
        yield manager.wait_for("STATUS=Draining")
        yield manager.wait_for("STOPPING=1")
        yield watcher.ended
