# -*- test-case-name: tests.test_systemd -*-
"""
systemd's readiness protocol (C{Type=notify}): tell the service manager
when the listeners are bound, what the server is doing, and when it
stops, so C{systemctl start} returns once clients can connect and
C{systemctl status} shows "Draining" while a drain runs.

The protocol is one datagram of C{KEY=VALUE} lines to the Unix socket in
C{$NOTIFY_SOCKET} (C{sd_notify(3)}); it is written here in a few lines
rather than linking libsystemd.  Without C{$NOTIFY_SOCKET} (not under
systemd, or C{Type=simple}) nothing is sent.
"""

from __future__ import annotations

import os
import socket

from twisted.application.service import Service

from txturn.util.log_level import logger

#: The variable systemd sets for a C{Type=notify} service.
VARIABLE = "NOTIFY_SOCKET"


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """
    Send C{message} (C{"READY=1"}, C{"STATUS=..."}, ...) to the service
    manager; C{False} when there is none or it cannot be reached.
    """
    path = (environ if environ is not None else os.environ).get(VARIABLE)
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


class SystemdNotifier(Service):
    """
    Says READY=1 when started (as a child of the server, which has bound
    its listeners by then) and STOPPING=1 when stopped; L{status} tells
    C{systemctl status} what the server is doing.
    """

    log = logger()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if notify(f"READY=1\nSTATUS=Relaying\nMAINPID={os.getpid()}"):
            self.log.debug("Told systemd the server is ready")

    def status(self, text: str) -> None:
        notify(f"STATUS={text}")

    def stopService(self) -> None:
        notify("STOPPING=1\nSTATUS=Stopping")
        super().stopService()  # type: ignore[no-untyped-call]
