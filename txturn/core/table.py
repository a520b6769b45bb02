# -*- test-case-name: tests.test_allocation_table -*-
"""
The allocations of one server, found three ways: by 5-tuple (every
packet), by client channel (a closing connection takes its own
allocations with it, without scanning the table) and by user (quotas).

One class keeps the three in step, so no caller can add an allocation to
one index and forget another.  What each user holds is counted in an
L{IPlaces}: this process's own, or one shared by every worker.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from txturn.core.allocation import Allocation
from txturn.core.interfaces import Address, IClientChannel
from txturn.core.places import IPlaces, LocalPlaces


class AllocationTable:
    """
    @ivar by_five_tuple: (client channel, client address) -> allocation;
        read-only for everyone but this class.  The hot path looks
        allocations up in it directly, which is why it is public.
    """

    def __init__(self, places: IPlaces | None = None) -> None:
        self.by_five_tuple: dict[tuple[IClientChannel, Address], Allocation] = {}
        self._by_channel: dict[IClientChannel, set[Address]] = {}
        #: What each user holds: allocations and EVEN-PORT reservations.
        self.places: IPlaces = places if places is not None else LocalPlaces()

    def __len__(self) -> int:
        return len(self.by_five_tuple)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self.by_five_tuple.values()))

    def get(self, client: IClientChannel, address: Address) -> Allocation | None:
        return self.by_five_tuple.get((client, address))

    def add(self, allocation: Allocation) -> None:
        client, address = allocation.client, allocation.client_address
        self.by_five_tuple[(client, address)] = allocation
        self._by_channel.setdefault(client, set()).add(address)
        self.count_user(allocation.username, 1)

    def remove(self, allocation: Allocation) -> bool:
        """
        Forget C{allocation}; C{False} if it was not in the table (it has
        been removed already).
        """
        client, address = allocation.client, allocation.client_address
        if self.by_five_tuple.get((client, address)) is not allocation:
            return False
        del self.by_five_tuple[(client, address)]
        addresses = self._by_channel[client]
        addresses.discard(address)
        if not addresses:
            del self._by_channel[client]
        self.count_user(allocation.username, -1)
        return True

    def on_channel(self, client: IClientChannel) -> list[Allocation]:
        """
        The allocations held over C{client}, a snapshot that survives
        their removal while the caller walks it.
        """
        table = self.by_five_tuple
        return [table[(client, address)] for address in self._by_channel.get(client, ())]

    def has_channel(self, client: IClientChannel) -> bool:
        return client in self._by_channel

    def count_user(self, username: str, delta: int) -> None:
        """
        Add C{delta} places to what C{username} holds; a reservation
        counts as one, like an allocation.
        """
        self.places.add(username, delta)

    def held_by(self, username: str) -> int:
        return self.places.held_by(username)

    @property
    def users(self) -> Mapping[str, int]:
        """
        How many places each user holds, for operators and tests (with
        shared places, the allocations of this process only).
        """
        if isinstance(self.places, LocalPlaces):
            return self.places.users
        users: dict[str, int] = {}
        for allocation in self.by_five_tuple.values():
            users[allocation.username] = users.get(allocation.username, 0) + 1
        return users
