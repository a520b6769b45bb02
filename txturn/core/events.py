# -*- test-case-name: tests.test_events -*-
"""
Lifecycle events: what the TURN core announces to whatever watches it.

Logs, metrics, usage records and fleet accounting all watch the core the
same way: an L{IServerObserver} added to the server receives each event,
a small frozen record, as it happens.  Nothing is announced per relayed
packet; an allocation counts its packets and bytes each way and reports
the totals when it is deleted.

Allocations are named by C{allocation}, a number unique on the server,
so an observer can tie an allocation's events together without holding
the allocation itself.  An allocation's deletion takes its permissions,
channels with it (data connections announce their own close): L{AllocationDeleted} stands for
their ends too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from zope.interface import Interface

from txturn.core.interfaces import Address


class IServerObserver(Interface):
    """
    Something that watches a TURN server.
    """

    def observe(event: object) -> None:
        """
        One of the events of this module happened.  Must not raise; must
        not take long (it runs inside request handling).
        """


@dataclass(frozen=True)
class Traffic:
    """
    What an allocation relayed in one direction.
    """

    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class AllocationCreated:
    allocation: int
    username: str
    client: Address
    transport: str
    relays: tuple[Address, ...]
    lifetime: float
    tcp: bool = False
    #: The server's side of the client's 5-tuple: where the client sent.
    server: Address = ("", 0)


@dataclass(frozen=True)
class AllocationRefreshed:
    allocation: int
    username: str
    client: Address
    lifetime: float


@dataclass(frozen=True)
class AllocationDeleted:
    """
    @ivar reason: C{"expired"}, C{"refresh"} (the client deleted it),
        C{"connection closed"}, C{"revoked"} (its credential was) or
        C{"server stopping"}.
    @ivar duration: seconds since it was created.
    @ivar to_peers: what the client sent through it.
    @ivar to_client: what peers sent through it.
    @ivar dropped: relayed packets dropped, by reason: C{dropped_no_permission},
        C{dropped_unbound_channel}, C{dropped_bandwidth}, C{dropped_oversize},
        C{refused_peer} (a Send indication to a peer the policy refuses).
    """

    allocation: int
    username: str
    client: Address
    transport: str
    reason: str
    duration: float
    to_peers: Traffic
    to_client: Traffic
    dropped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PermissionInstalled:
    allocation: int
    peer: str


@dataclass(frozen=True)
class PermissionExpired:
    allocation: int
    peer: str


@dataclass(frozen=True)
class ChannelBound:
    allocation: int
    channel: int
    peer: Address


@dataclass(frozen=True)
class ChannelExpired:
    allocation: int
    channel: int
    peer: Address


@dataclass(frozen=True)
class DataConnectionOpened:
    """
    A peer data connection of a TCP allocation (RFC 6062) was bound to a
    client data connection.
    """

    allocation: int
    connection_id: int
    peer: Address


@dataclass(frozen=True)
class DataConnectionClosed:
    allocation: int
    connection_id: int
    peer: Address


@dataclass(frozen=True)
class RequestAnswered:
    """
    @ivar code: 0 for success, else the error code.
    @ivar username: who sent it, when it was authenticated.
    """

    method: int
    code: int
    client: Address
    transport: str
    username: str | None


@dataclass(frozen=True)
class AuthenticationFailed:
    """
    @ivar reason: C{"unknown user"}, C{"bad integrity"} (a wrong password),
        C{"expired credential"} (a REST name past its time), C{"revoked
        credential"}, C{"bad credential policy"} (a policy field that
        does not parse) or C{"stale nonce"}.
    """

    client: Address
    username: str | None
    reason: str
