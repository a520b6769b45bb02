"""
Connections that never authenticate, against a real C{twistd turn}
process with 1,024 descriptors: idle TCP connections, TLS handshakes that
stop halfway and connections stalled mid-frame are refused past the caps,
evicted to let real clients in, and closed on time, while
turnutils_uclient relays over TCP and UDP with nothing lost.  Before,
1,100 idle connections took every descriptor and legitimate clients got
508.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from typing import Any, Sequence

from OpenSSL import SSL
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.test_flood import rss_kib
from tests.test_interop import (
    OutputWatcher,
    UdpDrops,
    assert_relayed,
    require,
    spawn,
    twistd_turn,
    uclient_args,
)
from tests.test_service import free_udp_port
from txturn.testing import first_flight, self_signed_certificate

reactor: Any = _reactor

#: Addresses the hostile connections come from, 100 each: all loopback.
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 13)]
PER_ATTACKER = 100
STALLED_HEADER = b"\x00\x01\x00\x64\x21\x12\xa4\x42" + b"s" * 12


def open_connections(target: tuple[str, int], sources: list[str], each: int) -> list[socket.socket]:
    """
    C{each} non-blocking TCP connections to C{target} from every source
    address.
    """
    sockets = []
    for source in sources:
        for _ in range(each):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((source, 0))
            try:
                s.connect(target)
            except BlockingIOError:
                pass
            sockets.append(s)
    return sockets


def closed_by_server(s: socket.socket) -> bool:
    """
    Whether the server has closed (or reset) this connection.
    """
    while True:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return False
        except OSError as e:
            return e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNREFUSED)
        if not data:
            return True


def start_server(
    test: TestCase, *options: str, prefix: Sequence[str] = ()
) -> tuple[OutputWatcher, int, int, int]:
    """
    A real C{twistd turn} with user test/secret, a certificate, relays on
    127.0.0.1 and C{options}, run under C{prefix}; and a turnutils_peer.
    Returns the server and its UDP/TCP, TLS/DTLS and peer ports.
    """
    peer = require("turnutils_peer")
    port, tls_port, peer_port = free_udp_port(), free_udp_port(), free_udp_port()
    cert, key = self_signed_certificate(tempfile.mkdtemp())
    command = twistd_turn(
        port,
        "--user", "test:secret",
        "--allow-loopback-peers",
        "--relay-ip", "127.0.0.1",
        "--tls-port", str(tls_port),
        "--cert", cert, "--key", key,
        *options,
    )  # fmt: skip
    server = spawn([*prefix, *command], test)
    spawn([peer, "-L", "127.0.0.1", "-p", str(peer_port)], test)
    return server, port, tls_port, peer_port


def tls_client_hello() -> bytes:
    """
    The first flight of a real TLS client.
    """
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    return first_flight(client)


class ExhaustionTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_connections_that_never_authenticate(self) -> Any:
        uclient = require("turnutils_uclient")
        # The process may not raise its own limit past 1,024.
        server, port, tls_port, peer_port = start_server(
            self,
            "--no-dtls",
            "--max-connections-per-ip", str(PER_ATTACKER // 2),
            "--idle-timeout", "10",
            "--handshake-timeout", "3",
            "--frame-timeout", "3",
            prefix=["prlimit", "--nofile=1024:1024"],
        )  # fmt: skip
        started = yield server.wait_for(rb"Descriptor limit (\d+): up to (\d+) TCP/TLS connections")
        self.assertEqual(started.group(1), b"1024")
        self.assertEqual(started.group(2), b"240")
        yield server.wait_for(rb"TURN listening on TLS")

        # 1,100 idle TCP connections, 100 from each of 11 addresses; 300
        # TLS connections that start a handshake and stop; 300 that send
        # the header of a frame and nothing more.
        idle: list[socket.socket] = []
        for source in ATTACKERS:
            idle += open_connections(("127.0.0.1", port), [source], PER_ATTACKER)
            yield task.deferLater(reactor, 0.05, lambda: None)
        half_tls = open_connections(("127.0.0.1", tls_port), ATTACKERS[:3], PER_ATTACKER)
        stalled = open_connections(("127.0.0.1", port), ["127.0.0.20"] * 3, PER_ATTACKER)
        hostile = idle + half_tls + stalled
        for s in hostile:
            self.addCleanup(s.close)
        yield task.deferLater(reactor, 0.5, lambda: None)
        hello = tls_client_hello()
        for s in half_tls:
            try:
                s.send(hello[: len(hello) // 2])
            except OSError:
                pass
        for s in stalled:
            try:
                s.send(STALLED_HEADER)
            except OSError:
                pass
        # Connections past the backlog are retried by the kernel after a
        # second or so; give every one time to be accepted or refused.
        yield task.deferLater(reactor, 3, lambda: None)
        pid = server.transport.pid  # type: ignore[union-attr]
        held = len(os.listdir(f"/proc/{pid}/fd"))
        # At most 240 connections in all: three quarters of the
        # descriptors stay free for relays.
        self.assertLess(held, 240 + 64)

        # Legitimate clients lose nothing meanwhile: over TCP first, while
        # idle connections from 11 addresses fill every place (they are
        # evicted, oldest first, to let real clients in), then over UDP.
        for extra in (["-t"], []):
            drops = UdpDrops()
            out, err, code = yield getProcessOutputAndValue(
                uclient, extra + uclient_args(port, peer_port, 50, 2, length=100)
            )
            sent, _ = assert_relayed(self, (out + err).decode(errors="replace"), drops)
            self.assertGreaterEqual(sent, 100)

        # Every hostile connection is closed within its deadline plus a
        # sweep (idle 10 s, handshake and frame 3 s, sweeps every 2 s).
        still_open = hostile
        for _ in range(16):
            yield task.deferLater(reactor, 1, lambda: None)
            still_open = [s for s in still_open if not closed_by_server(s)]
            if not still_open:
                break
        self.assertEqual(len(still_open), 0)
        yield server.wait_for(rb"Refused a TCP/TLS connection from 127\.0\.0\.\d+: too many")


def stalled_dtls_handshake(host: str, port: int) -> socket.socket | None:
    """
    A DTLS client from C{host} that does the cookie exchange, sends its
    second hello and then goes quiet, holding a handshake slot.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2)
    client = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
    client.set_connect_state()
    s.sendto(first_flight(client), ("127.0.0.1", port))
    try:
        client.bio_write(s.recv(65536))
    except OSError:
        s.close()
        return None
    s.sendto(first_flight(client), ("127.0.0.1", port))
    return s


class DtlsFloodTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_dtls_flood(self) -> Any:
        """
        5,000 cookieless hellos get 44-byte answers and leave nothing;
        1,200 junk handshake records get nothing; 600 handshakes that stall
        after the cookie, from 30 addresses, fill every handshake slot;
        meanwhile turnutils_uclient relays over DTLS with nothing lost, at
        once, and the server's RSS grows by less than 40 MiB.
        """
        uclient = require("turnutils_uclient")
        server, port, tls_port, peer_port = start_server(self, "--no-tcp", "--no-tls")
        yield server.wait_for(rb"TURN listening on DTLS")
        pid = server.transport.pid  # type: ignore[union-attr]
        before = rss_kib(pid)

        client = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
        client.set_connect_state()
        hello = first_flight(client)
        answered = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for i in range(5000):
                s.sendto(hello, ("127.0.0.1", tls_port))
                if i % 100 == 99:
                    yield task.deferLater(reactor, 0.01, lambda: None)
                    while True:
                        try:
                            answered += len(s.recv(65536))
                        except BlockingIOError:
                            break
            for _ in range(1200):
                s.sendto(b"\x16\xfe\xfd" + os.urandom(60), ("127.0.0.1", tls_port))
            yield task.deferLater(reactor, 0.3, lambda: None)
            while True:
                try:
                    answered += len(s.recv(65536))
                except BlockingIOError:
                    break
        self.assertLessEqual(answered, 5000 * len(hello))

        stalled = []
        for i in range(600):
            stalled_socket = stalled_dtls_handshake(f"127.0.1.{1 + i // 20}", tls_port)
            if stalled_socket is not None:
                stalled.append(stalled_socket)
                self.addCleanup(stalled_socket.close)
        self.assertGreater(len(stalled), 500)

        started = time.monotonic()
        drops = UdpDrops()
        call = getProcessOutputAndValue(
            uclient, ["-S", *uclient_args(tls_port, peer_port, 50, 2, length=100)]
        )
        # The stalled handshakes made room at once: uclient's handshakes
        # and Allocates did not wait for them to time out (10 s), as a
        # full listener that refused newcomers would have made them.
        # (Measured to the allocation: uclient then waits 1-6 s of its
        # own before its first message.)
        yield server.wait_for(rb"Allocated .* over dtls")
        took = time.monotonic() - started
        self.assertLess(took, 8, f"uclient's first allocation took {took:.1f} s")
        out, err, code = yield call
        output = (out + err).decode(errors="replace")
        sent, _ = assert_relayed(self, output, drops)
        self.assertGreaterEqual(sent, 100, output[-2000:])
        grown = rss_kib(pid) - before
        self.assertLess(grown, 40 * 1024, f"RSS grew by {grown} KiB")
