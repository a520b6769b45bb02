# -*- test-case-name: tests.test_service -*-
"""
The host's own addresses, for a server with a wildcard listener: it
answers on every address of the host, so each is one of the server's own
for the peer policy; interfaces come and go, so the list is read again
every minute (L{HostAddressWatch}).
"""

from __future__ import annotations

from typing import Any, Callable

from txturn.app.host_addresses import host_addresses
from txturn.util.log_level import logger

#: Seconds between two readings of the host's addresses.
ADDRESS_REFRESH = 60.0


class HostAddressWatch:
    """
    Reads the host's addresses now and every L{ADDRESS_REFRESH} seconds,
    and hands each reading to C{changed}.

    @ivar addresses: the last reading.
    """

    log = logger()

    def __init__(self, reactor: Any, changed: Callable[[list[str]], None]) -> None:
        self._reactor = reactor
        self._changed = changed
        self.addresses: list[str] = []
        self._timer: Any = None

    def start(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        try:
            found = host_addresses()
        except OSError as e:
            self.log.warn("Cannot list this host's addresses: {error}", error=e)
            found = []
        self.addresses = found
        self._changed(found)
        self.stop()
        self._timer = self._reactor.callLater(ADDRESS_REFRESH, self.refresh)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
