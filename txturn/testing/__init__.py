# -*- test-case-name: tests.test_testing -*-
"""
Test doubles for the TURN core, public so that applications embedding
txturn can test against it too: a recording client channel, fake relays,
and a small scripted STUN client that does the long-term credential
dance.
"""

from __future__ import annotations

import bisect
import collections
import datetime
import ipaddress
import os
from typing import Any, Callable, Mapping, Sequence, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from txturn.app.host_addresses import ipv6_available
from txturn.auth.credentials import ICredentialSource, NonceManager, StaticCredentials
from txturn.core.events import IServerObserver
from txturn.core.interfaces import (
    Address,
    IPeerConnection,
    IRelay,
    IRelayAllocator,
    IReservationBroker,
    IStreamClientChannel,
    ITcpRelay,
    ITcpRelayAllocator,
    RelayUnavailable,
)
from txturn.core.peer_policy import PeerPolicy, parse_range
from txturn.core.places import IPlaces
from txturn.core.quota_ledger import IQuotaLedger
from txturn.core.server import ServerConfig, TurnServer
from txturn.observers.event_log import EventLog
from txturn.tools.client import StunClient as StunClient  # re-exported for tests
from txturn.wire.stun import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    Message,
    Method,
)


@implementer(IStreamClientChannel)
class RecordingClientChannel:
    """
    An L{IClientChannel} that records what the server sends; with a
    C{"tcp"} or C{"tls"} transport name it stands for a connection, which
    a ConnectionBind may attach a peer to (L{IStreamClientChannel}).
    """

    def __init__(
        self, transport_name: str = "udp", local_address: Address = ("192.0.2.1", 3478)
    ) -> None:
        self.transport_name = transport_name
        self.stream = transport_name in ("tcp", "tls")
        self.local_address = local_address
        self.sent: list[tuple[bytes, Address]] = []
        self.attached: Any = None
        self.handed_off: tuple[int, bytes] | None = None
        #: Set by tests of the fast path (L{txturn.testing.forwarding_check}).
        self.forwarding_handle: int | None = None

    def send(self, data: bytes, address: Address) -> None:
        self.sent.append((data, address))

    def relayed(self, data: bytes, frames: int) -> None:
        """
        Frames the fast path framed for this stream client, joined.
        """
        self.sent.append((data, ("relayed", frames)))

    def attach(self, peer: Any) -> None:
        """
        Become a client data connection (stream transports only).
        """
        self.attached = peer

    def hand_off(self, worker: int, frame: bytes) -> bool:
        """
        Record a hand-off to another worker (stream transports only).
        """
        self.handed_off = (worker, frame)
        return True

    def pop(self) -> bytes:
        """
        The oldest unread datagram.
        """
        return self.sent.pop(0)[0]


def _discard(data: bytes, peer: Address) -> None:
    pass


def _discard_icmp(peer: Address, icmp_type: int, icmp_code: int, info: int) -> None:
    pass


@implementer(IRelay)
class FakeRelay:
    """
    A relay that records datagrams sent to peers; a test calls
    C{relay.receiver(data, peer)} to play a peer.
    """

    def __init__(self, address: Address, allocator: "FakeRelayAllocator | None" = None) -> None:
        self.address = address
        self.advertised = address
        self.receiver = _discard
        self.icmp_receiver = _discard_icmp
        self.sent: list[tuple[bytes, Address]] = []
        self.dont_fragment = False
        self.closed = False
        self._allocator = allocator
        #: The descriptor a fast path would know it by (a fake one).
        self.forwarding_handle: int | None = None

    def send(self, data: bytes, address: Address) -> None:
        self.sent.append((data, address))

    def set_dont_fragment(self, enabled: bool) -> None:
        self.dont_fragment = enabled

    def close(self) -> None:
        self.closed = True
        if self._allocator is not None:
            self._allocator.release(self)


