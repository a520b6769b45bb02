"""
Hostile input to the server core: mutations of real requests never raise,
never reach the last-resort error handler, and leave no state for senders
that never authenticated.
"""

from __future__ import annotations

import random
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txturn.auth import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.server import ServerConfig, TurnServer
from txturn.stun import Attr, Class, Method
from txturn.testing import FakeRelayAllocator, RecordingClientChannel, StunClient

REALM = "fuzz"


def seeds(client: StunClient) -> list[bytes]:
    """
    Real requests of every kind, unauthenticated and authenticated.
    """
    peer = ("203.0.113.1", 9)
    requests: list[tuple[int, list[tuple[int, Any]]]] = [
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 900)]),
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True)]),
        (Method.REFRESH, [(Attr.LIFETIME, 0)]),
        (Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)]),
        (Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4001), (Attr.XOR_PEER_ADDRESS, peer)]),
        (Method.BINDING, []),
    ]
    out = [client.request(m, a, authenticate=False) for m, a in requests]
    out += [client.request(m, a) for m, a in requests]
    out.append(
        client.request(
            Method.SEND,
            [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, b"data")],
            authenticate=False,
            cls=Class.INDICATION,
        )
    )
    out.append(b"\x40\x01\x00\x04data")
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    """
    Flip, insert, delete, truncate or splice bytes, keeping the header
    plausible often enough to reach the attribute and request logic.
    """
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice < 0.55:
            buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
        elif choice < 0.7 and buf:
            del buf[rng.randrange(len(buf))]
        elif choice < 0.8:
            del buf[rng.randrange(len(buf) + 1) :]
        elif choice < 0.9 and len(buf) >= 4:
            # Fix the length field so the attribute parser is reached.
            body = len(buf) - 20
            if body >= 0:
                buf[2:4] = (body & 0xFFFF).to_bytes(2, "big")
        else:
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(buf)


class FuzzTests(SynchronousTestCase):
    """
    A bounded mutation fuzz run (the long run lives in bench/).
    """

    def run_fuzz(self, iterations: int, seed: int) -> tuple[TurnServer, Clock]:
        clock = Clock()
        server = TurnServer(
            clock,
            CredentialChain([StaticCredentials(REALM, {"u": "p"}), RestApiCredentials("s")]),
            FakeRelayAllocator(),
            config=ServerConfig(realm=REALM),
        )
        channel = RecordingClientChannel()
        client = StunClient("u", "p")
        client.realm = REALM
        client.nonce = server.nonces.issue("198.51.100.1", clock.seconds())
        corpus = seeds(client)
        rng = random.Random(seed)
        failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                failures.append(event)

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        try:
            for i in range(iterations):
                data = mutate(rng, rng.choice(corpus))
                # Unauthenticated senders use other addresses.
                address = ("198.51.100.1", 1000) if i % 2 else ("198.51.100.2", i % 5000)
                server.datagram_received(channel, data, address)
                if i % 1000 == 0:
                    channel.sent.clear()
                    clock.advance(1)
        finally:
            globalLogPublisher.removeObserver(observer)
        self.assertEqual(failures, [], [f["log_failure"].getTraceback() for f in failures[:3]])
        return server, clock

    def test_mutations(self) -> None:
        """
        20,000 mutated requests: nothing raises, nothing reaches the
        last-resort handler, and only the authenticating address ever has
        an allocation.
        """
        server, clock = self.run_fuzz(20_000, seed=2026)
        for _, address in server.allocations:
            self.assertEqual(address, ("198.51.100.1", 1000))
        server.shutdown()
        self.assertEqual(clock.getDelayedCalls(), [])
