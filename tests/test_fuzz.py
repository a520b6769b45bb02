"""
Hostile input to the server core: mutations of real requests never raise,
never reach the last-resort error handler, and leave no state for senders
that never authenticated.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator, cast

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txturn.credentials import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.server import ServerConfig, TurnServer
from txturn.stream import TurnStreamFactory
from txturn.stun import Attr, Class, Message, Method, decode, encode
from txturn.testing import (
    FakeRelayAllocator,
    FakeTcpRelayAllocator,
    FastClock,
    RecordingClientChannel,
    StunClient,
    documentation_peers,
)

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
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)]),
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.ADDITIONAL_ADDRESS_FAMILY, 2)]),
        (Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer)]),
        (Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, 1234)]),
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


def mutate_signed(rng: random.Random, client: StunClient, data: bytes) -> bytes:
    """
    Corrupt attribute values of a real authenticated request, then sign it
    again: past authentication, every handler sees hostile values.
    """
    message = decode(data)
    attributes = [
        (t, v)
        for t, v in message.attributes
        if t not in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)
    ]
    credentials = {Attr.USERNAME, Attr.REALM, Attr.NONCE}
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        candidates = [i for i, (t, _) in enumerate(attributes) if t not in credentials]
        if choice < 0.5 and candidates:
            i = rng.choice(candidates)
            t, value = attributes[i]
            changed = bytearray(value)
            if changed and rng.random() < 0.5:
                changed[rng.randrange(len(changed))] = rng.randrange(256)
            else:
                changed = bytearray(rng.randbytes(rng.randint(0, 24)))
            attributes[i] = (t, bytes(changed))
        elif choice < 0.7:
            # A duplicate, or an attribute of any type at all.
            t = rng.choice([t for t, _ in attributes] + [rng.randrange(0x10000)])
            attributes.insert(
                rng.randrange(len(attributes) + 1), (t, rng.randbytes(rng.randint(0, 24)))
            )
        elif choice < 0.85 and candidates:
            del attributes[rng.choice(candidates)]
        else:
            message.method = rng.choice([m for m in Method])
    signed = Message(message.method, message.cls, rng.randbytes(12), attributes)
    return encode(signed, client.key, add_fingerprint=rng.random() < 0.5)


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


@contextmanager
def logged_failures() -> Iterator[list[Any]]:
    """
    Collect every failure logged while the block runs: what reached a
    last-resort handler.
    """
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event["log_failure"])

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield failures
    finally:
        globalLogPublisher.removeObserver(observer)


def fuzz(iterations: int, seed: int) -> dict[str, Any]:
    """
    Feed C{iterations} mutated requests to a fresh core, alternately as
    datagrams and as randomly cut stream chunks through TCP framing.

    Returns what a test or the long run in bench/fuzz.py checks: failures
    logged by the last-resort handler, exceptions that escaped, and the
    state left for addresses that never authenticated.
    """
    clock = FastClock()
    server = TurnServer(
        clock,
        CredentialChain([StaticCredentials(REALM, {"u": "p"}), RestApiCredentials("s")]),
        FakeRelayAllocator(capacity=1_000_000),
        documentation_peers(),
        config=ServerConfig(realm=REALM, challenge_rate=1e9, challenge_burst=1e9),
        tcp_relays=FakeTcpRelayAllocator(),
    )
    channel = RecordingClientChannel()
    client = StunClient("u", "p")
    client.realm = REALM
    client.nonce = server.nonces.issue("198.51.100.1", clock.seconds())
    corpus = seeds(client)
    rng = random.Random(seed)
    escaped: list[str] = []
    stream: Any = None
    successes = 0
    with logged_failures() as failures:
        for i in range(iterations):
            original = rng.choice(corpus)
            if i % 3 == 1 and original[0] < 0x40 and decode(original).integrity_offset is not None:
                data = mutate_signed(rng, client, original)
            else:
                data = mutate(rng, original)
            try:
                if i % 2:
                    # Only this address ever authenticates.
                    server.datagram_received(channel, data, ("198.51.100.1", 1000))
                else:
                    if stream is None or i % 64 == 0:
                        stream = TurnStreamFactory(server, "tcp").buildProtocol(None)
                        stream.makeConnection(
                            StringTransport(
                                peerAddress=IPv4Address("TCP", "198.51.100.2", i % 60000)
                            )
                        )
                    cut = rng.randint(0, len(data))
                    stream.dataReceived(data[:cut])
                    stream.dataReceived(data[cut:])
                    if stream.transport.disconnecting:
                        stream.connectionLost()
                        stream = None
            except Exception as e:  # noqa: BLE001 - counting what escapes is the point
                escaped.append(repr(e))
            # Success responses are 0x01xx without the error bit 0x0010.
            successes += sum(1 for sent, _ in channel.sent if sent[0] == 1 and not sent[1] & 0x10)
            channel.sent.clear()
            if i % 1000 == 0:
                clock.advance(1)
    strangers = [a for _, a in server.allocations if a != ("198.51.100.1", 1000)]
    return {
        "successes": successes,
        "iterations": iterations,
        "failures": failures,
        "escaped": escaped,
        "strangers": strangers,
        "server": server,
        "clock": clock,
    }


class FuzzTests(SynchronousTestCase):
    """
    A bounded mutation fuzz run (the long run lives in bench/).
    """

    def test_mutations(self) -> None:
        """
        20,000 mutated requests, as datagrams and as stream chunks cut at
        random: nothing escapes, nothing reaches the last-resort handler,
        only the authenticating address ever has an allocation, and every
        timer goes with shutdown.
        """
        result = fuzz(20_000, seed=2026)
        # Re-signed mutations get past authentication into the handlers.
        self.assertGreater(result["successes"], 50)
        self.assertEqual(result["escaped"], [])
        self.assertEqual(result["failures"], [], [f.getTraceback() for f in result["failures"][:3]])
        self.assertEqual(result["strangers"], [])
        result["server"].shutdown()
        self.assertEqual(result["clock"].getDelayedCalls(), [])
