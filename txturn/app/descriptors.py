# -*- test-case-name: tests.test_stream_guard -*-
"""
The process's file descriptor limit, and how it is shared.

Every client connection, relay socket and RFC 6062 data connection is a
descriptor.  A server that lets connections take them all fails Allocates
at random with 508; so the limit is read (and raised to the hard limit
where the system allows) when the service starts, and connections get a
quarter of it, relays the rest.
"""

from __future__ import annotations

import resource

#: Descriptors kept for listeners, log files, the interpreter itself.
RESERVED = 64
#: A soft limit is never raised past this, even when the hard limit is
#: unlimited: epoll handles it, and the allocations it allows are plenty.
CEILING = 1 << 20


def raise_limit() -> int:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit where permitted;
    return the soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft == resource.RLIM_INFINITY:
        return CEILING
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def connection_budget(limit: int) -> int:
    """
    TCP and TLS client connections allowed under a descriptor limit: a
    quarter of what is left after the reserve, so that each connection's
    relay, and UDP clients' relays, still find descriptors.
    """
    return max(16, (limit - RESERVED) // 4)


def allocation_budget(limit: int) -> int:
    """
    Allocations allowed under a descriptor limit: each holds at least one
    relay socket, and the connections' share is kept apart.
    """
    return max(16, limit - RESERVED - connection_budget(limit))
