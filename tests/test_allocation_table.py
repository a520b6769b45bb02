"""
Tests for L{txturn.core.table}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txturn.core.allocation import Allocation
from txturn.core.table import AllocationTable
from txturn.testing import RecordingClientChannel


def _allocation(channel: RecordingClientChannel, port: int, user: str = "u") -> Allocation:
    return Allocation(Clock(), channel, ("198.51.100.1", port), user, lambda a: None)


class AllocationTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = AllocationTable()
        self.one, self.two = RecordingClientChannel(), RecordingClientChannel()

    def test_indexes_in_step(self) -> None:
        """
        An added allocation is found by 5-tuple, by channel and counted for
        its user; removing it takes it out of all three.
        """
        first, second = _allocation(self.one, 1), _allocation(self.one, 2, "v")
        self.table.add(first)
        self.table.add(second)
        self.assertIs(self.table.get(self.one, ("198.51.100.1", 1)), first)
        self.assertEqual(set(self.table.on_channel(self.one)), {first, second})
        self.assertEqual(self.table.users, {"u": 1, "v": 1})
        self.assertTrue(self.table.remove(first))
        self.assertIsNone(self.table.get(self.one, ("198.51.100.1", 1)))
        self.assertEqual(self.table.on_channel(self.one), [second])
        self.assertEqual(self.table.users, {"v": 1})
        self.assertTrue(self.table.remove(second))
        self.assertFalse(self.table.has_channel(self.one))
        self.assertEqual((len(self.table), self.table.users), (0, {}))

    def test_remove_twice(self) -> None:
        """
        Removing an allocation that is gone already changes nothing, even
        when another allocation now holds its 5-tuple.
        """
        old, new = _allocation(self.one, 1), _allocation(self.one, 1)
        self.table.add(old)
        self.assertTrue(self.table.remove(old))
        self.table.add(new)
        self.assertFalse(self.table.remove(old))
        self.assertIs(self.table.get(self.one, ("198.51.100.1", 1)), new)
        self.assertEqual(self.table.held_by("u"), 1)

    def test_on_channel_is_a_snapshot(self) -> None:
        """
        The list C{on_channel} returns can be walked while its allocations
        are removed, and holds only that channel's allocations.
        """
        for port in range(3):
            self.table.add(_allocation(self.one, port))
        self.table.add(_allocation(self.two, 9))
        for allocation in self.table.on_channel(self.one):
            self.table.remove(allocation)
        self.assertEqual(len(self.table), 1)
        self.assertTrue(self.table.has_channel(self.two))

    def test_reservations_counted(self) -> None:
        """
        Places counted without an allocation (reservations) add to the
        user's count and disappear at zero.
        """
        self.table.count_user("u", 1)
        self.assertEqual(self.table.held_by("u"), 1)
        self.table.count_user("u", -1)
        self.assertEqual(self.table.users, {})
