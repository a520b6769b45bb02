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
import enum

#: Prometheus families the counters are exported in, with their help.
FAMILIES = {
    "dropped_packets": "Relayed packets dropped, by reason.",
    "quota_refusals": "Requests refused by a quota or limit.",
    "worker_transfers": (
        "Under --workers: RFC 6062 data connections handed to the worker holding "
        "their peer connection, and EVEN-PORT reservations fetched from another worker."
    ),
    "allocates_diverted": (
        "Allocates not served here: redirected to an alternate server (300), or "
        "refused while draining (508)."
    ),
    "challenges_rate_limited": "401 and 438 answers not sent: the source had its share.",
    "credentials_unavailable": (
        "Requests answered 500: the user database did not answer in time and had "
        "no recent keys of the user."
    ),
}

#: The label of each family that has one.
LABELS = {
    "dropped_packets": "reason",
    "quota_refusals": "quota",
    "worker_transfers": "kind",
    "allocates_diverted": "why",
}


class Counter(enum.Enum):
    """
    One thing the core counts: C{(family, label value)}, the label value
    C{None} for a family without a label.
    """

    # Relayed packets dropped.
    DROPPED_NO_PERMISSION = ("dropped_packets", "no_permission")
    DROPPED_UNBOUND_CHANNEL = ("dropped_packets", "unbound_channel")
    DROPPED_BANDWIDTH = ("dropped_packets", "bandwidth")
    DROPPED_OVERSIZE = ("dropped_packets", "oversize")
    DROPPED_CONGESTED = ("dropped_packets", "congested")
    REFUSED_PEER = ("dropped_packets", "refused_peer")
    # Requests refused by a quota or limit.
    USER_QUOTA = ("quota_refusals", "user")
    TOTAL_QUOTA = ("quota_refusals", "total")
    MAX_PERMISSIONS = ("quota_refusals", "permissions")
    MAX_CHANNELS = ("quota_refusals", "channels")
    MAX_PENDING_CONNECTIONS = ("quota_refusals", "pending_connections")
    RELAY_UNAVAILABLE = ("quota_refusals", "relay_ports")
    # Work moved between workers.
    HANDED_OFF = ("worker_transfers", "data_connection")
    RESERVATIONS_FETCHED = ("worker_transfers", "reservation")
    # Allocates sent elsewhere.
    REDIRECTED = ("allocates_diverted", "redirected")
    DRAINING = ("allocates_diverted", "draining")
    # Authentication.
    CHALLENGES_LIMITED = ("challenges_rate_limited", None)
    CREDENTIALS_UNAVAILABLE = ("credentials_unavailable", None)

    @property
    def family(self) -> str:
        family: str = self.value[0]
        return family

    @property
    def label(self) -> str | None:
        label: str | None = self.value[1]
        return label

    @property
    def key(self) -> str:
        """
        Its name in events and usage records: C{dropped_no_permission}...
        """
        return self.name.lower()


#: The core's counters: how many of each L{Counter}.
Counters = collections.Counter[Counter]
