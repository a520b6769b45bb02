"""
Hostile bytes against the transports themselves: mutated DTLS records
(cookieless and cookied hellos, handshake flights, application data of a
live session) into the DTLS listener, and mutated TLS records, cut at
random, into the TLS layer in front of the stream framing.  Nothing may
escape, nothing may reach the last-resort handler, and what the
listener holds stays within its caps.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from tests.test_framing import CREDENTIALS, FakeDatagramTransport, binding, pump
from tests.test_fuzz import logged_failures, mutate
from txturn.credentials import StaticCredentials
from txturn.dtls import DtlsListener
from txturn.server import ServerConfig, TurnServer
from txturn.stream import TurnStreamFactory
from txturn.testing import FakeRelayAllocator, FastClock, documentation_peers

REALM = "fuzz"
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
    listener = DtlsListener(server, CREDENTIALS.dtls_context(), clock, max_sessions=50)
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
        CREDENTIALS.connection_creator(), False, TurnStreamFactory(server, "tls"), clock=clock
    )
    address = IPv4Address("TCP", "203.0.113.8", 5000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
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
        out = transport.value()
        transport.clear()
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


class TransportFuzzTests(SynchronousTestCase):
    def test_mutations(self) -> None:
        """
        4,000 mutated DTLS and TLS records: nothing escapes, nothing reaches
        the last-resort handler, the listener stays within its cap.
        """
        result = fuzz_transports(4_000, seed=2026)
        self.assertEqual(result["escaped"], [])
        self.assertEqual(result["failures"], [], [f.getTraceback() for f in result["failures"][:3]])
        self.assertLessEqual(result["most_sessions"], result["max_sessions"])
