"""
L{txturn.fastpath.xdp.XdpForwarding} in-process, on maps held in a
dict: which channels get entries, what the entries say (the program's
layout), when they go, and how their counts reach the allocation.  No
BPF: this runs anywhere; tests/test_xdp.py runs the program itself.
"""

from __future__ import annotations

import ctypes
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txturn.fastpath.xdp import (
    ChannelKey,
    ChannelValue,
    PeerKey,
    PeerValue,
    XdpCounter,
    XdpForwarding,
)


class FakeMaps:
    """
    The program's maps as dicts of key bytes -> value bytes.
    """

    def __init__(self, room: int = 100) -> None:
        self.maps: dict[str, dict[bytes, bytes]] = {"channel_entries": {}, "peer_entries": {}}
        self.room = room

    def update(self, name: str, key: Any, value: Any) -> bool:
        if len(self.maps[name]) >= self.room:
            return False
        self.maps[name][bytes(key)] = bytes(value)
        return True

    def read(self, name: str, key: Any, value: Any) -> bool:
        stored = self.maps[name].get(bytes(key))
        if stored is None:
            return False
        ctypes.memmove(ctypes.addressof(value), stored, len(stored))
        return True

    def take(self, name: str, key: Any, value: Any) -> bool:
        found = self.read(name, key, value)
        self.maps[name].pop(bytes(key), None)
        return found

    def count(self, name: str, packets: int, size: int) -> None:
        """
        What the program does: every entry of C{name} counts more.
        """
        kind = ChannelValue if name == "channel_entries" else PeerValue
        for key, stored in self.maps[name].items():
            value = kind.from_buffer_copy(stored)
            value.packets += packets
            value.bytes += size
            self.maps[name][key] = bytes(value)

    def stats(self) -> dict[str, int]:
        return {"to_peers": 7, "to_clients": 8, "no_route": 1, "too_big": 0}


class Inner:
    """
    The user-space path: slots, and counters of its own.
    """

    def __init__(self) -> None:
        self.slots = 0
        self.calls: list[str] = []

    def open(self, client: Any, client_address: Any, txid_prefix: bytes) -> int:
        self.slots += 1
        return self.slots

    def close(self, slot: int) -> tuple[int, int, int, int]:
        return (1, 10, 1, 10)

    def take_counters(self, slot: int) -> tuple[int, int, int, int]:
        return (1, 10, 1, 10)

    def __getattr__(self, name: str) -> Any:
        def called(*args: Any) -> None:
            self.calls.append(name)

        return called


class Client:
    transport_name = "udp"
    local_address = ("192.0.2.1", 3478)
    forwarding_handle = 5


class Relay:
    def __init__(self, address: tuple[str, int] = ("198.51.100.1", 50000)) -> None:
        self.address = address
        self.forwarding_handle = 7


PEER = ("203.0.113.9", 4000)
CLIENT = ("192.0.2.77", 40000)


class XdpForwardingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.maps = FakeMaps()
        self.inner = Inner()
        self.forwarding = XdpForwarding(self.inner, self.maps)  # type: ignore[arg-type]
        slot = self.forwarding.open(Client(), CLIENT, b"t" * 8)
        assert slot is not None
        self.slot: int = slot

    def entries(self) -> tuple[int, int]:
        return len(self.maps.maps["channel_entries"]), len(self.maps.maps["peer_entries"])

    def test_entries(self) -> None:
        """
        A bound channel: the client's ChannelData, keyed by the client's
        and the server's addresses and the channel, goes to the peer from
        the relay; the peer's datagrams to the relay go to the client as
        that channel.  Ports and channels are in network order.
        """
        self.forwarding.channel_bound(self.slot, 0x4001, Relay(), PEER)
        self.assertEqual(self.inner.calls, ["channel_bound"])
        [(key_bytes, value_bytes)] = self.maps.maps["channel_entries"].items()
        key, value = (
            ChannelKey.from_buffer_copy(key_bytes),
            ChannelValue.from_buffer_copy(value_bytes),
        )
        self.assertEqual(bytes(key.client)[:4], socket.inet_aton(CLIENT[0]))
        self.assertEqual(bytes(key.server)[:4], socket.inet_aton("192.0.2.1"))
        self.assertEqual(bytes(key.client)[4:], bytes(12))
        self.assertEqual(
            (key.client_port, key.server_port, key.channel, key.family),
            (socket.htons(40000), socket.htons(3478), socket.htons(0x4001), socket.AF_INET),
        )
        self.assertEqual(bytes(value.peer)[:4], socket.inet_aton(PEER[0]))
        self.assertEqual(
            (value.relay_port, value.peer_port), (socket.htons(50000), socket.htons(4000))
        )
        [(key_bytes, value_bytes)] = self.maps.maps["peer_entries"].items()
        peer_key, peer_value = (
            PeerKey.from_buffer_copy(key_bytes),
            PeerValue.from_buffer_copy(value_bytes),
        )
        self.assertEqual(bytes(peer_key.relay)[:4], socket.inet_aton("198.51.100.1"))
        self.assertEqual(peer_value.channel, socket.htons(0x4001))
        # A refresh keeps them; a channel bound to another peer replaces them.
        self.forwarding.channel_bound(self.slot, 0x4001, Relay(), PEER)
        self.assertEqual(self.entries(), (1, 1))
        self.forwarding.channel_bound(self.slot, 0x4001, Relay(), ("203.0.113.10", 4000))
        self.assertEqual(self.entries(), (1, 1))
        self.assertEqual(self.forwarding.entries(), 1)

    def test_counters(self) -> None:
        """
        What the program counted joins the user-space path's counters,
        once; what a removed entry counted is not lost.
        """
        self.forwarding.channel_bound(self.slot, 0x4001, Relay(), PEER)
        self.maps.count("channel_entries", 5, 500)
        self.maps.count("peer_entries", 2, 40)
        self.assertEqual(self.forwarding.take_counters(self.slot), (6, 510, 3, 50))
        self.assertEqual(self.forwarding.take_counters(self.slot), (1, 10, 1, 10))
        self.maps.count("channel_entries", 1, 100)
        self.forwarding.channel_expired(self.slot, 0x4001, Relay(), PEER)
        self.assertEqual(self.entries(), (0, 0))
        self.assertEqual(self.forwarding.close(self.slot), (2, 110, 1, 10))

    def test_removed(self) -> None:
        """
        Entries go with the permission of their peer, their relay, and
        the allocation.
        """
        other = Relay(("198.51.100.1", 50002))
        self.forwarding.channel_bound(self.slot, 0x4001, Relay(), PEER)
        self.forwarding.channel_bound(self.slot, 0x4002, other, ("203.0.113.11", 5))
        self.forwarding.permission_expired(self.slot, "203.0.113.99")
        self.assertEqual(self.entries(), (2, 2))
        self.forwarding.permission_expired(self.slot, PEER[0])
        self.assertEqual(self.entries(), (1, 1))
        self.forwarding.relay_closed(self.slot, other)
        self.assertEqual(self.entries(), (0, 0))
        self.forwarding.channel_bound(self.slot, 0x4001, Relay(), PEER)
        self.forwarding.close(self.slot)
        self.assertEqual(self.entries(), (0, 0))
        # Policy changes leave channels, as on the user-space path.
        self.forwarding.policy_changed()
        self.assertIn("policy_changed", self.inner.calls)

    def test_left_to_user_space(self) -> None:
        """
        No entries for what the program cannot relay: a TCP client, a
        wildcard listener, a relay of another family, a scoped peer.
        """

        class Tcp(Client):
            transport_name = "tcp"

        class Wildcard(Client):
            local_address = ("0.0.0.0", 3478)

        for client in (Tcp(), Wildcard()):
            slot = self.forwarding.open(client, CLIENT, b"t" * 8)
            assert slot is not None
            self.forwarding.channel_bound(slot, 0x4001, Relay(), PEER)
        self.forwarding.channel_bound(
            self.slot, 0x4001, Relay(("2001:db8::1", 5)), ("2001:db8::9", 4)
        )
        self.forwarding.channel_bound(self.slot, 0x4002, Relay(), ("fe80::1%eth0", 4))
        self.assertEqual(self.entries(), (0, 0))

    def test_full(self) -> None:
        """
        A full map: the channel stays in user space, said once.
        """
        self.maps.room = 0
        from twisted.logger import capturedLogs

        with capturedLogs() as events:
            self.forwarding.channel_bound(self.slot, 0x4001, Relay(), PEER)
            self.forwarding.channel_bound(self.slot, 0x4002, Relay(), ("203.0.113.11", 5))
        self.assertEqual(len(events), 1)
        self.assertEqual(self.forwarding.entries(), 0)

    def test_metrics(self) -> None:
        """
        Worker 0 (or the only process) reports the program's counters.
        """
        self.assertEqual(self.forwarding.counters()[XdpCounter.TO_PEERS], 7)
        worker = XdpForwarding(self.inner, self.maps, owner=1)  # type: ignore[arg-type]
        self.assertEqual(worker.counters(), {})
