# -*- test-case-name: tests.test_signals -*-
"""
What the signals operators send do to a running C{twistd turn}:

 - SIGHUP (C{systemctl reload}, logrotate) and SIGUSR2 (coturn's
   certificate reload) reload the configuration without dropping an
   allocation or a connection;
 - SIGUSR1 keeps twistd's meaning (reopen the log file) and never kills
   the server, even when there is no log file to reopen;
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

import signal
from typing import Any, Callable

from twisted.application import service

from txturn.log_level import logger

#: The signals that reload.
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)


class SignalHandlers(service.Service):
    """
    Installs the handlers while running, and puts back what was there
    when stopped.

    @param reload: called in the reactor thread for SIGHUP and SIGUSR2,
        with the signal's name.
    @param drain: called in the reactor thread for SIGQUIT.
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        reload: Callable[[str], None],
        drain: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._reload = reload
        self._drain = drain
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for number in RELOAD_SIGNALS:
            self._install(number, self._on_reload)
        if self._drain is not None:
            self._install(signal.SIGQUIT, self._on_quit)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            # twistd reopens its log file on SIGUSR1, but installs nothing
            # when it logs to stdout; the default action would kill us.
            self._install(signal.SIGUSR1, self._on_usr1)

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

    def _on_usr1(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(
            self.log.info, "SIGUSR1: logging to standard output, no log file to reopen"
        )