@implementer(IRelayAllocator)
class FakeRelayAllocator:
    """
    Hands out L{FakeRelay}s on consecutive ports, up to C{capacity} at once.
    """

    def __init__(
        self,
        hosts: dict[int, str] | None = None,
        first_port: int = 50000,
        capacity: int = 1000,
        handles: bool = False,
    ) -> None:
        self.hosts = hosts if hosts is not None else {FAMILY_IPV4: "192.0.2.1"}
        #: Whether relays get fake descriptors, for a fast path's entries.
        self.handles = handles
        self.families = frozenset(self.hosts)
        self._first = self._next = first_port
        self._ports_in_use: set[int] = set()
        self.capacity = capacity
        self.open_relays: set[FakeRelay] = set()
        self.opened: list[FakeRelay] = []

    def _one(self, family: int) -> FakeRelay:
        while self._next in self._ports_in_use:
            self._next = self._next + 1 if self._next < 65535 else self._first
        relay = FakeRelay((self.hosts[family], self._next), self)
        if self.handles:
            relay.forwarding_handle = 1000 + self._next
        self._next = self._next + 1 if self._next < 65535 else self._first
        self.open_relays.add(relay)
        self._ports_in_use.add(relay.address[1])
        self.opened.append(relay)
        return relay

    def release(self, relay: FakeRelay) -> None:
        self.open_relays.discard(relay)
        self._ports_in_use.discard(relay.address[1])

    def open(
        self, family: int, even: bool, reserve_next: bool
    ) -> tuple[FakeRelay, FakeRelay | None]:
        if family not in self.hosts:
            raise RelayUnavailable("no such family", family_unsupported=True)
        if len(self.open_relays) + (2 if reserve_next else 1) > self.capacity:
            raise RelayUnavailable("exhausted")
        if (even or reserve_next) and self._next % 2:
            self._next += 1
        relay = self._one(family)
        return relay, self._one(family) if reserve_next else None


def exchange(
    client: StunClient,
    method: int,
    attributes: list[tuple[int, Any]] | None,
    send: Callable[[bytes], object],
    receive: Callable[[], bytes],
) -> Message:
    """
    Send a request as C{client} through C{send} and return the answer
    C{receive} gets, answering a 401 or 438 once first, as a real client
    does.
    """
    for _ in range(2):
        send(client.request(method, attributes))
        response = client.learn(receive())
        if not client.challenged(response):
            break
    return response


def authenticated_request(
    server: Any,
    channel: RecordingClientChannel,
    client: StunClient,
    method: int,
    attributes: list[tuple[int, Any]] | None,
    address: Address,
) -> Message:
    """
    L{exchange} with a core over C{channel}, from C{address}.
    """
    return exchange(
        client,
        method,
        attributes,
        lambda data: server.datagram_received(channel, data, address),
        channel.pop,
    )


def make_server(
    users: Mapping[str, str] | None = None,
    *,
    realm: str = "txturn",
    clock: IReactorTime | None = None,
    credentials: ICredentialSource | None = None,
    relays: IRelayAllocator | None = None,
    tcp_relays: ITcpRelayAllocator | None = None,
    policy: PeerPolicy | None = None,
    observers: Sequence[IServerObserver] | None = None,
    places: IPlaces | None = None,
    worker: tuple[int, int] = (0, 1),
    nonces: NonceManager | None = None,
    ledger: IQuotaLedger | None = None,
    reservation_broker: IReservationBroker | None = None,
    **config: Any,
) -> TurnServer:
    """
    A L{TurnServer} the way most tests want one: C{users} (name ->
    password) in C{realm}, unless C{credentials} are given; fake UDP
    relays; the L{documentation_peers} policy; a L{Clock}; and
    L{ServerConfig} fields as keywords.
    """
    return TurnServer(
        clock if clock is not None else Clock(),
        credentials
        if credentials is not None
        else StaticCredentials(realm, dict(users) if users is not None else {"u": "p"}),
        relays if relays is not None else FakeRelayAllocator(),
        policy if policy is not None else documentation_peers(),
        ServerConfig(realm=realm, **config),
        tcp_relays=tcp_relays,
        # The log, as twistd turn has it, unless the test chose.
        observers=observers if observers is not None else [EventLog()],
        places=places,
        worker=worker,
        nonces=nonces,
        ledger=ledger,
        reservation_broker=reservation_broker,
    )


