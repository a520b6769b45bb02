"""
Per-packet cost of txturn's own code on the relay hot path, without
sockets: ChannelData from the client to the peer, and a peer datagram back
to the client as ChannelData, through the real core with no-op sends.

usage: python bench/hotpath.py [--packets 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from txturn.credentials import StaticCredentials  # noqa: E402
from txturn.server import TurnServer  # noqa: E402
from txturn.stun import Attr, Method  # noqa: E402
from txturn.testing import FakeRelayAllocator, RecordingClientChannel, StunClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=1_000_000)
    args = parser.parse_args()
    clock = Clock()
    relays = FakeRelayAllocator()
    server = TurnServer(clock, StaticCredentials("txturn", {"u": "p"}), relays)
    channel = RecordingClientChannel()
    client_address = ("198.51.100.1", 5000)
    peer = ("203.0.113.1", 6000)
    client = StunClient("u", "p")
    steps: list[tuple[int, list[tuple[int, Any]]]] = [
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
        (Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peer)]),
    ]
    for method, attrs in steps:
        server.datagram_received(channel, client.request(method, attrs), client_address)
        client.learn(channel.pop())
    relay = relays.opened[0]
    relay.send = lambda data, address: None  # type: ignore[method-assign]
    channel.send = lambda data, address: None  # type: ignore[method-assign]
    frame = b"\x40\x00\x00\x64" + b"x" * 100
    payload = b"y" * 100
    n = args.packets
    start = time.perf_counter()
    for _ in range(n):
        server.datagram_received(channel, frame, client_address)
    up = (time.perf_counter() - start) / n
    receiver = relay.receiver
    start = time.perf_counter()
    for _ in range(n):
        receiver(payload, peer)
    down = (time.perf_counter() - start) / n
    print(  # noqa: T201 - a benchmark prints its figures
        f"client->peer {up * 1e9:6.0f} ns/packet   peer->client {down * 1e9:6.0f} ns/packet"
    )


if __name__ == "__main__":
    main()
