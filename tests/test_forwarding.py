"""
Tests for the compiled fast path (L{txturn.fastpath.forwarding}, C{txturn.fastpath._forwarder}):
it forwards exactly what the Python core decided, for exactly as long as
the state behind it lives, and hands everything else up unchanged.

The core-level tests drive a fast and a pure Python core in lock step
(L{txturn.testing.forwarding_check.TwinServers}) on a clock; what the compiled
loop does with real sockets is in L{ServiceTests.test_fast_path_carries}
(C{tests.test_service}) and the sanitizer run here.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests import SOURCE
from txturn.core.events import AllocationDeleted
from txturn.core.forwarding import NO_FORWARDING
from txturn.core.peer_policy import PeerPolicy
from txturn.fastpath import forwarding
from txturn.testing import FastClock, StunClient
from txturn.testing.forwarding_check import (
    CHANNEL,
    CHANNEL_PEER,
    CLIENT,
    LISTENER,
    PERMITTED_PEER,
    STRANGER,
    TOPOLOGIES,
    TwinServers,
    fuzz_forwarding,
    send_shapes,
)
from txturn.wire.stun import Attr, Class, Method, decode, encode_channel_data

ROOT = SOURCE


def compiled() -> Any:
    """
    The compiled module, or skip (the pure Python path has no fast path
    to test).
    """
    module = forwarding.compiled_module()
    if module is None:
        raise SkipTest("the fast path is not built or TXTURN_FAST_PATH=off")
    return module


def compiler_present() -> bool:
    include = sysconfig.get_paths()["include"]
    return shutil.which("cc") is not None and os.path.exists(os.path.join(include, "Python.h"))


class BuildTests(SynchronousTestCase):
    """
    The extension is built where it can be, and its absence is harmless.
    """

    def test_built_where_a_compiler_is(self) -> None:
        """
        With a C compiler and Python's headers, C{pip install .} built
        the fast path (an optional extension fails quietly: this is
        where it would be noticed).
        """
        if not compiler_present():
            raise SkipTest("no C compiler or Python headers here")
        from txturn.fastpath import _forwarder  # type: ignore[attr-defined]

        self.assertTrue(callable(_forwarder.Forwarder))

    def test_off(self) -> None:
        """
        C{TXTURN_FAST_PATH=off} gives the pure Python path.
        """
        self.patch(os, "environ", {**os.environ, "TXTURN_FAST_PATH": "off"})
        self.assertIs(forwarding.forwarding(), NO_FORWARDING)

    def test_without_compiler(self) -> None:
        """
        Built where C{cc} fails, the wheel has no extension and still
        installs: the build does not stop at the failed compile.
        """
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        source = os.path.join(out, "src")
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                "*.so", "build", "_trial_temp*", ".git", "*.egg-info", "bench"
            ),
        )
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q"]
            + ["-w", out, source],
            env={**os.environ, "CC": "false"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        [wheel] = glob.glob(os.path.join(out, "txturn-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("txturn/fastpath/forwarding.py", names)
        self.assertEqual([n for n in names if n.endswith(".so")], [])


class EntryTests(SynchronousTestCase):
    """
    Entries come and go with the core's state, at the same moment.
    """

    def setUp(self) -> None:
        self.clock = FastClock()
        self.twins = TwinServers(self.clock, compiled())
        self.twins.set_up()
        self.forwarder = self.twins.forwarding.forwarder
        address = self.twins.relay_address()
        assert address is not None
        self.relay = address
        relay = self.twins.fast.relay_at(address)
        assert relay is not None
        self.relay_fd = relay.forwarding_handle

    def decide_client(self, data: bytes) -> Any:
        return self.forwarder.decide(LISTENER, False, data, CLIENT)

    def decide_peer(self, data: bytes, peer: Any) -> Any:
        return self.forwarder.decide(self.relay_fd, True, data, peer)

    def send_indication(self, peer: Any, data: bytes) -> bytes:
        return self.twins.client.request(
            Method.SEND,
            [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, data)],
            authenticate=False,
            cls=Class.INDICATION,
        )

    def test_channel(self) -> None:
        """
        A bound channel is forwarded from the bind on, both ways (from the
        peer once its first datagram took the Python path), and not a
        moment after it expires.
        """
        frame = encode_channel_data(CHANNEL, b"hello")
        self.assertEqual(self.decide_client(frame), (self.relay_fd, CHANNEL_PEER, b"hello"))
        self.assertIsNone(self.decide_peer(b"back", CHANNEL_PEER))
        fast, slow = self.twins.from_peer(self.relay, b"back", CHANNEL_PEER)
        self.assertEqual(fast, slow)
        self.assertEqual(
            self.decide_peer(b"back", CHANNEL_PEER),
            (LISTENER, CLIENT, encode_channel_data(CHANNEL, b"back")),
        )
        # A longer frame than its length field says is cut as Python cuts it;
        # a shorter one is not forwarded.
        self.assertEqual(self.decide_client(frame + b"pad")[2], b"hello")
        self.assertIsNone(self.decide_client(frame[:-1]))
        self.assertIsNone(self.decide_client(encode_channel_data(0x4002, b"x")))
        # The permission (refreshed by the bind) expires at 300 s: the peer
        # entry goes with it; the channel to the peer lasts its 600 s.
        self.clock.advance(300)
        self.assertIsNone(self.decide_peer(b"back", CHANNEL_PEER))
        self.assertIsNotNone(self.decide_client(frame))
        self.clock.advance(300)
        self.assertIsNone(self.decide_client(frame))

    def test_data_indication(self) -> None:
        """
        A peer with a permission is learned from its first datagram and
        then gets Data indications built by the fast path: the same bytes
        as the Python path's, but for the transaction id.  The permission's
        expiry ends it.
        """
        fast, slow = self.twins.from_peer(self.relay, b"x" * 5, PERMITTED_PEER)
        self.assertEqual(fast, slow)
        decided = self.decide_peer(b"x" * 5, PERMITTED_PEER)
        self.assertEqual(decided[:2], (LISTENER, CLIENT))
        python = self.twins.slow.server.state.table.get(self.twins.slow.channel, CLIENT)
        assert python is not None
        expected = python.data_indication(PERMITTED_PEER, Attr.DATA, b"x" * 5)
        self.assertEqual(decided[2][:8] + decided[2][20:], expected[:8] + expected[20:])
        self.assertNotEqual(decided[2][8:20], expected[8:20])
        # Another port of the same host is another entry; a stranger none.
        self.assertIsNone(self.decide_peer(b"x", (PERMITTED_PEER[0], 1)))
        self.assertIsNone(self.decide_peer(b"x", STRANGER))
        self.clock.advance(300)
        self.assertIsNone(self.decide_peer(b"x" * 5, PERMITTED_PEER))

    def test_send_indication(self) -> None:
        """
        A Send indication to a permitted peer is learned from the first
        one; a new peer policy forgets it, as the Python path checks the
        policy on every Send.
        """
        send = self.send_indication(PERMITTED_PEER, b"data")
        self.assertIsNone(self.decide_client(send))
        fast, slow = self.twins.from_client(send)
        self.assertEqual(fast, slow)
        self.assertEqual(self.decide_client(send), (self.relay_fd, PERMITTED_PEER, b"data"))
        self.twins.client.fingerprint = False
        self.assertEqual(
            self.decide_client(self.send_indication(PERMITTED_PEER, b"odd")),
            (self.relay_fd, PERMITTED_PEER, b"odd"),
        )
        corrupt = bytearray(send)
        corrupt[-1] ^= 1
        self.assertIsNone(self.decide_client(bytes(corrupt)))
        self.twins.fast.server.set_policy(PeerPolicy())
        self.assertIsNone(self.decide_client(send))

    def test_send_shapes(self) -> None:
        """
        Send indications as real stacks write them (DATA first, as coturn's
        uclient -s; DONT-FRAGMENT and SOFTWARE anywhere; with or without
        FINGERPRINT) are forwarded by the fast path once the peer is
        learned; a duplicate attribute, an IPv6 peer or an attribute it
        does not know goes to the Python path.  Either way the bytes on
        the wire are the Python path's.
        """
        learn = self.send_indication(PERMITTED_PEER, b"learn")
        self.twins.from_client(learn)
        forwarded = []
        for shape in send_shapes(self.twins.client):
            decided = self.decide_client(shape)
            fast, slow = self.twins.from_client(shape)
            self.assertEqual(fast, slow)
            forwarded.append(decided is not None)
            if decided is not None:
                self.assertEqual(decided[:2], (self.relay_fd, PERMITTED_PEER))
                self.assertEqual(decided[2], decode(shape).get(Attr.DATA))
        # Four shapes taken (each with and without FINGERPRINT), five left
        # to Python, and an empty DATA taken.
        self.assertEqual(forwarded, [True] * 8 + [False] * 10 + [True] * 2)
        # A wrong FINGERPRINT in another order is not taken either.
        corrupt = bytearray(send_shapes(self.twins.client)[1])
        corrupt[-1] ^= 1
        self.assertIsNone(self.decide_client(bytes(corrupt)))

    def test_bounded_per_allocation(self) -> None:
        """
        Datagrams from 200 ports of a permitted peer: the fast path learns
        64 of them (each allocation's bound), the rest stay on the Python
        path and are relayed the same; the permission's expiry removes
        every entry, and the table gives its memory back.
        """
        entries = self.forwarder.entry_count()
        for port in range(1000, 1200):
            peer = (PERMITTED_PEER[0], port)
            fast, slow = self.twins.from_peer(self.relay, b"x", peer)
            self.assertEqual(fast, slow)
        learned = [p for p in range(1000, 1200) if self.decide_peer(b"x", (PERMITTED_PEER[0], p))]
        self.assertEqual(len(learned), 64)
        self.assertLessEqual(self.forwarder.entry_count() - entries, 64)
        sends = [self.send_indication((PERMITTED_PEER[0], p), b"s") for p in range(1000, 1200)]
        for send in sends:
            fast, slow = self.twins.from_client(send)
            self.assertEqual(fast, slow)
        self.assertEqual(sum(1 for send in sends if self.decide_client(send)), 64)
        self.clock.advance(300)
        self.assertIsNone(self.decide_peer(b"x", (PERMITTED_PEER[0], learned[0])))
        self.assertLessEqual(self.forwarder.entry_count(), entries)

    def test_memory_comes_back(self) -> None:
        """
        L{churn_table}: 1,000 allocations with 64 Send entries each, then
        gone: the table shrinks back to its first size and still finds
        what it holds.
        """
        grown, shrunk, first = churn_table(compiled())
        self.assertGreaterEqual(grown, 65_000)
        self.assertEqual(shrunk, first)

    def test_counters(self) -> None:
        """
        What the fast path relayed is in the allocation's deletion event,
        and every entry goes with the allocation.
        """
        events: list[AllocationDeleted] = []
        server = self.twins.fast.server

        class Observer:
            def observe(self, event: object) -> None:
                if isinstance(event, AllocationDeleted):
                    events.append(event)

        server.add_observer(Observer())  # type: ignore[arg-type]
        for _ in range(3):
            self.decide_client(encode_channel_data(CHANNEL, b"12345"))
        self.twins.from_peer(self.relay, b"1234567", PERMITTED_PEER)
        self.decide_peer(b"1234567", PERMITTED_PEER)
        self.assertGreater(self.forwarder.entry_count(), 0)
        self.twins.from_client(self.twins.client.request(Method.REFRESH, [(Attr.LIFETIME, 0)]))
        [deleted] = events
        self.assertEqual((deleted.to_peers.packets, deleted.to_peers.bytes), (3, 15))
        self.assertEqual((deleted.to_client.packets, deleted.to_client.bytes), (2, 14))
        self.assertEqual(self.forwarder.entry_count(), 0)

    def test_bandwidth(self) -> None:
        """
        An allocation with a bandwidth limit is not forwarded: only the
        Python path keeps the limit.
        """
        clock = FastClock()
        twins = TwinServers(clock, compiled())
        twins.fast.server.reconfigure(twins.fast.server.config.__class__(realm="twins", max_bps=1))
        twins.set_up()
        self.assertEqual(twins.forwarding.forwarder.entry_count(), 0)


class FuzzTests(SynchronousTestCase):
    """
    The mutation fuzzer drives both paths (the long run is bench/fuzz.py).
    """

    def test_same_as_python(self) -> None:
        """
        30,000 mutated client datagrams and random peer datagrams: the
        fast path sends exactly what the Python path sends, forwards a
        good share itself, and nothing escapes.
        """
        result = fuzz_forwarding(30_000, seed=13, module=compiled())
        self.assertEqual(result["mismatches"][:1], [])
        self.assertEqual(result["escaped"], [])
        self.assertEqual(result["failures"], [])
        self.assertGreater(result["forwarded"], 5_000)

    def test_every_family(self) -> None:
        """
        The same with IPv6 clients and relays, both cross-family cases,
        and an IPv4 client on a dual-stack socket (C{::ffff:a.b.c.d}):
        Data indications to IPv6 clients carry an XOR-PEER-ADDRESS XORed
        with the fast path's own transaction id, and must still be the
        Python path's bytes.
        """
        for name in TOPOLOGIES:
            result = fuzz_forwarding(8_000, seed=17, module=compiled(), topology=name)
            self.assertEqual((name, result["mismatches"][:1]), (name, []))
            self.assertEqual((name, result["escaped"], result["failures"]), (name, [], []))
            self.assertGreater(result["forwarded"], 1_500, name)


class IPv6EntryTests(SynchronousTestCase):
    """
    An IPv6 allocation for an IPv6 client: entries as for IPv4.
    """

    def test_data_indication(self) -> None:
        """
        A Data indication the fast path builds for an IPv6 peer decodes to
        the peer and data the Python path's does, though its
        XOR-PEER-ADDRESS is XORed with another transaction id.
        """
        topology = TOPOLOGIES["ipv6"]
        twins = TwinServers(FastClock(), compiled(), topology)
        twins.set_up()
        relay_address = twins.relay_address()
        assert relay_address is not None
        relay = twins.fast.relay_at(relay_address)
        assert relay is not None
        peer = topology.permitted_peer
        fast, slow = twins.from_peer(relay_address, b"six", peer)
        self.assertEqual(fast, slow)
        decided = twins.forwarding.forwarder.decide(relay.forwarding_handle, True, b"six", peer)
        self.assertEqual(decided[:2], (LISTENER, topology.client))
        message = decode(decided[2])
        self.assertEqual(
            (message.get(Attr.XOR_PEER_ADDRESS), message.get(Attr.DATA)), (peer, b"six")
        )
        channel = twins.forwarding.forwarder.decide(
            LISTENER, False, encode_channel_data(CHANNEL, b"to peer"), topology.client
        )
        self.assertEqual(channel, (relay.forwarding_handle, topology.channel_peer, b"to peer"))


def churn_table(module: Any) -> tuple[int, int, int]:
    """
    Grow a forwarder's table to 1,000 allocations of 64 Send entries
    each (more are refused: the bound), remove them in steps, checking
    that what is left is still found after each shrink; returns its
    capacity grown, at the end, and at first (the sanitizer run calls it
    too).
    """
    forwarder = module.Forwarder(os.urandom(16))
    first = forwarder.entry_capacity()
    slots = [forwarder.add_allocation(5, ("10.0.0.1", port), b"p" * 8) for port in range(1000)]
    for slot in slots:
        added = [forwarder.add_send(slot, 7, ("192.0.2.1", port)) for port in range(70)]
        assert added == [True] * 64 + [False] * 6, added
    assert forwarder.entry_count() == 1000 * 65
    grown = forwarder.entry_capacity()
    for slot in slots[:-1]:
        forwarder.remove_allocation(slot)
        # What is left is found: adding it again adds nothing.
        assert forwarder.add_send(slots[-1], 7, ("192.0.2.1", 63)) is True
        assert forwarder.entry_count() >= 65
    assert forwarder.entry_count() == 65
    forwarder.remove_host(slots[-1], "192.0.2.1")
    assert forwarder.entry_count() == 1
    assert forwarder.add_send(slots[-1], 7, ("192.0.2.1", 1)) is True
    assert forwarder.entry_count() == 2
    forwarder.remove_allocation(slots[-1])
    return grown, forwarder.entry_capacity(), first


def pump_through_sockets(
    module: Any, client_host: str = "127.0.0.1", relay_host: str = "127.0.0.1"
) -> str:
    """
    The compiled loop on real loopback sockets, without a reactor:
    ChannelData and Send indications from a client, datagrams from a peer
    (one as large as UDP allows), forwarded in batches; what has no entry
    handed up in order.  The client side and the relay side may each be
    IPv4 or IPv6.  Returns C{"ok"} (the sanitizer run calls it too).
    """
    import socket

    def udp(host: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    listener, client = udp(client_host), udp(client_host)
    relay, peer = udp(relay_host), udp(relay_host)
    try:
        forwarder = module.Forwarder(os.urandom(16))
        client_address, peer_address = client.getsockname()[:2], peer.getsockname()[:2]
        slot = forwarder.add_allocation(listener.fileno(), client_address, b"p" * 8)
        forwarder.add_channel(slot, 0x4000, relay.fileno(), peer_address)
        forwarder.add_peer(
            slot, relay.fileno(), peer_address, listener.fileno(), client_address, 0x4000
        )
        handed: list[tuple[bytes, Any]] = []
        frames = [encode_channel_data(0x4000, b"%d" % i) for i in range(100)]
        frames.insert(50, b"\x00\x01\x00\x00not stun")
        for frame in frames:
            client.sendto(frame, listener.getsockname())
        while forwarder.pump(listener.fileno(), False, lambda d, a: handed.append((d, a)), 8):
            pass
        assert handed == [(frames[50], client_address)], handed
        got = [peer.recv(100) for _ in range(100)]
        assert got == [b"%d" % i for i in range(100)], got[:5]
        # Runs of one length to one peer went out as UDP GSO sends.
        assert forwarder.gso_sends() > 0
        # The largest UDP payload: 65,507 bytes in IPv4, 65,527 in IPv6
        # (whose length field leaves out the IP header).
        largest = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
        big = os.urandom(largest[peer.family])
        for data in (b"small", big):
            peer.sendto(data, relay.getsockname())
        while forwarder.pump(relay.fileno(), True, lambda d, a: handed.append((d, a)), 8):
            pass
        assert client.recv(65535) == encode_channel_data(0x4000, b"small")
        try:
            arrived = client.recv(65535)
        except BlockingIOError:
            arrived = b""
        if len(big) + 4 > largest[client.family]:
            # With its header the datagram does not fit UDP: lost on
            # send, as on the Python path, and counted.
            assert arrived == b"", "an oversize ChannelData reached the client"
            assert forwarder.send_errors() == 1, forwarder.send_errors()
        else:
            # An IPv4 peer's largest datagram fits an IPv6 client.
            assert arrived == encode_channel_data(0x4000, big), len(arrived)
            assert forwarder.send_errors() == 0, forwarder.send_errors()
        assert len(handed) == 1, handed
        assert forwarder.take_counters(slot)[:2] == (100, sum(len(b"%d" % i) for i in range(100)))
    finally:
        for sock in (listener, relay, client, peer):
            sock.close()
    return "ok"


def stream_through_sockets(module: Any) -> str:
    """
    A stream client's frames through C{forward_frames} and a real relay
    socket, and a peer's datagrams back through C{pump} to the client's
    writer: whole ChannelData (padded) and Send frames at the head are
    forwarded in order, the first frame that is not (a request, a partial
    frame) stops it; what peers send is framed, padded and joined into
    one write per read.  Returns C{"ok"} (the sanitizer run calls it too).
    """
    import socket

    def udp() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    relay, peer = udp(), udp()
    try:
        forwarder = module.Forwarder(os.urandom(16))
        written: list[tuple[bytes, int]] = []
        key, client = -5, ("198.51.100.1", 1000)
        slot = forwarder.add_allocation(
            key, client, b"p" * 8, lambda data, frames: written.append((data, frames))
        )
        peer_address = peer.getsockname()
        forwarder.add_channel(slot, 0x4000, relay.fileno(), peer_address)
        forwarder.add_send(slot, relay.fileno(), peer_address)
        frames = [encode_channel_data(0x4000, b"x" * n, pad=True) for n in (1, 2, 3, 4, 5)]
        stun = StunClient("u", "p")
        send = stun.request(
            Method.SEND,
            [(Attr.DATA, b"by send"), (Attr.XOR_PEER_ADDRESS, peer_address)],
            authenticate=False,
            cls=Class.INDICATION,
        )
        request = stun.request(Method.REFRESH, [], authenticate=False)
        head = b"".join(frames) + send
        buffer = bytearray(head + request + frames[0])
        assert forwarder.forward_frames(key, client, buffer) == (len(head), 6)
        # From the request on, Python frames; a partial frame stops it too.
        assert forwarder.forward_frames(key, client, buffer[len(head) + len(request) :]) == (
            len(frames[0]),
            1,
        )
        assert forwarder.forward_frames(key, client, frames[1][:-1]) == (0, 0)
        # Not this client: nothing.
        assert forwarder.forward_frames(key, ("198.51.100.1", 1001), head) == (0, 0)
        got = [peer.recv(100) for _ in range(7)]
        assert got == [b"x" * n for n in (1, 2, 3, 4, 5)] + [b"by send", b"x"], got
        forwarder.add_peer(slot, relay.fileno(), peer_address, key, client, 0x4000)
        for n in (1, 2, 3):
            peer.sendto(b"y" * n, relay.getsockname())
        while forwarder.pump(relay.fileno(), True, lambda d, a: None, 8):
            pass
        joined = b"".join(encode_channel_data(0x4000, b"y" * n, pad=True) for n in (1, 2, 3))
        assert written == [(joined, 3)], written
        assert forwarder.take_counters(slot) == (7, 23, 3, 6), forwarder.take_counters(slot)
        forwarder.remove_allocation(slot)
        assert forwarder.forward_frames(key, client, head) == (0, 0)
    finally:
        relay.close()
        peer.close()
    return "ok"


SANITIZED = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("txturn.fastpath._forwarder", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["txturn.fastpath._forwarder"] = module
from txturn.testing.forwarding_check import fuzz_forwarding
from tests.test_forwarding import churn_table, pump_through_sockets, stream_through_sockets
from txturn.testing.forwarding_check import TOPOLOGIES
for name in TOPOLOGIES:
    result = fuzz_forwarding(int(sys.argv[2]), seed=7, module=module, topology=name)
    assert not result["mismatches"] and not result["escaped"], (name, result["mismatches"][:1])
for client_host in ("127.0.0.1", "::1"):
    for relay_host in ("127.0.0.1", "::1"):
        assert pump_through_sockets(module, client_host, relay_host) == "ok"
assert stream_through_sockets(module) == "ok"
grown, shrunk, first = churn_table(module)
assert shrunk == first < grown, (grown, shrunk, first)
print("forwarded", result["forwarded"])
"""


class PumpTests(SynchronousTestCase):
    """
    The compiled loop on real sockets.
    """

    def test_pump(self) -> None:
        """
        L{pump_through_sockets}: batches forwarded in order, the rest
        handed up, counters kept, a send failure counted.
        """
        self.assertEqual(pump_through_sockets(compiled()), "ok")

    def test_stream(self) -> None:
        """
        L{stream_through_sockets}: a TCP or TLS client's frames forwarded
        from its connection's buffer, and peers' datagrams framed for its
        writer.
        """
        self.assertEqual(stream_through_sockets(compiled()), "ok")

    def test_pump_ipv6(self) -> None:
        """
        The same with IPv6 on either side or both: clients and peers are
        read, matched and written as C{sockaddr_in6}, and what is handed
        up is addressed as Twisted's C{udp.Port} addresses it.
        """
        for client_host, relay_host in (("::1", "::1"), ("127.0.0.1", "::1"), ("::1", "127.0.0.1")):
            self.assertEqual(pump_through_sockets(compiled(), client_host, relay_host), "ok")


SMALL_MTU = """
import os, socket
from txturn.fastpath import _forwarder
from txturn.wire.stun import encode_channel_data

def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock

listener, relay, client, peer = udp(), udp(), udp(), udp()
forwarder = _forwarder.Forwarder(os.urandom(16))
slot = forwarder.add_allocation(listener.fileno(), client.getsockname(), b"p" * 8)
forwarder.add_channel(slot, 0x4000, relay.fileno(), peer.getsockname())

def relay_run(size):
    for i in range(20):
        client.sendto(encode_channel_data(0x4000, bytes([i]) * size), listener.getsockname())
    while forwarder.pump(listener.fileno(), False, lambda d, a: None, 8):
        pass
    got = []
    while True:
        try:
            got.append(peer.recv(65535))
        except BlockingIOError:
            return got

# Segments of 1,300 bytes do not fit the 1,280-byte MTU: GSO sends fail
# with EMSGSIZE, and those datagrams go one by one (fragmented).
big = relay_run(1300)
assert big == [bytes([i]) * 1300 for i in range(20)], len(big)
assert forwarder.send_errors() == 0, forwarder.send_errors()
assert forwarder.gso_on()
before = forwarder.gso_sends()
small = relay_run(100)
assert len(small) == 20 and forwarder.gso_sends() > before, (len(small), before)
print("ok")
"""


class SmallMtuTests(TestCase):
    def test_gso_stays_on(self) -> None:
        """
        In a network namespace whose loopback has a 1,280-byte MTU: one
        GSO send refused for its segment size (a peer behind a small MTU)
        is sent one by one, nothing lost, and the next sends are joined
        again (it used to turn GSO off for the whole process for good).
        """
        if os.getuid() != 0 or shutil.which("unshare") is None or not compiler_present():
            raise SkipTest("needs root, unshare and the compiled fast path")
        result = subprocess.run(
            ["unshare", "-n", "sh", "-c", 'ip link set lo up mtu 1280 && exec "$0" -c "$1"']
            + [sys.executable, SMALL_MTU],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout), (0, "ok\n"), result.stderr[-2000:])


