# -*- test-case-name: tests.test_fleet -*-
"""
The per-user quota across a fleet of servers: what the core asks before
it creates an allocation, when a shared ledger is configured
(L{txturn.fleet.sharing.RedisFleet}).

Without a ledger each server counts its own allocations
(L{txturn.core.places}); with one, an Allocate first asks the ledger for one
more allocation of the user under the limit, and the ledger counts it
for the whole fleet.  A ledger that cannot be reached answers C{None}:
the server then decides with its own counts, as without one.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IQuotaLedger(Interface):
    """
    Allocations per user, counted for a whole fleet.
    """

    available = Attribute("Whether the ledger answers now (for metrics).")

    def acquire(username: str, limit: int) -> Any:
        """
        A Deferred firing with C{True} when C{username} may have one more
        allocation (it is counted from now on), C{False} when they hold
        C{limit} already (0: no limit), C{None} when the ledger cannot
        say.  Never fails.
        """

    def release(username: str) -> None:
        """
        An allocation C{acquire} granted was not created after all.
        (Deleted allocations are counted off from the server's events.)
        """
