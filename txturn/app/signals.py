# -*- test-case-name: tests.test_signals -*-
"""
What the signals operators send do to a running C{twistd turn}:

 - SIGHUP (C{systemctl reload}, logrotate) and SIGUSR2 (coturn's
   certificate reload) reload the configuration without dropping an
   allocation or a connection;
 - SIGUSR1 keeps twistd's meaning (rotate the log file) and never kills
   the server, even when there is no log file; where twistd cannot
   rotate it (after a privilege drop, in a directory only root may
   write), it says why instead of doing nothing in silence;
 - SIGQUIT drains: no new allocations, a stop once the existing ones
   have ended or the drain deadline has passed (nginx's graceful quit);
 - SIGTERM and SIGINT stay the reactor's: a graceful stop.  But SIGTERM
   during a drain does not cut it short: Kubernetes runs a C{preStop}
   hook (which sends SIGQUIT) and then sends SIGTERM at once, and the
   calls the drain is waiting for must go on until they end or the drain
   deadline passes (the kubelet's SIGKILL after the grace period is the
   last word).  SIGINT still stops at once.

The handlers only schedule work on the reactor: a signal can interrupt
any bytecode, so nothing is done inside the handler itself.
"""

from __future__ import annotations

import os
import pwd
import signal
from typing import Any, Callable

from twisted.application import service

from txturn.util.log_level import logger

#: The signals that reload.
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)


class SignalHandlers(service.Service):
    """
    Installs the handlers while running, and puts back what was there
    when stopped.

    @param reload: called in the reactor thread for SIGHUP and SIGUSR2,
        with the signal's name.
    @param drain: called in the reactor thread for SIGQUIT.
    @param logfile: twistd's log file, if it logs to one.
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        reload: Callable[[str], None],
        drain: Callable[[], None] | None = None,
        logfile: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._reload = reload
        self._drain = drain
        self._logfile = logfile
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for number in RELOAD_SIGNALS:
            self._install(number, self._on_reload)
        if self._drain is not None:
            self._install(signal.SIGQUIT, self._on_quit)
        rotate = signal.getsignal(signal.SIGUSR1)
        if rotate in (signal.SIG_DFL, None):
            # twistd rotates its log file on SIGUSR1, but installs nothing
            # when it logs to stdout; the default action would kill us.
            self._install(signal.SIGUSR1, self._on_usr1)
        elif callable(rotate) and self._logfile is not None:
            self._install(signal.SIGUSR1, self._rotate_or_say_why(rotate, self._logfile))

    def stopService(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}
        super().stopService()  # type: ignore[no-untyped-call]

    def _install(self, number: int, handler: Callable[[int, Any], None]) -> None:
        self._previous[number] = signal.getsignal(number)
        signal.signal(number, handler)

    def _on_reload(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        self._reactor.callFromThread(self._reload, name)

    def _on_quit(self, number: int, frame: Any) -> None:
        if self._drain is not None:
            if signal.SIGTERM not in self._previous:
                self._install(signal.SIGTERM, self._on_term_while_draining)
            self._reactor.callFromThread(self._drain)

    def _on_term_while_draining(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(
            self.log.info,
            "SIGTERM while draining: the drain goes on until the last allocation ends "
            "or the --drain-timeout passes (SIGINT stops at once)",
        )

    def _rotate_or_say_why(
        self, rotate: Callable[[int, Any], Any], path: str
    ) -> Callable[[int, Any], None]:
        """
        twistd's own rotation, which gives up in silence where this user
        may not write the log file or its directory: say so first.
        """

        def handler(number: int, frame: Any) -> None:
            directory = os.path.dirname(os.path.abspath(path))
            if not (os.access(directory, os.W_OK) and os.access(path, os.W_OK)):
                self._reactor.callFromThread(
                    self.log.warn,
                    "SIGUSR1: cannot rotate the log file {path}: user {user} may not write "
                    "it or its directory (give them to that user, e.g. LogsDirectory= "
                    "under systemd)",
                    path=path,
                    user=_user_name(),
                )
            rotate(number, frame)

        return handler

    def _on_usr1(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(
            self.log.info, "SIGUSR1: logging to standard output, no log file to reopen"
        )


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
