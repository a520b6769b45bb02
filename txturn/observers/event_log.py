# -*- test-case-name: tests.test_events -*-
"""
The first observer of the core: one readable log line per allocation
created and deleted, per TCP data connection opened and closed, and per
authentication failure, with addresses as C{host:port} and every value
also a structured field of the event.
"""

from __future__ import annotations

from typing import Mapping

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
from txturn.util.log_level import logger


@implementer(IServerObserver)
class EventLog:
    """
    Logs lifecycle events through C{twisted.logger}.
    """

    log = logger("txturn")

    def observe(self, event: object) -> None:
        if isinstance(event, AllocationCreated):
            self.log.info(
                "Allocated {relays} for {user} from {client} over {transport} for {lifetime:.0f}s",
                allocation=event.allocation,
                relays=", ".join(host_port(r) for r in event.relays),
                user=event.username,
                client=host_port(event.client),
                transport=event.transport,
                lifetime=event.lifetime,
            )
        elif isinstance(event, AllocationDeleted):
            self.log.info(
                "Allocation {allocation} of {user} from {client} deleted ({reason}) after "
                "{duration:.0f}s: {to_peers_packets} packets, {to_peers_bytes} bytes to peers; "
                "{to_client_packets} packets, {to_client_bytes} bytes to the client{drops}",
                allocation=event.allocation,
                user=event.username,
                client=host_port(event.client),
                reason=event.reason,
                duration=event.duration,
                to_peers_packets=event.to_peers.packets,
                to_peers_bytes=event.to_peers.bytes,
                to_client_packets=event.to_client.packets,
                to_client_bytes=event.to_client.bytes,
                drops=_drops(event.dropped),
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


def _drops(dropped: Mapping[str, int]) -> str:
    """
    "; dropped: 3 dropped_no_permission, ..." or nothing.
    """
    if not dropped:
        return ""
    return "; dropped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
