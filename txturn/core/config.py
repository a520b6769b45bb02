# -*- test-case-name: tests.test_server -*-
"""
The knobs of the TURN core (L{ServerConfig}), with the defaults of RFC
8656 and coturn, and the default per-user quota (L{user_quota_for}).
"""

from __future__ import annotations

from dataclasses import dataclass

from txturn import __version__


@dataclass(frozen=True)
class ServerConfig:
    """
    The knobs of the TURN core, with the defaults of RFC 8656 and coturn.
    """

    realm: str = "txturn"
    software: str | None = f"txturn {__version__}"
    default_lifetime: float = 600.0
    max_lifetime: float = 3600.0
    nonce_lifetime: float = 600.0
    #: Whether UDP and TCP relays may be allocated (coturn's no-udp-relay,
    #: no-tcp-relay): a forbidden UDP relay is 403, a TCP one 442.
    udp_relay: bool = True
    tcp_relay: bool = True
    #: How long a Connect may take before 447; RFC 6062 says at least 30 s.
    tcp_connect_timeout: float = 30.0
    #: Concurrent allocations per user (486; EVEN-PORT reservations count
    #: as allocations) and on the server (508); permissions and channels
    #: per allocation (508); unbound RFC 6062 connections and Connects in
    #: progress per TCP allocation (508); relayed bytes per second per
    #: allocation, both directions, excess dropped.  0 means no limit.
    #: C{user_quota=None} (the default) is half of what the server can
    #: hold, which L{txturn.app.service.TurnService} works out from its relay
    #: ports and descriptors (L{user_quota_for}): one user cannot take the
    #: server, and a crowd sharing one credential still fits (a bare core
    #: with no service has no such limit).  doc/security.rst.
    user_quota: int | None = None
    total_quota: int = 0
    max_permissions: int = 128
    max_channels: int = 128
    max_pending_connections: int = 32
    max_bps: int = 0
    #: 401 and 438 answers per second to one source address, and the
    #: burst (ten seconds' worth): beyond it the server stays silent, so
    #: over time a spoofed address gets at most the rate, whatever the
    #: burst, while 1,000 clients starting at once behind one NAT are all
    #: answered at once.
    challenge_rate: float = 100.0
    challenge_burst: float = 1000.0
    #: The burst of a source that has answered a challenge (an
    #: authenticated request came from it, with a nonce bound to its
    #: address): a crowd behind one NAT keeps being answered.
    challenge_proven_burst: float = 4000.0
    #: Other servers an Allocate is redirected to (300 Try Alternate with
    #: ALTERNATE-SERVER, round robin), so a fleet is balanced with no load
    #: balancer in the media path: always, or once C{alternate_load}
    #: allocations are held, and while draining.
    alternate_servers: tuple[tuple[str, int], ...] = ()
    alternate_load: int = 0
    #: The name clients use for this fleet over TLS (ALTERNATE-DOMAIN).
    server_name: str | None = None


def user_quota_for(capacity: int) -> int:
    """
    The default per-user allocation limit on a server that can hold
    C{capacity} allocations: half of it.  One user (or one stolen
    credential) cannot take the whole server, while a crowd that shares a
    credential, as the generated user and most static-user deployments
    do, is limited only by the server itself.
    """
    return max(1, capacity // 2)
