"""
C{--workers N}: the pieces in memory (shared places, port slices,
CONNECTION-IDs and reservation tokens that name their worker, summed
metrics), then a real C{twistd turn --workers 2} on loopback with
coturn's uclient, our own clients, SIGKILL and SIGHUP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from tests.test_interop import (
    OutputWatcher,
    UdpDrops,
    assert_relayed,
    echo_ready,
    require,
    spawn,
    twistd_turn,
    uclient_args,
    uclient_totals,
    udp_requester,
)
from tests.test_metrics import value
from tests.test_service import free_udp_port
from txturn.app.shard import Shard
from txturn.auth.credentials import NonceManager
from txturn.core.counters import Counter
from txturn.core.interfaces import IConnectionHandoff, IReservationBroker
from txturn.core.places import LocalPlaces
from txturn.core.server import ServerConfig
from txturn.testing import (
    FakePeerConnection,
    FakeRelayAllocator,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
    self_signed_certificate,
)
from txturn.transports.stream import TurnStreamFactory
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import Attr, Class, Message, Method
from txturn.workers import shared_places
from txturn.workers.shared_places import SharedPlaces
from txturn.workers.summed_metrics import SummedMetrics
from txturn.workers.transfers import Handoff

reactor: Any = _reactor
KEY = b"k" * 16


class SharedPlacesTests(TestCase):
    """
    One table of places seen by two workers and the supervisor.
    """

    def setUp(self) -> None:
        self.fd = shared_places.create(2, rows=64)
        self.addCleanup(os.close, self.fd)
        self.views = [SharedPlaces(self.fd, i, KEY) for i in (0, 1)]
        self.supervisor = SharedPlaces(self.fd, None, KEY)
        for view in [*self.views, self.supervisor]:
            self.addCleanup(view.close)

    def test_sum_across_workers(self) -> None:
        """
        What each worker adds is seen by every one: per user and in all.
        """
        zero, one = self.views
        zero.add("alice", 3)
        one.add("alice", 2)
        one.add("bob", 1)
        self.assertEqual(
            (zero.held_by("alice"), one.held_by("alice"), zero.held_by("bob")), (5, 5, 1)
        )
        self.assertEqual((zero.in_use(), one.in_use()), (6, 6))
        self.assertEqual(zero.held_by("carol"), 0)

    def test_dead_worker_gives_back(self) -> None:
        """
        Clearing a dead worker's column gives back exactly its places.
        """
        zero, one = self.views
        zero.add("alice", 1)
        one.add("alice", 4)
        self.assertEqual(self.supervisor.clear(1), 4)
        self.assertEqual((zero.held_by("alice"), zero.in_use()), (1, 1))

    def test_rows_reused(self) -> None:
        """
        A user holding nothing frees the row: far more users than rows
        can come and go.
        """
        zero = self.views[0]
        for n in range(1000):
            zero.add(f"user{n}", 1)
            zero.add(f"user{n}", -1)
        zero.add("last", 1)
        self.assertEqual((zero.held_by("last"), zero.in_use()), (1, 1))

    def keyed_rows(self) -> int:
        view = self.views[0]
        return sum(
            1
            for row in range(view.rows)
            if shared_places._KEY.unpack_from(view._memory, view._table + row * view._row)[0]
        )

    def test_many_names_stay_fast(self) -> None:
        """
        100,000 names come and go through a table of 1,024 rows, 200 of
        them holding places throughout: probes stay short (a row that
        holds nothing is deleted, not left behind on every probe path),
        and only the holders keep rows.  Left behind, they made each
        Allocate scan the table: 28 ms after 700,000 names.
        """
        fd = shared_places.create(2, rows=1024)
        self.addCleanup(os.close, fd)
        zero, one = SharedPlaces(fd, 0, KEY), SharedPlaces(fd, 1, KEY)
        self.addCleanup(zero.close)
        self.addCleanup(one.close)
        for n in range(200):
            one.add(f"holder{n}", 1)
        for n in range(100_000):
            zero.add(f"session{n}", 1)
            zero.held_by(f"session{n}")
            zero.add(f"session{n}", -1)
        self.assertLess(zero.probes / 300_000, 2.0)
        self.assertEqual([one.held_by(f"holder{n}") for n in range(200)], [1] * 200)
        self.views = [zero, one]
        self.assertEqual(self.keyed_rows(), 200)

    def test_deletion_keeps_keys_reachable(self) -> None:
        """
        Random adds and removals in a small, crowded table, against a
        model: every name's count is found after every step, and a dead
        worker's column goes with the rows only it held.
        """
        import random

        rng = random.Random(3)
        zero, one = self.views
        model: dict[tuple[int, str], int] = {}
        for _ in range(5000):
            view = rng.choice([0, 1])
            name = f"u{rng.randrange(48)}"
            held = model.get((view, name), 0)
            delta = rng.choice([1, 1, -1]) if held else 1
            self.views[view].add(name, delta)
            model[(view, name)] = held + delta
            total = model.get((0, name), 0) + model.get((1, name), 0)
            self.assertEqual(zero.held_by(name), total)
        names = {name for _, name in model}
        self.assertEqual(self.keyed_rows(), sum(1 for n in names if zero.held_by(n)))
        self.supervisor.clear(1)
        for name in names:
            self.assertEqual(one.held_by(name), model.get((0, name), 0))
        self.assertEqual(self.keyed_rows(), sum(1 for n in names if model.get((0, n), 0)))

    def test_rows_for(self) -> None:
        """
        The supervisor's table has twice as many rows as places the
        quota allows (so the quota refuses before the table is full).
        """
        self.assertEqual(shared_places.rows_for(100), 1 << 16)
        self.assertEqual(shared_places.rows_for(100_000), 1 << 18)
        self.assertEqual(shared_places.rows_for(10**9), shared_places.MAX_ROWS)

    def test_full(self) -> None:
        """
        With every row held, a new user is refused, not written anywhere.
        """
        zero = self.views[0]
        for n in range(64):
            zero.add(f"user{n}", 1)
        self.assertRaises(shared_places.PlacesFull, zero.add, "one too many", 1)

    def test_lock_excludes_other_processes(self) -> None:
        """
        While a worker checks a quota, another process cannot take the
        lock.
        """
        probe = (
            "import fcntl, sys\n"
            f"try:\n    fcntl.lockf({self.fd}, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError:\n    sys.exit(3)\n"
        )
        with self.views[0].transaction():
            with self.views[0].transaction():  # re-entrant
                locked = subprocess.run([sys.executable, "-c", probe], pass_fds=[self.fd])
        free = subprocess.run([sys.executable, "-c", probe], pass_fds=[self.fd])
        self.assertEqual((locked.returncode, free.returncode), (3, 0))


def _shard(index: int, count: int) -> Shard:
    return Shard(index, count, LocalPlaces(), b"s" * 32)


class ShardTests(TestCase):
    def test_relay_slices(self) -> None:
        """
        Disjoint, even-sized, even-aligned slices covering the range.
        """
        slices = [_shard(i, 3).relay_ports(49152, 65535) for i in range(3)]
        self.assertEqual(slices[0][0], 49152)
        self.assertEqual(slices[-1][1], 65535)
        for (_, high), (low, _) in zip(slices, slices[1:], strict=False):
            self.assertEqual(low, high + 1)
        self.assertTrue(all(low % 2 == 0 for low, _ in slices))
        self.assertRaises(ValueError, _shard(0, 4).relay_ports, 50000, 50005)

    def test_challenge_share(self) -> None:
        """
        Each of N workers answers 1/N of a source's challenges.
        """
        config = _shard(0, 4).share(ServerConfig(challenge_rate=100, challenge_burst=1000))
        self.assertEqual((config.challenge_rate, config.challenge_burst), (25, 250))


class CoreAcrossWorkersTests(TestCase):
    """
    The core, as worker 1 of 2, with a Clock.
    """

    def setUp(self) -> None:
        self.fd = shared_places.create(2, rows=64)
        self.addCleanup(os.close, self.fd)
        self.places = [SharedPlaces(self.fd, i, KEY) for i in (0, 1)]
        self.clock = Clock()
        self.relays = FakeRelayAllocator()
        nonces = NonceManager()  # one key for every worker
        # Worker 1 fetches worker 0's reservations.
        self.broker = _Broker(lambda: self.servers[0])
        self.servers = [
            make_server(
                {"test": "secret"},
                clock=self.clock,
                relays=self.relays,
                user_quota=3,
                places=self.places[i],
                worker=(i, 2),
                nonces=nonces,
                reservation_broker=self.broker if i == 1 else None,
            )
            for i in (0, 1)
        ]
        self.client = StunClient("test", "secret")
        self.channel = RecordingClientChannel()

    def allocate(
        self, server: Any, port: int, *extra: tuple[int, Any], method: int = Method.ALLOCATE
    ) -> Message:
        attributes = [(Attr.REQUESTED_TRANSPORT, 17), *extra]
        if method == Method.REFRESH:
            attributes = [(Attr.LIFETIME, 0)]
        return authenticated_request(
            server, self.channel, self.client, method, attributes, ("127.0.0.1", port)
        )

    def test_user_quota_is_for_the_server(self) -> None:
        """
        A user limited to 3 gets 3 on the two workers together, and one
        more once an allocation on the other worker ends.
        """
        answers = [self.allocate(self.servers[n % 2], 5000 + n) for n in range(4)]
        codes = [a.get(Attr.ERROR_CODE)[0] if a.cls == Class.ERROR else 200 for a in answers]
        self.assertEqual(codes, [200, 200, 200, 486])
        self.allocate(self.servers[1], 5001, method=Method.REFRESH)
        self.assertEqual(self.places[0].in_use(), 2)
        self.assertEqual(self.allocate(self.servers[0], 6000).cls, Class.SUCCESS)

    def test_connection_ids_name_their_worker(self) -> None:
        """
        Worker 1 of 2 hands out odd CONNECTION-IDs only.
        """
        peers = self.servers[1].peer_connections
        ids = {peers.add(object(), FakePeerConnection(("127.0.0.1", 1))) for _ in range(50)}
        self.assertEqual({i % 2 for i in ids}, {1})
        self.assertEqual({peers.owner(i) for i in ids}, {1})

    def test_connection_bind_handed_off(self) -> None:
        """
        A ConnectionBind naming worker 0's connection, on worker 1, goes
        to worker 0 with the request's bytes, unanswered here.
        """
        channel = RecordingClientChannel("tcp")
        server, address = self.servers[1], ("127.0.0.1", 7000)
        attributes: list[tuple[int, Any]] = [(Attr.CONNECTION_ID, 1234)]
        server.datagram_received(channel, self.client.request(Method.CONNECTION_BIND), address)
        self.assertTrue(self.client.challenged(self.client.learn(channel.sent[-1][0])))
        request = self.client.request(Method.CONNECTION_BIND, attributes)
        server.datagram_received(channel, request, address)
        self.assertEqual(channel.handed_off, (0, request))
        self.assertEqual(len(channel.sent), 1)
        self.assertEqual(server.counters[Counter.HANDED_OFF], 1)
        # Its own connection id stays here (and is unknown: 400).
        server.datagram_received(
            channel,
            self.client.request(Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, 1235)]),
            address,
        )
        self.assertEqual(self.client.learn(channel.sent[-1][0]).get(Attr.ERROR_CODE)[0], 400)

    def test_reservation_fetched(self) -> None:
        """
        An Allocate redeeming worker 0's reservation, on worker 1, is
        answered once the reservation has been fetched; retransmissions
        meanwhile are not answered; an unknown token gets 508.
        """
        reserved = self.allocate(self.servers[0], 5000, (Attr.EVEN_PORT, True))
        token = reserved.get(Attr.RESERVATION_TOKEN)
        self.assertEqual(self.servers[0].state.reservations.worker_of(token), 0)
        broker = self.broker
        channel = RecordingClientChannel()
        address = ("127.0.0.1", 5001)
        request = self.client.request(
            Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, token)]
        )
        for _ in range(2):
            self.servers[1].datagram_received(channel, request, address)
        self.assertEqual((channel.sent, len(broker.pending)), ([], 1))
        broker.pending[0].callback(broker.take(token))
        self.assertEqual(len(channel.sent), 1)
        answer = self.client.learn(channel.sent[0][0])
        self.assertEqual(answer.cls, Class.SUCCESS, answer)
        self.assertEqual(len(self.servers[0].state.reservations), 0)
        # An unknown token (worker 0's numbering) fails as alone.
        unknown = (2**40).to_bytes(8, "big")
        request = self.client.request(
            Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, unknown)]
        )
        self.servers[1].datagram_received(channel, request, ("127.0.0.1", 5003))
        broker.pending[1].callback(None)
        self.assertEqual(self.client.learn(channel.sent[-1][0]).get(Attr.ERROR_CODE)[0], 508)


@implementer(IConnectionHandoff)
class _Handoffs:
    """
    Records hand-offs, taking them or not.
    """

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.calls: list[tuple[int, bytes]] = []

    def hand_off(self, worker: int, channel: Any, frame: bytes) -> bool:
        self.calls.append((worker, frame))
        return self.takes


class StreamHandoffTests(TestCase):
    """
    A connection on worker 1 of 2 whose ConnectionBind names worker 0's
    connection: handed off once, with what the client sent behind it.
    """

    def setUp(self) -> None:
        self.server = make_server({"test": "secret"}, clock=Clock(), worker=(1, 2))
        self.client = StunClient("test", "secret")

    def connect(self, handoffs: _Handoffs) -> tuple[Any, StringTransport]:
        protocol = TurnStreamFactory(self.server, "tcp", handoff=handoffs).buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        protocol.dataReceived(self.client.request(Method.CONNECTION_BIND, [], authenticate=False))
        self.assertTrue(self.client.challenged(self.client.learn(transport.value())))
        transport.clear()
        return protocol, transport

    def bind(self, connection_id: int) -> bytes:
        return self.client.request(Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, connection_id)])

    def test_once_with_what_follows(self) -> None:
        """
        Two ConnectionBinds in one read: the first is handed off with the
        second behind it, which this worker never reads; later bytes are
        not read here either.
        """
        handoffs = _Handoffs()
        protocol, transport = self.connect(handoffs)
        first, second = self.bind(1000), self.bind(1002)
        protocol.dataReceived(first + second)
        protocol.dataReceived(self.bind(1004))
        self.assertEqual(handoffs.calls, [(0, first + second)])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.server.counters[Counter.HANDED_OFF], 1)

    def test_handed_in_stays(self) -> None:
        """
        A connection another worker passed here is never passed on: its
        ConnectionBinds naming other workers are answered here (400).
        """
        handoffs = _Handoffs()
        protocol, transport = self.connect(handoffs)
        protocol.handed_in = True
        protocol.dataReceived(self.bind(1000))
        self.assertEqual(handoffs.calls, [])
        answer = self.client.learn(transport.value())
        self.assertEqual(answer.get(Attr.ERROR_CODE)[0], 400)

    def test_refused_answers_here(self) -> None:
        """
        A hand-off refused (too large, control connection failing): both
        requests are answered here, in order.
        """
        handoffs = _Handoffs(takes=False)
        protocol, transport = self.connect(handoffs)
        protocol.dataReceived(self.bind(1000) + self.bind(1002))
        self.assertEqual(len(handoffs.calls), 2)
        answers = StreamFramer().feed(transport.value())
        self.assertEqual(
            [self.client.learn(a).get(Attr.ERROR_CODE)[0] for a in answers], [400, 400]
        )


class _Transport:
    def __init__(self) -> None:
        self.handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.reading = True
        self.lost = False

    def getHandle(self) -> socket.socket:
        return self.handle

    def stopReading(self) -> None:
        self.reading = False

    def loseConnection(self) -> None:
        self.lost = True


class _Channel:
    transport_name = "tcp"

    def __init__(self) -> None:
        self.transport = _Transport()


class _Control:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []
        self.answer: defer.Deferred[dict[str, bool]] = defer.Deferred()

    def callRemote(self, command: Any, **arguments: Any) -> defer.Deferred[dict[str, bool]]:
        if self.error is not None:
            raise self.error
        self.calls.append(arguments)
        return self.answer


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class HandoffTests(TestCase):
    """
    L{Handoff}: nothing is let go of before the supervisor is asked, and
    what it opened is closed whatever happens.
    """

    def setUp(self) -> None:
        self.channel = _Channel()
        self.addCleanup(self.channel.transport.handle.close)

    def test_too_large(self) -> None:
        """
        More than one AMP value: not passed, the connection stays here.
        """
        control = _Control()
        before = _open_descriptors()
        passed = Handoff(control, reactor).hand_off(0, self.channel, b"x" * (65535 + 1))
        self.assertFalse(passed)
        self.assertEqual((control.calls, _open_descriptors()), ([], before))
        self.assertTrue(self.channel.transport.reading)
        self.assertFalse(self.channel.transport.lost)

    def test_control_fails(self) -> None:
        """
        The control connection raises: not passed, the descriptor opened
        for it closed, the connection still here.
        """
        before = _open_descriptors()
        passed = Handoff(_Control(RuntimeError("gone")), reactor).hand_off(0, self.channel, b"f")
        self.assertFalse(passed)
        self.assertEqual(_open_descriptors(), before)
        self.assertTrue(self.channel.transport.reading)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_passed(self) -> None:
        """
        Passed: this worker lets go of the connection, and closes its
        duplicate once the supervisor has answered.
        """
        control = _Control()
        before = _open_descriptors()
        self.assertTrue(Handoff(control, reactor).hand_off(0, self.channel, b"f" * 65535))
        self.assertEqual(control.calls[0]["frame"], b"f" * 65535)
        self.assertEqual(_open_descriptors(), before + 1)
        self.assertEqual(
            (self.channel.transport.reading, self.channel.transport.lost), (False, True)
        )
        control.answer.callback({"accepted": True})
        self.assertEqual(_open_descriptors(), before)


@implementer(IReservationBroker)
class _Broker:
    def __init__(self, owner: Callable[[], Any]) -> None:
        self._owner = owner
        self.pending: list[defer.Deferred[Any]] = []

    def fetch(self, worker: int, token: bytes, owner: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def take(self, token: bytes) -> Any:
        return self._owner().state.reservations.take(token, "test")


class SummedMetricsTests(TestCase):
    def test_sum_and_retire(self) -> None:
        """
        Counters and gauges add up; a dead worker's gauges go, its
        counters stay.
        """
        summed = SummedMetrics()
        for index, (created, alive) in enumerate([(5, 2), (7, 3)]):
            summed.scraped(
                index,
                '[["turn_allocations_created","counter","c",'
                f'["turn_allocations_created_total",{{"transport":"udp"}},{created}]],'
                f'["turn_allocations","gauge","g",["turn_allocations",{{}},{alive}]]]',
            )
        page = summed.render([0, 1]).decode()
        self.assertIn('turn_allocations_created_total{transport="udp"} 12.0', page)
        self.assertIn("turn_allocations 5.0", page)
        summed.worker_died(1)
        page = summed.render([0]).decode()
        self.assertIn('turn_allocations_created_total{transport="udp"} 12.0', page)
        self.assertIn("turn_allocations 2.0", page)


def _search(pattern: bytes, text: bytes) -> bytes:
    match = re.search(pattern, text)
    assert match is not None, text[-2000:]
    return match.group(1)


# -- a real twistd turn --workers 2 -----------------------------------------------


def _worker_of(port: int, low: int, high: int) -> int:
    """
    Which of 2 workers relays on C{port} of C{low}-C{high}.
    """
    return 0 if port <= (low + high) // 2 else 1


class TwistdWorkersTests(TestCase):
    """
    C{twistd turn --workers 2} with real clients.
    """

    low, high = 41000, 42999

    def start(self, *options: str) -> OutputWatcher:
        self.port = free_udp_port()
        self.metrics_port = free_udp_port()
        argv = twistd_turn(
            self.port,
            "--relay-ip", "127.0.0.1", "--min-port", str(self.low), "--max-port", str(self.high),
            "--workers", "2", "-u", "test:secret", "--allow-loopback-peers", "--no-dtls",
            "--prometheus", "--prometheus-address", "127.0.0.1",
            "--prometheus-port", str(self.metrics_port),
            *options,
        )  # fmt: skip
        self.server = spawn(argv, self)
        return self.server

    @defer.inlineCallbacks
    def ready(self) -> Any:
        for index in (0, 1):
            yield self.server.wait_for(rb"\[worker %d [^\]]*\] Relaying on" % index)

    @defer.inlineCallbacks
    def metrics(self) -> Any:
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.metrics_port}/metrics".encode()
        )
        body = yield readBody(response)
        return body.decode()

    def udp_client(self) -> tuple[socket.socket, Any]:
        return udp_requester(self, self.port)

    @defer.inlineCallbacks
    def test_uclient_200_clients(self) -> Any:
        """
        200 uclient clients (300 allocations: the RTCP allocation of each
        RTP/RTCP pair redeems an EVEN-PORT reservation, which the other
        worker holds half the time) lose nothing; both workers relay;
        /metrics sums both.
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        self.start()
        yield self.ready()
        yield threads.deferToThread(echo_ready, peer_port)
        drops = UdpDrops()
        out, err, _ = yield getProcessOutputAndValue(
            uclient, uclient_args(self.port, peer_port, 10, 200), env=os.environ.copy()
        )
        output = out.decode(errors="replace") + err.decode(errors="replace")
        assert_relayed(self, output, drops, sent=2000)
        self.assertNotIn("error 5", output)
        log = self.server.output.decode()
        for index in (0, 1):
            self.assertGreater(
                log.count(f"[worker {index} txturn.observers.event_log.EventLog#info] Alloc"), 50
            )
        page = yield self.metrics()
        # One allocation per client, and one more per RTP/RTCP pair's
        # RTCP side: the sum of both workers' counts.
        self.assertEqual(value(page, "turn_allocations_created_total", transport="udp"), 300)
        self.assertGreater(value(page, "turn_worker_transfers_total", kind="reservation"), 0)
        self.assertEqual(value(page, "turn_workers"), 2)

    @defer.inlineCallbacks
    def test_health(self) -> Any:
        """
        The supervisor answers /healthz and /readyz: ready with its
        workers running, 503 "draining" once SIGQUIT has arrived while an
        allocation keeps the drain going.
        """
        from tests.test_health import get

        self.start()
        yield self.ready()
        self.assertEqual((yield get(self.metrics_port, "/healthz")), (200, "ok\n"))
        self.assertEqual((yield get(self.metrics_port, "/readyz")), (200, "ready\n"))
        _, request = self.udp_client()
        allocated = yield threads.deferToThread(
            request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
        )
        self.assertEqual(allocated.cls, Class.SUCCESS)
        assert self.server.transport is not None
        self.server.transport.signalProcess(signal.SIGQUIT)
        yield self.server.wait_for(rb"SIGQUIT: draining")
        self.assertEqual((yield get(self.metrics_port, "/readyz")), (503, "not ready: draining\n"))
        self.assertEqual((yield get(self.metrics_port, "/healthz")), (200, "ok\n"))
        # The last allocation ends: the drain is over, and so is the server.
        yield threads.deferToThread(request, Method.REFRESH, [(Attr.LIFETIME, 0)])
        # A worker's line keeps its formatting through the supervisor
        # ("after 3s", not "after 3.0412197113037s").
        yield self.server.wait_for(
            rb"\] Allocation \S+ of test from \S+ deleted \(refresh\) after \d+s:"
        )
        yield self.server.ended

    @defer.inlineCallbacks
    def test_uclient_tcp_allocations(self) -> Any:
        """
        20 RFC 6062 clients (-T): the ConnectionBinds the kernel gives the
        wrong worker are handed to the right one, and nothing is lost.
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        self.start("--user-quota", "0")
        yield self.ready()
        out, err, _ = yield getProcessOutputAndValue(
            uclient, ["-T", "-t", *uclient_args(self.port, peer_port, 20, 20)],
            env=os.environ.copy(),
        )  # fmt: skip
        output = out.decode(errors="replace") + err.decode(errors="replace")
        # -T: TCP to the server and to the peer, nothing may be lost.
        self.assertEqual(uclient_totals(output), (400, 400, 0), output[-2000:])
        page = yield self.metrics()
        self.assertGreater(value(page, "turn_worker_transfers_total", kind="data_connection"), 0)

    @defer.inlineCallbacks
    def test_uclient_tcp_allocations_over_tls(self) -> Any:
        """
        RFC 6062 over TLS (-T -S): a TLS session cannot move, so the
        worker that terminates it splices the data connection to the
        worker holding the peer connection; nothing is lost.  (uclient
        -T -S stalls past 2 clients with one process too.)
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        tls_port = free_udp_port()
        self.start("--cert", cert, "--key", key, "--tls-port", str(tls_port))
        yield self.ready()
        moved = 0.0
        for _ in range(3):
            out, err, _ = yield getProcessOutputAndValue(
                uclient,
                ["-T", "-S", "-t", *uclient_args(tls_port, peer_port, 20, 2)],
                env=os.environ.copy(),
            )
            output = out.decode(errors="replace") + err.decode(errors="replace")
            self.assertEqual(uclient_totals(output), (40, 40, 0), output[-2000:])
            page = yield self.metrics()
            moved = value(page, "turn_worker_transfers_total", kind="data_connection")
        # Each run binds 4 data connections, half of them on the wrong
        # worker on average: 3 runs with none moved would be 1 in 4,096.
        self.assertGreater(moved, 0)

    @defer.inlineCallbacks
    def test_oversized_connection_bind(self) -> Any:
        """
        ConnectionBinds padded past what one hand-off carries (an AMP
        value, 65,535 bytes) with a comprehension-optional attribute, on
        connections to both workers, naming connections of both: each is
        answered 400 where it lands, no worker ends, and 20 clients'
        allocations all still refresh.  (A hand-off of one used to end
        the worker's control connection, and the worker with it.)
        """
        self.start()
        yield self.ready()
        clients = [self.udp_client() for _ in range(20)]
        for _, request in clients:
            answer = yield threads.deferToThread(
                request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
            )
            self.assertEqual(answer.cls, Class.SUCCESS)

        def attack(connection_id: int) -> int:
            client = StunClient("test", "secret")
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                frames, pending = StreamFramer(), list[bytes]()

                def receive() -> bytes:
                    while not pending:
                        data = s.recv(65536)
                        if not data:
                            raise ConnectionError("closed")
                        pending.extend(frames.feed(data))
                    return pending.pop(0)

                # A nonce first, from a request that is never handed off.
                s.sendall(client.request(Method.REFRESH, authenticate=False))
                self.assertTrue(client.challenged(client.learn(receive())))
                bind = [(Attr.CONNECTION_ID, connection_id), (0x8123, b"")]
                # The largest frame STUN allows: 65,532 bytes of attributes.
                unpadded = len(client.request(Method.CONNECTION_BIND, bind)) - 20
                bind[1] = (0x8123, b"x" * (65_532 - unpadded))
                request = client.request(Method.CONNECTION_BIND, bind)
                self.assertEqual(len(request), 65_552)
                s.sendall(request)
                code: int = client.learn(receive()).get(Attr.ERROR_CODE)[0]
                return code

        codes = []
        for i in range(16):
            codes.append((yield threads.deferToThread(attack, 1000 + i)))
        self.assertEqual(codes, [400] * 16)
        self.assertIn(b"Not passing a 65552-byte ConnectionBind to worker", self.server.output)
        self.assertNotRegex(self.server.output.decode(), r"Worker \d \(pid \d+\) (was|exited)")
        for _, request in clients:
            answer = yield threads.deferToThread(request, Method.REFRESH, [(Attr.LIFETIME, 600)])
            self.assertEqual(answer.cls, Class.SUCCESS)

    @defer.inlineCallbacks
    def test_quota_across_workers(self) -> Any:
        """
        --user-quota 10 with clients on both workers: 10 allocations in
        all, the rest 486.  On SIGTERM every worker writes its records to
        the one usage file, whole lines, ids unique.
        """
        usage = os.path.abspath(self.mktemp())
        self.start("--user-quota", "10", "--usage-file", usage)
        yield self.ready()
        codes = []
        workers = set()
        for _ in range(14):
            _, request = self.udp_client()
            answer = yield threads.deferToThread(
                request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
            )
            if answer.cls == Class.SUCCESS:
                codes.append(200)
                workers.add(
                    _worker_of(answer.get(Attr.XOR_RELAYED_ADDRESS)[1], self.low, self.high)
                )
            else:
                codes.append(answer.get(Attr.ERROR_CODE)[0])
        self.assertEqual((codes.count(200), codes.count(486)), (10, 4))
        self.assertEqual(workers, {0, 1})
        assert self.server.transport is not None
        self.server.transport.signalProcess("TERM")
        yield self.server.ended
        with open(usage) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(len(records), 10)
        self.assertEqual(len({r["allocation"] for r in records}), 10)
        relayed = {
            _worker_of(int(r["relayed"][0].rsplit(":", 1)[1]), self.low, self.high) for r in records
        }
        self.assertEqual(relayed, {0, 1})

    @defer.inlineCallbacks
    def test_sigkill_and_sighup(self) -> Any:
        """
        SIGKILL one worker while allocations live on both: the other
        worker's keep relaying and refreshing, the dead one's get 437, the
        replacement (started within a second) serves new ones, and its
        places are given back.  SIGHUP then reaches every worker, and
        SIGQUIT drains them all.
        """
        self.start("--user-quota", "12", "--drain-timeout", "2")
        yield self.ready()
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind(("127.0.0.1", 0))
        self.addCleanup(echo.close)
        peer = echo.getsockname()
        allocations: dict[int, list[Any]] = {0: [], 1: []}
        while (
            min(len(a) for a in allocations.values()) < 2 or sum(map(len, allocations.values())) < 6
        ):
            sock, request = self.udp_client()
            answer = yield threads.deferToThread(
                request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
            )
            self.assertEqual(answer.cls, Class.SUCCESS, answer)
            relayed = answer.get(Attr.XOR_RELAYED_ADDRESS)
            yield threads.deferToThread(
                request,
                Method.CHANNEL_BIND,
                [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peer)],
            )
            allocations[_worker_of(relayed[1], self.low, self.high)].append(
                (sock, request, relayed)
            )
        pid = int(_search(rb"Worker 1 started \(pid (\d+)\)", self.server.output))
        os.kill(pid, signal.SIGKILL)
        killed_at = reactor.seconds()
        yield self.server.wait_for(
            rb"Worker 1 \(pid %d\) was killed by SIGKILL; (\d+) places" % pid
        )
        match = yield self.server.wait_for(rb"Worker 1 started \(pid (?!%d)\d+\)" % pid)
        self.assertLess(reactor.seconds() - killed_at, 1.0)
        given_back = int(_search(rb"killed by SIGKILL; (\d+) places", self.server.output))
        self.assertEqual(given_back, len(allocations[1]))
        yield self.server.wait_for(
            rb"\[worker 1 [^\]]*\] Relaying on.*\[worker 1 [^\]]*\] Relaying on"
        )
        del match
        # Worker 0's allocations relay and refresh; worker 1's are gone.
        for sock, request, relayed in allocations[0]:
            sock.sendto(b"\x40\x00\x00\x04ping", ("127.0.0.1", self.port))
            data, source = yield threads.deferToThread(echo.recvfrom, 100)
            self.assertEqual((data, source[1]), (b"ping", relayed[1]))
            refreshed = yield threads.deferToThread(request, Method.REFRESH, [(Attr.LIFETIME, 600)])
            self.assertEqual(refreshed.cls, Class.SUCCESS)
        for _, request, _ in allocations[1]:
            refreshed = yield threads.deferToThread(request, Method.REFRESH, [(Attr.LIFETIME, 600)])
            self.assertEqual(refreshed.get(Attr.ERROR_CODE)[0], 437)
        # The replacement serves new allocations, and the quota counts
        # only the live ones: 12 - len(allocations[0]) more fit.
        served = set()
        for _ in range(12 - len(allocations[0])):
            _, request = self.udp_client()
            answer = yield threads.deferToThread(
                request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
            )
            self.assertEqual(answer.cls, Class.SUCCESS, answer)
            served.add(_worker_of(answer.get(Attr.XOR_RELAYED_ADDRESS)[1], self.low, self.high))
        self.assertIn(1, served)
        page = yield self.metrics()
        self.assertEqual(value(page, "turn_worker_restarts_total"), 1)
        # SIGHUP reaches both workers.
        assert self.server.transport is not None
        self.server.transport.signalProcess("HUP")
        for index in (0, 1):
            yield self.server.wait_for(rb"\[worker %d [^\]]*\] SIGHUP: reloaded" % index)
        # SIGQUIT drains every worker (2 s here), then the supervisor stops.
        self.server.transport.signalProcess(signal.SIGQUIT)
        yield self.server.ended
        log = self.server.output
        for index in (0, 1):
            self.assertIn(b"[worker %d txturn.app.drain.Drain#info] Drained" % index, log)
        self.assertIn(b"Every worker has drained; stopping", log)
        yield deferLater(reactor, 0, lambda: None)
