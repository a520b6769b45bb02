# -*- test-case-name: tests.test_metrics -*-
"""
Counters named by enums: each member of a L{Counted} enum is one thing a
part of the server counts, and names the metric family (and label value)
L{txturn.observers.metrics} exports it under; L{family} registers each
family's help and label name.  Whatever counts keeps a
C{collections.Counter} keyed by its members and shows it read-only.
"""

from __future__ import annotations

import enum

#: Metric family (without C{turn_} and C{_total}) -> (help, label name or
#: C{None}).
FAMILIES: dict[str, tuple[str, str | None]] = {}


def family(name: str, help: str, label: str | None = None) -> str:
    """
    Register the family C{name}; returns it, for the members that use it.
    """
    FAMILIES[name] = (help, label)
    return name


class Counted(enum.Enum):
    """
    The base of every counter enum: a member's value is C{(family, label
    value)}, the label value C{None} in a family without a label.
    """

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
        Its name in events and records: C{dropped_no_permission}...
        """
        return self.name.lower()
