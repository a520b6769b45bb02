# -*- test-case-name: tests.test_fuzz,tests.test_fuzz_transports -*-
"""
The mutation fuzzers, shared by the test suite (a bounded run) and
C{bench/fuzz.py} (a million inputs each).

L{fuzz} feeds mutations of real requests to the core, as datagrams and as
stream chunks cut at random, a third of them re-signed so they get past
authentication.  L{fuzz_transports} feeds mutated DTLS records (hellos,
flights, a live session's data) to the DTLS listener and mutated TLS
records to the TLS layer.  Both report what escaped, what reached a
last-resort handler and what was left behind for strangers.
"""

from __future__ import annotations

import functools
import random
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, cast

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory

from txturn.auth.credentials import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.core.server import ServerConfig, TurnServer
from txturn.testing import (
    FakeDatagramTransport,
    FakeRelayAllocator,
    FakeTcpRelayAllocator,
    FastClock,
    RecordingClientChannel,
    StunClient,
    binding,
    documentation_peers,
    pump,
    self_signed_certificate,
)
from txturn.transports.dtls import DtlsListener
from txturn.transports.stream import TurnStreamFactory
from txturn.transports.tls import TlsCredentials
from txturn.wire.stun import Attr, Class, Message, Method, decode, encode


@functools.lru_cache(maxsize=1)
def _credentials() -> TlsCredentials:
    """
    A self-signed certificate for the TLS and DTLS targets, made once.
    """
    return TlsCredentials(*self_signed_certificate(tempfile.mkdtemp()))


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


class _StreamFeeder:
    """
    Feeds data to TCP connections of a server, each in two chunks cut at
    a given point, opening a new connection when asked or when the last
    one closed on bad framing.
    """

    def __init__(self, server: TurnServer) -> None:
        self._server = server
        self._stream: Any = None

    def feed(self, data: bytes, cut: int, fresh: bool, port: int) -> None:
        if self._stream is None or fresh:
            self._stream = TurnStreamFactory(self._server, "tcp").buildProtocol(None)
            self._stream.makeConnection(
                StringTransport(  # type: ignore[no-untyped-call]
                    peerAddress=IPv4Address("TCP", "198.51.100.2", port)
                )
            )
        self._stream.dataReceived(data[:cut])
        self._stream.dataReceived(data[cut:])
        if self._stream.transport.disconnecting:
            self._stream.connectionLost()
            self._stream = None


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
    stream = _StreamFeeder(server)
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
                    stream.feed(data, rng.randint(0, len(data)), fresh=i % 64 == 0, port=i % 60000)
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


LIVE = ("198.51.100.1", 4000)


