# -*- test-case-name: tests.test_forwarding -*-
"""
What the core tells a fast path (L{IForwarding}), and the fast path of a
core that has none (L{NO_FORWARDING}).  The compiled one is
L{txturn.fastpath.forwarding}; the core knows only this interface, so it
imports nothing that holds a socket.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface, implementer

from txturn.core.interfaces import Address

#: Packets and bytes to peers, then packets and bytes to the client.
Counters = tuple[int, int, int, int]


class IForwarding(Interface):
    """
    What the core tells the fast path.  A slot is an allocation's handle
    there; the core holds it only while the allocation lives.
    """

    def open(client: Any, client_address: Address, txid_prefix: bytes) -> int | None:
        """
        A slot for a new allocation, or C{None} when its client channel is
        not forwarded (then nothing else is asked for it).
        """

    def close(slot: int) -> Counters:
        """
        Forget the slot and every entry of it; returns the counters not yet
        taken.
        """

    def take_counters(slot: int) -> Counters:
        """
        Packets and bytes the fast path relayed for the slot since the last
        take: to peers, then to the client.
        """

    def channel_bound(slot: int, channel: int, relay: Any, peer: Address) -> None:
        """
        ChannelData on C{channel} goes to C{peer} through C{relay}.
        """

    def channel_expired(slot: int, channel: int, relay: Any, peer: Address) -> None:
        """
        The binding is gone, both ways.
        """

    def peer_seen(
        slot: int, relay: Any, peer: Address, client: Any, client_address: Address, channel: int
    ) -> None:
        """
        Datagrams from C{peer} to C{relay} go to the client: as ChannelData
        on C{channel}, or as Data indications when C{channel} is 0.
        """

    def send_seen(slot: int, relay: Any, peer: Address) -> None:
        """
        Send indications to C{peer} go out through C{relay}.
        """

    def permission_expired(slot: int, host: str) -> None:
        """
        Nothing more from C{host}, nor to it by Send indication.
        """

    def relay_closed(slot: int, relay: Any) -> None:
        """
        Every entry through C{relay} goes (before its socket closes).
        """

    def policy_changed() -> None:
        """
        Every Send entry goes: the Python path checks the peer policy on
        each Send, so the new policy decides again.
        """


@implementer(IForwarding)
class NoForwarding:
    """
    The pure Python path: nothing is forwarded elsewhere.
    """

    def open(self, client: Any, client_address: Address, txid_prefix: bytes) -> int | None:
        return None

    def close(self, slot: int) -> Counters:
        return (0, 0, 0, 0)

    def take_counters(self, slot: int) -> Counters:
        return (0, 0, 0, 0)

    def channel_bound(self, slot: int, channel: int, relay: Any, peer: Address) -> None:
        pass

    def channel_expired(self, slot: int, channel: int, relay: Any, peer: Address) -> None:
        pass

    def peer_seen(
        self,
        slot: int,
        relay: Any,
        peer: Address,
        client: Any,
        client_address: Address,
        channel: int,
    ) -> None:
        pass

    def send_seen(self, slot: int, relay: Any, peer: Address) -> None:
        pass

    def permission_expired(self, slot: int, host: str) -> None:
        pass

    def relay_closed(self, slot: int, relay: Any) -> None:
        pass

    def policy_changed(self) -> None:
        pass


NO_FORWARDING = NoForwarding()