_Test = TypeVar("_Test", bound=Callable[..., Any])


def needs_ipv6(test: _Test) -> _Test:
    """
    Skip the decorated test (trial's C{skip}) on a host that cannot bind
    IPv6 sockets.
    """
    if not ipv6_available():
        test.skip = "this host cannot bind IPv6 sockets"  # type: ignore[attr-defined]
    return test


def loopback_hosts() -> list[str]:
    """
    The loopback addresses this host can bind: 127.0.0.1, and ::1 when
    IPv6 works.
    """
    return ["127.0.0.1", "::1"] if ipv6_available() else ["127.0.0.1"]


def documentation_peers() -> PeerPolicy:
    """
    The default peer policy, but letting relays reach the documentation
    ranges (203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32) that tests use
    as peers, the way an operator would with C{--allowed-peer-ip}.
    """
    allowed = [
        r
        for text in ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")
        for r in parse_range(text)
    ]
    return PeerPolicy(allowed=allowed)


def peer_family(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


def self_signed_certificate(directory: str, name: str = "localhost") -> tuple[str, str]:
    """
    Write a self-signed certificate for C{name}, 127.0.0.1 and ::1 and its
    key into C{directory}; return their paths.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@implementer(IPeerConnection)
class FakePeerConnection:
    """
    A peer data connection that records what it is asked to do.
    """

    def __init__(self, peer_address: Address) -> None:
        self.peer_address = peer_address
        self.on_lost: Any = lambda connection: None
        self.attached_to: Any = None
        self.written: list[bytes] = []
        self.closed = False

    def attach(self, client: Any) -> None:
        self.attached_to = client

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.on_lost(self)


@implementer(ITcpRelay)
class FakeTcpRelay:
    """
    A TCP relay whose connects are Deferreds the test fires, and whose
    incoming connections the test makes with L{peer_connects}.
    """

    def __init__(self, address: Address) -> None:
        self.address = address
        self.advertised = address
        self.on_connection: Any = None
        self.receiver: Any = None
        self.icmp_receiver: Any = None
        self.connects: list[tuple[Address, Deferred[Any]]] = []
        self.closed = False

    def connect(self, peer: Address) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.connects.append((peer, d))
        return d

    def peer_connects(self, peer: Address) -> FakePeerConnection:
        connection = FakePeerConnection(peer)
        self.on_connection(connection)
        return connection

    def close(self) -> None:
        self.closed = True


@implementer(ITcpRelayAllocator)
class FakeTcpRelayAllocator:
    """
    Hands out L{FakeTcpRelay}s on consecutive ports.
    """

    def __init__(self, hosts: dict[int, str] | None = None, first_port: int = 60000) -> None:
        self.hosts = hosts if hosts is not None else {FAMILY_IPV4: "192.0.2.1"}
        self.families = frozenset(self.hosts)
        self._next = first_port
        self.opened: list[FakeTcpRelay] = []

    def open_tcp(self, family: int) -> FakeTcpRelay:
        if family not in self.hosts:
            raise RelayUnavailable("no such family", family_unsupported=True)
        relay = FakeTcpRelay((self.hosts[family], self._next))
        self._next += 1
        self.opened.append(relay)
        return relay


class _TrackedCall(DelayedCall):
    """
    A DelayedCall that reports every reset, even to a later time (Twisted's
    own defers those silently, which is fine for a reactor's heap but not
    for a list kept sorted incrementally).
    """

    def reset(self, secondsFromNow: float) -> None:
        super().reset(secondsFromNow)
        self.resetter(self)


class FastClock(Clock):
    """
    A L{Clock} for tests with tens of thousands of timers.

    Twisted's Clock re-sorts its whole list of calls on every callLater
    and after every call it fires, which is quadratic in the number of
    timers; this one inserts in order and sorts only after a reset.
    """

    def __init__(self) -> None:
        super().__init__()
        self._unsorted = False

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        call = _TrackedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            self.calls.remove,
            self._reset,
            self.seconds,
        )
        bisect.insort(self.calls, call, key=_due)
        return call

    def _reset(self, call: DelayedCall) -> None:
        self._unsorted = True

    def _sortCalls(self) -> None:
        if self._unsorted:
            self.calls.sort(key=_due)
            self._unsorted = False


def _due(call: DelayedCall) -> float:
    return call.getTime()


# -- clients over memory BIOs and datagram transports ------------------------


def binding(txid: bytes = b"t" * 12) -> bytes:
    """
    An unauthenticated Binding request.
    """
    return StunClient("u", "p").request(Method.BINDING, authenticate=False, transaction_id=txid)


def first_flight(client: SSL.Connection) -> bytes:
    """
    What a memory-BIO TLS or DTLS client sends first (its hello).
    """
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    data: bytes = client.bio_read(65536)
    return data


def pump(client: SSL.Connection, deliver: Any, collect: Any) -> None:
    """
    Shuttle bytes between a memory-BIO client and the server side until
    neither moves: C{deliver(data)} hands client output to the server,
    C{collect()} returns what the server sent.
    """
    for _ in range(10):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        moved = False
        while True:
            try:
                data = client.bio_read(65536)
            except SSL.WantReadError:
                break
            moved = True
            deliver(data)
        for data in collect():
            moved = True
            client.bio_write(data)
        if not moved:
            return


class FakeDatagramTransport:
    """
    Records what a DatagramProtocol writes.
    """

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any) -> None:
        self.written.append((data, address))

    def getHost(self) -> Any:
        return IPv4Address("UDP", "192.0.2.1", 5349)


class BufferedTransport(StringTransport):
    """
    A L{StringTransport} that pushes back the way a TCP transport does, so
    flow control can be tested in memory: past C{buffer_size} unread
    bytes it pauses its streaming producer, and resumes it once the far
    end has L{read} everything.  The other way, bytes the far end sends
    (L{receive}) reach the protocol only while this transport is not
    paused; the rest wait, like data in a socket nobody reads.
    """

    def __init__(self, buffer_size: int = 64 * 1024) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.buffer_size = buffer_size
        self.protocol: Protocol | None = None
        self._paused_producer = False
        self._inbound: collections.deque[bytes] = collections.deque()

    def connect(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)  # type: ignore[no-untyped-call]

    @property
    def unread(self) -> int:
        """
        Bytes written and not yet read by the far end.
        """
        return self.io.tell()

    @property
    def held_back(self) -> int:
        """
        Bytes the far end sent that the protocol has not been given.
        """
        return sum(len(data) for data in self._inbound)

    def write(self, data: bytes) -> None:
        super().write(data)  # type: ignore[no-untyped-call]
        if (
            self.producer is not None
            and self.streaming
            and not self._paused_producer
            and self.unread > self.buffer_size
        ):
            self._paused_producer = True
            self.producer.pauseProducing()

    def read(self, size: int | None = None) -> bytes:
        """
        The far end reads up to C{size} bytes (all, by default).
        """
        data = self.value()  # type: ignore[no-untyped-call]
        size = len(data) if size is None else size
        self.clear()  # type: ignore[no-untyped-call]
        self.io.write(data[size:])
        if not self.unread and self._paused_producer and self.producer is not None:
            self._paused_producer = False
            self.producer.resumeProducing()
        return bytes(data[:size])

    def receive(self, data: bytes) -> None:
        """
        The far end sends C{data}.
        """
        self._inbound.append(data)
        self._deliver()

    def resumeProducing(self) -> None:
        super().resumeProducing()  # type: ignore[no-untyped-call]
        self._deliver()

    def _deliver(self) -> None:
        while self._inbound and self.producerState == "producing" and self.protocol is not None:
            self.protocol.dataReceived(self._inbound.popleft())
