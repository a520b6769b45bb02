# -*- test-case-name: tests.test_signals -*-
"""
A drain (SIGQUIT, or C{TurnService.drain}): no new allocations, and a
Deferred that fires when the last one has ended or at the deadline,
whichever comes first (L{Drain}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txturn.core.events import AllocationDeleted, IServerObserver
from txturn.core.server import TurnServer
from txturn.util.log_level import logger


@implementer(IServerObserver)
class Drain:
    """
    Fires C{done} when the server's last allocation ends, or at the
    deadline.
    """

    log = logger()

    def __init__(self, server: TurnServer, reactor: Any, timeout: float) -> None:
        self._server = server
        self.done: defer.Deferred[None] = defer.Deferred()
        self._deadline = reactor.callLater(timeout, self._expired)
        server.add_observer(self)
        if not server.allocations:
            self._finish("no allocation was alive")

    def observe(self, event: object) -> None:
        if isinstance(event, AllocationDeleted) and not self._server.allocations:
            self._finish("the last allocation ended")

    def _expired(self) -> None:
        self._finish(f"{len(self._server.allocations)} allocations still alive at the deadline")

    def _finish(self, why: str) -> None:
        if self.done.called:
            return
        if self._deadline.active():
            self._deadline.cancel()
        self._server.remove_observer(self)
        self.log.info("Drained: {why}", why=why)
        self.done.callback(None)
