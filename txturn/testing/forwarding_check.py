# -*- test-case-name: tests.test_forwarding -*-
"""
Holding the fast path to the Python path: two cores fed the same
datagrams, one with the compiled forwarder in front of it (as its socket
loop would be), one pure Python, and what each sends compared.

L{fuzz_forwarding} drives them with the mutation engine of
L{txturn.testing.fuzzing}: whatever the input, the fast path must send exactly
what the Python path sends (Data indications differ only in their
transaction ids), so it can never relay a packet the Python path would
have dropped.  It does so in each L{Topology}: IPv4 throughout, IPv6
throughout, both cross-family cases, and an IPv4 client seen through a
dual-stack socket.  The test suite runs it bounded; C{bench/fuzz.py}
runs a million inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from txturn.auth.credentials import NonceManager, StaticCredentials
from txturn.core.forwarding import NO_FORWARDING, IForwarding
from txturn.core.interfaces import Address
from txturn.core.server import ServerConfig, TurnServer
from txturn.fastpath.forwarding import Forwarding
from txturn.testing import (
    FakeRelay,
    FakeRelayAllocator,
    FastClock,
    RecordingClientChannel,
    StunClient,
    documentation_peers,
)
from txturn.testing.fuzzing import logged_failures, mutate, mutate_signed, seeds
from txturn.wire.stun import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    Attr,
    Class,
    Method,
    decode,
    encode_channel_data,
)

REALM = "twins"
CLIENT: Address = ("198.51.100.1", 1000)
#: The descriptor the fast core's (fake) UDP listener has; a stream
#: client's key is negative.
LISTENER = 7
STREAM_KEY = -7
#: A peer with a channel, one with only a permission, one with neither.
CHANNEL_PEER: Address = ("203.0.113.1", 9)
PERMITTED_PEER: Address = ("203.0.113.2", 5000)
STRANGER: Address = ("203.0.113.3", 6000)
CHANNEL = 0x4001

Sent = tuple[str, bytes, Address]


@dataclass(frozen=True)
class Topology:
    """
    The addresses of one run of the twins: the client's, the peers' (one
    with a channel, one with only a permission, one with neither) and the
    relay's, whose family the allocation requests.
    """

    name: str
    client: Address
    channel_peer: Address
    permitted_peer: Address
    stranger: Address
    relay_host: str
    #: The client's transport: C{"udp"}, C{"tcp"} for a stream client
    #: (frames arrive whole, as its connection's framer cuts them), or
    #: C{"dtls"} for a session (messages arrive decrypted, one at a time).
    transport: str = "udp"

    @property
    def handle(self) -> int:
        return LISTENER if self.transport == "udp" else STREAM_KEY

    @property
    def relay_family(self) -> int:
        return FAMILY_IPV6 if ":" in self.relay_host else FAMILY_IPV4


_V6_PEERS = (("2001:db8:1::1", 9), ("2001:db8:1::2", 5000), ("2001:db8:1::3", 6000))
_V4_PEERS = (CHANNEL_PEER, PERMITTED_PEER, STRANGER)
_V6_CLIENT: Address = ("2001:db8:c::1", 1000)

#: Every mix of families the fast path forwards.
TOPOLOGIES = {
    t.name: t
    for t in (
        Topology("ipv4", CLIENT, *_V4_PEERS, "192.0.2.1"),
        Topology("ipv6", _V6_CLIENT, *_V6_PEERS, "2001:db8:f::1"),
        Topology("ipv4-client-ipv6-relay", CLIENT, *_V6_PEERS, "2001:db8:f::1"),
        Topology("ipv6-client-ipv4-relay", _V6_CLIENT, *_V4_PEERS, "192.0.2.1"),
        # An IPv4 client as a dual-stack listening socket spells it.
        Topology("ipv4-mapped-client", ("::ffff:198.51.100.1", 1000), *_V4_PEERS, "192.0.2.1"),
        Topology("tcp-client", CLIENT, *_V4_PEERS, "192.0.2.1", "tcp"),
        Topology("tcp-client-ipv6", _V6_CLIENT, *_V6_PEERS, "2001:db8:f::1", "tcp"),
        Topology("dtls-client", CLIENT, *_V4_PEERS, "192.0.2.1", "dtls"),
    )
}


class _Core:
    """
    One core with its recording channel and fake relays.
    """

    def __init__(
        self, clock: FastClock, nonces: NonceManager, forwarding: IForwarding, topology: Topology
    ) -> None:
        relay_host = topology.relay_host
        fast = forwarding is not NO_FORWARDING
        family = FAMILY_IPV6 if ":" in relay_host else FAMILY_IPV4
        self.relays = FakeRelayAllocator({family: relay_host}, capacity=64, handles=fast)
        self.server = TurnServer(
            clock,
            StaticCredentials(REALM, {"u": "p"}),
            self.relays,
            documentation_peers(),
            config=ServerConfig(realm=REALM, challenge_rate=1e9, challenge_burst=1e9),
            nonces=nonces,
            forwarding=forwarding,
        )
        self.channel = RecordingClientChannel(topology.transport)
        if fast:
            self.channel.forwarding_handle = topology.handle

    def relay_at(self, address: Address) -> FakeRelay | None:
        for relay in self.relays.open_relays:
            if relay.address == address:
                return relay
        return None

    def take_sent(self) -> list[Sent]:
        """
        Everything sent since last asked: to the client, and by each relay.
        """
        out: list[Sent] = [
            ("client", _masked(data), to)
            for data, to in self.channel.sent
            # What the fast path joined for a stream client is recorded
            # by the twins frame by frame instead.
            if to[0] != "relayed"
        ]
        self.channel.sent.clear()
        for relay in sorted(self.relays.opened, key=lambda r: r.address):
            out += [(f"relay {relay.address[1]}", data, to) for data, to in relay.sent]
            relay.sent.clear()
        return out


def _masked(data: bytes) -> bytes:
    """
    A Data indication without its transaction id, which each path draws
    on its own: zeroed, and an IPv6 XOR-PEER-ADDRESS (XORed with it)
    un-XORed first.
    """
    if data[:2] != b"\x00\x17" or len(data) < 20:
        return data
    out = bytearray(data)
    offset = 20
    while offset + 4 <= len(out):
        kind, size = (
            int.from_bytes(out[offset : offset + 2]),
            int.from_bytes(out[offset + 2 : offset + 4]),
        )
        if kind == Attr.XOR_PEER_ADDRESS and size == 20 and offset + 24 <= len(out):
            for i in range(16):
                out[offset + 8 + i] ^= data[4 + i]
        offset += 4 + size + (-size % 4)
    out[8:20] = bytes(12)
    return bytes(out)


class TwinServers:
    """
    A fast core and a pure Python core in lock step.

    @ivar forwarded: datagrams the fast path sent itself.
    """

    def __init__(
        self, clock: FastClock, module: ModuleType, topology: Topology = TOPOLOGIES["ipv4"]
    ) -> None:
        self.clock = clock
        self.topology = topology
        self.nonces = NonceManager(secret=b"twins" * 7)
        self.forwarding = Forwarding(module)
        self.fast = _Core(clock, self.nonces, self.forwarding, topology)
        self.slow = _Core(clock, self.nonces, NO_FORWARDING, topology)
        self.client = StunClient("u", "p")
        self.client.realm = REALM
        self.forwarded = 0

    def renew_nonce(self) -> None:
        self.client.nonce = self.nonces.issue(self.topology.client[0], self.clock.seconds())

    def set_up(self) -> None:
        """
        An allocation (of the topology's relay family) with a channel to
        its channel peer and a permission for its permitted peer, in both
        cores.
        """
        self.renew_nonce()
        t = self.topology
        allocate: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 3600)]
        if t.relay_family == FAMILY_IPV6:
            allocate.append((Attr.REQUESTED_ADDRESS_FAMILY, 2))
        requests: list[tuple[int, list[tuple[int, Any]]]] = [
            # An hour: the channel's 600 s end before the allocation's.
            (Method.ALLOCATE, allocate),
            (
                Method.CHANNEL_BIND,
                [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, t.channel_peer)],
            ),
            (Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, t.permitted_peer)]),
        ]
        for method, attributes in requests:
            self.from_client(self.client.request(method, attributes))

    def relay_address(self) -> Address | None:
        allocation = self.slow.server.state.table.get(self.slow.channel, self.topology.client)
        if allocation is None or not allocation.relays:
            return None
        address: Address = next(iter(allocation.relays.values())).address
        return address

    def from_client(self, data: bytes) -> tuple[list[Sent], list[Sent]]:
        """
        C{data} from the client to both cores; what each sent.
        """
        client = self.topology.client
        decided = self.forwarding.forwarder.decide(self.topology.handle, False, data, client)
        if decided is None:
            self.fast.server.datagram_received(self.fast.channel, data, client)
        else:
            self._record(decided)
        self.slow.server.datagram_received(self.slow.channel, data, client)
        return self.fast.take_sent(), self.slow.take_sent()

    def from_peer(
        self, relay: Address, data: bytes, peer: Address
    ) -> tuple[list[Sent], list[Sent]]:
        """
        C{data} from C{peer} to relay address C{relay} of both cores.
        """
        fast, slow = self.fast.relay_at(relay), self.slow.relay_at(relay)
        if fast is not None and slow is not None:
            decided = self.forwarding.forwarder.decide(fast.forwarding_handle, True, data, peer)
            if decided is None:
                fast.receiver(data, peer)
            else:
                self._record(decided)
            slow.receiver(data, peer)
        return self.fast.take_sent(), self.slow.take_sent()

    def _record(self, decided: tuple[int, Address, bytes]) -> None:
        fd, to, data = decided
        self.forwarded += 1
        if fd == self.topology.handle:
            self.fast.channel.sent.append((data, to))
            return
        for relay in self.fast.relays.open_relays:
            if relay.forwarding_handle == fd:
                relay.sent.append((data, to))
                return
        raise AssertionError(f"forwarded through descriptor {fd}, which no relay has")


def client_corpus(twins: TwinServers) -> list[bytes]:
    """
    What a client sends: requests of every kind, ChannelData, and Send
    indications with and without FINGERPRINT, to each kind of peer.
    """
    client = twins.client
    # Refreshes that keep the allocation: one deleted at every other
    # input would never let a permission or channel expire.
    out = [d for d in seeds(client) if d[0] >= 0x40 or decode(d).method != Method.REFRESH]
    out.append(client.request(Method.REFRESH, [(Attr.LIFETIME, 600)]))
    for size in (0, 1, 3, 4, 100, 1000):
        out.append(encode_channel_data(CHANNEL, bytes(range(256))[:size] * (1 + size // 256)))
        out.append(encode_channel_data(0x4002, b"x" * size))
    # Ports past the fast path's 64 entries per allocation: past the
    # bound, the Python path must relay exactly the same.
    t = twins.topology
    many = [(t.permitted_peer[0], port) for port in range(20_000, 20_100)]
    for peer in (t.channel_peer, t.permitted_peer, t.stranger, *many):
        for fingerprint in (False, True):
            client.fingerprint = fingerprint
            out.append(
                client.request(
                    Method.SEND,
                    [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, b"payload" * 3)],
                    authenticate=False,
                    cls=Class.INDICATION,
                )
            )
    client.fingerprint = True
    out += send_shapes(client, t.permitted_peer)
    return out


def send_shapes(client: StunClient, permitted: Address = PERMITTED_PEER) -> list[bytes]:
    """
    Send indications to C{permitted} as real stacks write them, which the
    fast path takes too: DATA before XOR-PEER-ADDRESS (coturn's
    turnutils_uclient -s), DONT-FRAGMENT and SOFTWARE anywhere, FINGERPRINT
    or not; and shapes it must leave to the Python path: a duplicate
    attribute, a peer of the other family (no relay of that family),
    attributes it does not know (comprehension-required, which the Python
    path drops, and optional, which it ignores).
    """
    peer = (Attr.XOR_PEER_ADDRESS, permitted)
    other = ("203.0.113.2", 7000) if ":" in permitted[0] else ("2001:db8::1", 7000)
    data = (Attr.DATA, b"real client" * 2)
    dont_fragment = (Attr.DONT_FRAGMENT, True)
    software = (Attr.SOFTWARE, "libjuice 1.5")
    shapes: list[list[tuple[int, Any]]] = [
        [data, peer],
        [peer, dont_fragment, data],
        [dont_fragment, data, software, peer],
        [software, peer, data],
        [data, peer, data],
        [peer, peer, data],
        [(Attr.XOR_PEER_ADDRESS, other), data],
        [peer, data, (0x0024, b"\x00\x00\x00\x01")],
        [(0x8055, b"opt"), peer, data],
        [peer, (Attr.DATA, b"")],
    ]
    out = []
    for attributes in shapes:
        for fingerprint in (False, True):
            client.fingerprint = fingerprint
            out.append(
                client.request(Method.SEND, attributes, authenticate=False, cls=Class.INDICATION)
            )
    client.fingerprint = True
    return out


def fuzz_forwarding(
    iterations: int, seed: int, module: ModuleType, topology: str = "ipv4"
) -> dict[str, Any]:
    """
    Feed C{iterations} inputs, alternately mutated client datagrams and
    peer datagrams of random sizes from random peers, to a fast and a
    pure Python core, with the addresses of L{TOPOLOGIES}[C{topology}];
    the clock runs 10 s per 1,000 inputs, so permissions and channels
    expire and are bound again.

    Returns the inputs on which the two sent different things, what
    escaped, what reached a last-resort handler, and how many datagrams
    the fast path forwarded itself.
    """
    rng = random.Random(seed)
    clock = FastClock()
    twins = TwinServers(clock, module, TOPOLOGIES[topology])
    twins.set_up()
    corpus = client_corpus(twins)
    t = twins.topology
    # The channel's peer weighs as much as the rest: ChannelData framing
    # (padded to 4 on streams) is where the paths could differ most.
    peers = [t.channel_peer] * 100 + [t.permitted_peer, t.stranger, (t.channel_peer[0], 9999)]
    # Peer ports past the fast path's 64 entries per allocation.
    peers += [(t.permitted_peer[0], port) for port in range(30_000, 30_100)]
    mismatches: list[tuple[bytes, list[Sent], list[Sent]]] = []
    escaped: list[str] = []
    set_ups = 0
    with logged_failures() as failures:
        for i in range(iterations):
            if i % 1000 == 999:
                clock.advance(10)
                twins.renew_nonce()
            if twins.relay_address() is None or i % 40000 == 39999:
                twins.set_up()
                set_ups += 1
            try:
                if i % 2:
                    original = rng.choice(corpus)
                    if rng.random() < 0.3:
                        data = original
                    elif original[0] < 0x40 and rng.random() < 0.3:
                        data = mutate_signed(rng, twins.client, original)
                    else:
                        data = mutate(rng, original)
                    fast, slow = twins.from_client(data)
                else:
                    relay = twins.relay_address()
                    if relay is None:
                        continue
                    size = rng.choice([0, 1, 4, 100, 1000, rng.randrange(65508)])
                    data = rng.randbytes(size)
                    fast, slow = twins.from_peer(relay, data, rng.choice(peers))
            except Exception as e:  # noqa: BLE001 - counting what escapes is the point
                escaped.append(repr(e))
                continue
            if fast != slow:
                mismatches.append((data, fast, slow))
    return {
        "iterations": iterations,
        "mismatches": mismatches,
        "escaped": escaped,
        "failures": failures,
        "forwarded": twins.forwarded,
        "set_ups": set_ups,
        "twins": twins,
    }
