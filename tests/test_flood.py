"""
A flood on loopback, bounded in count and time: 100,000 garbage datagrams
and 20,000 unauthenticated Allocates from many source ports, against a
real C{twistd turn} process, while coturn's turnutils_uclient relays
through it.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.test_interop import (
    UdpDrops,
    assert_relayed,
    require,
    spawn,
    twistd_turn,
    uclient_args,
)
from tests.test_service import free_udp_port
from txturn.testing import StunClient
from txturn.wire.stun import Attr, Class, Method, decode

reactor: Any = _reactor

GARBAGE = 100_000
ALLOCATES = 20_000
SOURCES = 200


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class FloodTests(TestCase):
    """
    The server survives a flood without losing a real client's packets or
    growing its memory.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_flood(self) -> Any:
        """
        During the flood uclient relays 2 x 300 messages with 0 lost; the
        server still answers a Binding afterwards; no allocation was made
        for the flooders; the server's RSS grew by less than 4 MiB.
        """
        uclient = require("turnutils_uclient")
        peer = require("turnutils_peer")
        port = free_udp_port()
        peer_port = free_udp_port()
        server = spawn(
            twistd_turn(
                port,
                "--user",
                "test:secret",
                "--allow-loopback-peers",
                "--no-tcp",
                "--relay-ip",
                "127.0.0.1",
            ),
            self,
        )
        yield server.wait_for(rb"TURN listening on UDP")
        spawn([peer, "-L", "127.0.0.1", "-p", str(peer_port)], self)
        pid = server.transport.pid  # type: ignore[union-attr]
        probe = StunClient("test", "secret")
        binding = probe.request(Method.BINDING, authenticate=False)
        yield self.answered(port, binding)
        # Warm up: one real run, so the baseline includes a working server.
        yield self.relay(uclient, port, peer_port, messages=20)
        before = rss_kib(pid)

        flooders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOURCES)]
        for s in flooders:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        for s in flooders:
            self.addCleanup(s.close)
        rng = random.Random(5)
        unauthenticated = [
            StunClient("x", "y").request(
                Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], authenticate=False
            )
            for _ in range(64)
        ]
        garbage = [os.urandom(rng.randint(1, 200)) for _ in range(256)]
        plan = [garbage[i % 256] for i in range(GARBAGE)] + [
            unauthenticated[i % 64] for i in range(ALLOCATES)
        ]
        rng.shuffle(plan)

        def send_batch(start: int) -> None:
            for i in range(start, min(start + 500, len(plan))):
                try:
                    flooders[i % SOURCES].sendto(plan[i], ("127.0.0.1", port))
                except BlockingIOError:
                    pass

        flood = task.cooperate(
            task.deferLater(reactor, 0.02, send_batch, start) for start in range(0, len(plan), 500)
        ).whenDone()
        relayed = self.relay(uclient, port, peer_port, messages=300)
        yield flood
        sent, received = yield relayed
        self.assertGreaterEqual(sent, 600)
        yield self.answered(port, binding)
        yield task.deferLater(reactor, 0.5, lambda: None)
        grown = rss_kib(pid) - before
        self.assertLess(grown, 4096, f"RSS grew by {grown} KiB")

    @defer.inlineCallbacks
    def relay(self, uclient: str, port: int, peer_port: int, messages: int) -> Any:
        """
        uclient's two clients relay C{messages} each through the server,
        losing none but what the kernel dropped (see L{assert_relayed}:
        on a quiet machine the flood fits in the server's receive buffer).
        """
        drops = UdpDrops()
        out, err, code = yield getProcessOutputAndValue(
            uclient, uclient_args(port, peer_port, messages, 2, length=100)
        )
        output = out.decode(errors="replace") + err.decode(errors="replace")
        return assert_relayed(self, output, drops)

    @defer.inlineCallbacks
    def answered(self, port: int, request: bytes) -> Any:
        """
        The server answers C{request} within a few tries.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for _ in range(50):
                s.sendto(request, ("127.0.0.1", port))
                yield task.deferLater(reactor, 0.1, lambda: None)
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    continue
                self.assertEqual(decode(data).cls, Class.SUCCESS)
                return
        raise AssertionError("the server did not answer")
