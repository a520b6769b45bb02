# -*- test-case-name: tests.test_metrics -*-
"""
What the core counts, by name: L{Counter}.  Every member is exported by
L{txturn.observers.metrics} (a test checks that none is left out), in the
metric family and with the label its value names; its lower-case name is
the key in L{txturn.core.events.AllocationDeleted.dropped} and in usage
records.
"""

from __future__ import annotations

import collections

from txturn.util.counting import Counted, family

_DROPPED = family("dropped_packets", "Relayed packets dropped, by reason.", "reason")
_QUOTAS = family("quota_refusals", "Requests refused by a quota or limit.", "quota")
_TRANSFERS = family(
    "worker_transfers",
    "Under --workers: RFC 6062 data connections handed to the worker holding "
    "their peer connection, and EVEN-PORT reservations fetched from another worker.",
    "kind",
)
_DIVERTED = family(
    "allocates_diverted",
    "Allocates not served here: redirected to an alternate server (300), or "
    "refused while draining (508).",
    "why",
)
_CHALLENGES = family(
    "challenges_rate_limited", "401 and 438 answers not sent: the source had its share."
)
_UNAVAILABLE = family(
    "credentials_unavailable",
    "Requests answered 500: the user database did not answer in time and had "
    "no recent keys of the user.",
)


class Counter(Counted):
    """
    One thing the core counts: C{(family, label value)}, the label value
    C{None} for a family without a label.
    """

    # Relayed packets dropped.
    DROPPED_NO_PERMISSION = (_DROPPED, "no_permission")
    DROPPED_UNBOUND_CHANNEL = (_DROPPED, "unbound_channel")
    DROPPED_BANDWIDTH = (_DROPPED, "bandwidth")
    DROPPED_OVERSIZE = (_DROPPED, "oversize")
    DROPPED_CONGESTED = (_DROPPED, "congested")
    REFUSED_PEER = (_DROPPED, "refused_peer")
    # Requests refused by a quota or limit.
    USER_QUOTA = (_QUOTAS, "user")
    TOTAL_QUOTA = (_QUOTAS, "total")
    MAX_PERMISSIONS = (_QUOTAS, "permissions")
    MAX_CHANNELS = (_QUOTAS, "channels")
    MAX_PENDING_CONNECTIONS = (_QUOTAS, "pending_connections")
    RELAY_UNAVAILABLE = (_QUOTAS, "relay_ports")
    # Work moved between workers.
    HANDED_OFF = (_TRANSFERS, "data_connection")
    RESERVATIONS_FETCHED = (_TRANSFERS, "reservation")
    # Allocates sent elsewhere.
    REDIRECTED = (_DIVERTED, "redirected")
    DRAINING = (_DIVERTED, "draining")
    # Authentication.
    CHALLENGES_LIMITED = (_CHALLENGES, None)
    CREDENTIALS_UNAVAILABLE = (_UNAVAILABLE, None)


#: The core's counters: how many of each L{Counter}.
Counters = collections.Counter[Counter]