def mutate_record(rng: random.Random, data: bytes) -> bytes:
    """
    L{mutate}, and now and then a record length fixed up to the bytes
    that follow, so OpenSSL's record parser goes deeper.
    """
    out = bytearray(mutate(rng, data))
    if len(out) >= 13 and rng.random() < 0.3:
        body = len(out) - 13
        out[11:13] = (body & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


class _Recorder:
    """
    Collects what a function is given, passing it on.
    """

    def __init__(self, target: Callable[[bytes], None]) -> None:
        self.seen: list[bytes] = []
        self._target = target

    def __call__(self, data: bytes) -> None:
        self.seen.append(data)
        self._target(data)


def fuzz_transports(iterations: int, seed: int) -> dict[str, Any]:
    """
    Feed C{iterations} mutated records, half to a DTLS listener and half
    to TLS connections; return what escaped, what reached the last-resort
    handler and the most the DTLS listener ever held.
    """
    rng = random.Random(seed)
    clock = FastClock()
    server = TurnServer(
        clock,
        StaticCredentials(REALM, {"u": "p"}),
        FakeRelayAllocator(capacity=1_000_000),
        documentation_peers(),
        config=ServerConfig(realm=REALM),
    )
    escaped: list[str] = []
    with logged_failures() as failures:
        listener, dtls_corpus = _dtls_target(server, clock)
        tls_corpus = _tls_corpus(server, clock)
        most_sessions = 0
        for i in range(iterations):
            try:
                if i % 2:
                    data = mutate_record(rng, rng.choice(dtls_corpus))
                    if rng.random() < 0.5:
                        address = LIVE
                    else:
                        address = ("203.0.113.7", rng.randrange(1, 200))
                    listener.datagramReceived(data, address)
                    most_sessions = max(most_sessions, len(listener.sessions))
                    if LIVE not in listener.sessions:
                        _establish(listener)
                else:
                    _tls_input(rng, server, clock, tls_corpus)
            except Exception as e:  # noqa: BLE001 - counting what escapes is the point
                escaped.append(repr(e))
            if i % 1000 == 0:
                clock.advance(1)
        listener.stopProtocol()
    return {
        "iterations": iterations,
        "escaped": escaped,
        "failures": failures,
        "most_sessions": most_sessions,
        "max_sessions": listener.max_sessions,
    }


def _dtls_target(server: TurnServer, clock: Any) -> tuple[DtlsListener, list[bytes]]:
    """
    A listener with one live session, and every datagram that session's
    client sent on the way (hellos, flights, application data).
    """
    listener = DtlsListener(server, _credentials().dtls_context(), clock, max_sessions=50)
    listener.transport = FakeDatagramTransport()  # type: ignore[assignment]
    listener.startProtocol()
    recorder = _Recorder(lambda data: listener.datagramReceived(data, LIVE))
    client = _establish(listener, recorder)
    client.send(binding())
    pump(client, recorder, lambda: _sent(listener))
    return listener, recorder.seen


def _sent(listener: DtlsListener) -> list[bytes]:
    transport: Any = listener.transport
    out = [data for data, _ in transport.written]
    transport.written.clear()
    return out


def _establish(listener: DtlsListener, deliver: Any = None) -> SSL.Connection:
    client = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
    client.set_connect_state()
    pump(
        client,
        deliver or (lambda data: listener.datagramReceived(data, LIVE)),
        lambda: _sent(listener),
    )
    return client


def _tls_connection(server: TurnServer, clock: Any) -> tuple[Any, StringTransport]:
    factory = TLSMemoryBIOFactory(
        _credentials().connection_creator(), False, TurnStreamFactory(server, "tls"), clock=clock
    )
    address = IPv4Address("TCP", "203.0.113.8", 5000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)  # type: ignore[no-untyped-call]
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return protocol, transport


def _tls_corpus(server: TurnServer, clock: Any) -> list[bytes]:
    """
    Every record a real TLS client sends: its handshake, then a Binding.
    """
    protocol, transport = _tls_connection(server, clock)
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    recorder = _Recorder(protocol.dataReceived)

    def collect() -> list[bytes]:
        clock.advance(0)
        out = transport.value()  # type: ignore[no-untyped-call]
        transport.clear()  # type: ignore[no-untyped-call]
        return [out] if out else []

    pump(client, recorder, collect)
    client.sendall(binding())
    pump(client, recorder, collect)
    return recorder.seen


def _tls_input(rng: random.Random, server: TurnServer, clock: Any, corpus: list[bytes]) -> None:
    """
    A fresh TLS connection gets the real records up to a point, then a
    mutated one cut in two, then the connection is lost.
    """
    protocol, transport = _tls_connection(server, clock)
    upto = rng.randrange(len(corpus))
    data = mutate_record(rng, corpus[upto])
    cut = rng.randint(0, len(data))
    for chunk in [*corpus[:upto], data[:cut], data[cut:]]:
        # A closing connection is no longer read (as the reactor stops
        # reading a transport that loses its connection).
        if transport.disconnecting:
            break
        if chunk:  # a transport never delivers nothing
            protocol.dataReceived(chunk)
    clock.advance(0)
    protocol.connectionLost(None)