class SanitizerTests(TestCase):
    """
    The C code under AddressSanitizer and UndefinedBehaviorSanitizer.
    """

    def test_asan_ubsan(self) -> None:
        """
        Built with C{-fsanitize=address,undefined}, the extension runs the
        fuzzer and a real socket pump with no report.
        """
        if not compiler_present() or shutil.which("gcc") is None:
            raise SkipTest("no gcc here")
        libasan = subprocess.run(
            ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True
        ).stdout.strip()
        if not os.path.isabs(libasan):
            raise SkipTest("gcc has no libasan")
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        library = os.path.join(out, "_forwarder.so")
        include = sysconfig.get_paths()["include"]
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer"]
            + ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
            + [
                f"-I{include}",
                os.path.join(ROOT, "txturn", "fastpath", "_forwarder.c"),
                "-o",
                library,
            ],
            check=True,
        )
        result = subprocess.run(
            [sys.executable, "-c", SANITIZED, library, "8000"],
            env={
                **os.environ,
                "LD_PRELOAD": libasan,
                "ASAN_OPTIONS": "detect_leaks=0,abort_on_error=1",
                "UBSAN_OPTIONS": "print_stacktrace=1,halt_on_error=1",
                "PYTHONMALLOC": "malloc",
                # For "tests" only: txturn is the installed one.
                "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        report = result.stderr[-3000:]
        self.assertEqual(result.returncode, 0, report)
        self.assertNotIn("Sanitizer", result.stderr, report)
        self.assertIn("forwarded", result.stdout)
