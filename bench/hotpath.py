"""
Per-packet cost of txturn's own code on the relay hot path, without
sockets: through the real core with no-op sends, both ways, over a bound
channel (ChannelData) and without one (Send and Data indications, the
way Firefox relays).  Each path is checked to deliver before it is timed,
so a refused permission cannot pass for a fast path.

usage: python bench/hotpath.py [--packets 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from txturn.auth.credentials import StaticCredentials  # noqa: E402
from txturn.core.server import TurnServer  # noqa: E402
from txturn.testing import (  # noqa: E402
    FakeRelayAllocator,
    RecordingClientChannel,
    StunClient,
    documentation_peers,
)
from txturn.wire.stun import Attr, Class, Message, Method, encode  # noqa: E402

CLIENT = ("198.51.100.1", 5000)
CHANNEL_PEER = ("203.0.113.1", 6000)
INDICATION_PEER = ("203.0.113.2", 6000)


def timed(n: int, step: Callable[[], None]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=1_000_000)
    args = parser.parse_args()
    relays = FakeRelayAllocator()
    server = TurnServer(
        Clock(), StaticCredentials("txturn", {"u": "p"}), relays, documentation_peers()
    )
    channel = RecordingClientChannel()
    client = StunClient("u", "p")
    steps: list[tuple[int, list[tuple[int, Any]]]] = [
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
        (
            Method.CHANNEL_BIND,
            [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, CHANNEL_PEER)],
        ),
        (Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, INDICATION_PEER)]),
    ]
    for method, attrs in steps:
        server.datagram_received(channel, client.request(method, attrs), CLIENT)
        client.learn(channel.pop())
    relay = relays.opened[0]
    receiver = relay.receiver
    frame = b"\x40\x00\x00\x64" + b"x" * 100
    send = Message(Method.SEND, Class.INDICATION, b"s" * 12)
    send.add(Attr.XOR_PEER_ADDRESS, INDICATION_PEER).add(Attr.DATA, b"x" * 100)
    indication = encode(send)
    payload = b"y" * 100

    # Every path must deliver before it is timed.
    server.datagram_received(channel, frame, CLIENT)
    server.datagram_received(channel, indication, CLIENT)
    receiver(payload, CHANNEL_PEER)
    receiver(payload, INDICATION_PEER)
    assert [peer for _, peer in relay.sent] == [CHANNEL_PEER, INDICATION_PEER], relay.sent
    assert len(channel.sent) == 2, channel.sent

    relay.send = lambda data, address: None  # type: ignore[method-assign]
    channel.send = lambda data, address: None  # type: ignore[method-assign]
    n = args.packets
    figures = {
        "ChannelData client->peer": timed(
            n, lambda: server.datagram_received(channel, frame, CLIENT)
        ),
        "ChannelData peer->client": timed(n, lambda: receiver(payload, CHANNEL_PEER)),
        "Send indication client->peer": timed(
            n, lambda: server.datagram_received(channel, indication, CLIENT)
        ),
        "Data indication peer->client": timed(n, lambda: receiver(payload, INDICATION_PEER)),
    }
    for name, seconds in figures.items():
        print(f"{name:30s} {seconds * 1e9:6.0f} ns/packet")  # noqa: T201 - a benchmark prints


if __name__ == "__main__":
    main()
