# -*- test-case-name: tests.test_events -*-
"""
The first observer of the core: one readable log line per allocation
created and deleted, per TCP data connection opened and closed, and per
authentication failure, with addresses as C{host:port} and every value
also a structured field of the event.
"""

from __future__ import annotations

from typing import Mapping

from twisted.logger import LogLevel
from zope.interface import implementer

from txturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRefreshed,
    AuthenticationFailed,
    DataConnectionClosed,
    DataConnectionOpened,
    IServerObserver,
)
from txturn.core.interfaces import host_port
from txturn.util.log_level import log_level, logger


@implementer(IServerObserver)
class EventLog:
    """
    Logs lifecycle events through C{twisted.logger}.
    """

    log = logger("txturn")

    def observe(self, event: object) -> None:
        if (
            isinstance(event, (AllocationCreated, AllocationDeleted))
            and log_level() > LogLevel.info
        ):
            # Below --log-level: not worth rendering (a few microseconds
            # each, two per allocation, on a burst of Allocates).
            return
        if isinstance(event, AllocationCreated):
            relays = ", ".join(host_port(r) for r in event.relays)
            client = host_port(event.client)
            self.log.info(
                _literal(
                    f"Allocated {relays} for {event.username} from {client} over "
                    f"{event.transport} for {event.lifetime:.0f}s"
                ),
                allocation=event.allocation,
                relays=relays,
                user=event.username,
                client=client,
                transport=event.transport,
                lifetime=event.lifetime,
            )
        elif isinstance(event, AllocationDeleted):
            client = host_port(event.client)
            up, down = event.to_peers, event.to_client
            self.log.info(
                _literal(
                    f"Allocation {event.allocation} of {event.username} from {client} deleted "
                    f"({event.reason}) after {event.duration:.0f}s: {up.packets} packets, "
                    f"{up.bytes} bytes to peers; {down.packets} packets, {down.bytes} bytes "
                    f"to the client{_drops(event.dropped)}"
                ),
                allocation=event.allocation,
                user=event.username,
                client=client,
                reason=event.reason,
                duration=event.duration,
                to_peers_packets=up.packets,
                to_peers_bytes=up.bytes,
                to_client_packets=down.packets,
                to_client_bytes=down.bytes,
                dropped=dict(event.dropped),
            )
        elif isinstance(event, AllocationRefreshed):
            self.log.debug(
                "Allocation {allocation} of {user} refreshed for {lifetime:.0f}s",
                allocation=event.allocation,
                user=event.username,
                lifetime=event.lifetime,
            )
        elif isinstance(event, (DataConnectionOpened, DataConnectionClosed)):
            self.log.info(
                "TCP data connection {connection_id} to {peer} of allocation {allocation} {what}",
                connection_id=event.connection_id,
                peer=host_port(event.peer),
                allocation=event.allocation,
                what="opened" if isinstance(event, DataConnectionOpened) else "closed",
            )
        elif isinstance(event, AuthenticationFailed):
            self.log.warn(
                "Authentication failed for user {user!r} from {client}: {reason}",
                user=event.username,
                client=host_port(event.client),
                reason=event.reason,
            )


def _literal(text: str) -> str:
    """
    C{text} as a format string that renders as itself: the two lines
    logged per allocation are rendered here with f-strings, which costs a
    fraction of C{twisted.logger}'s field-by-field formatting (a third of
    the server's CPU on a burst of Allocates); the values are fields of
    the event all the same, for JSON.  Braces (a username may hold them)
    are doubled.
    """
    return text.replace("{", "{{").replace("}", "}}")


def _drops(dropped: Mapping[str, int]) -> str:
    """
    "; dropped: 3 dropped_no_permission, ..." or nothing.
    """
    if not dropped:
        return ""
    return "; dropped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
