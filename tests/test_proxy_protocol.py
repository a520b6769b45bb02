"""
PROXY protocol behind load balancers (C{--proxy-protocol-from}): the
header parser; TCP and TLS listeners on loopback taking a header only
from trusted sources (127.0.0.2 here) and using the client it names; and
HAProxy (Debian's) in front of an installed C{twistd turn}, with
coturn's uclient relaying through it over TCP and TLS.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import ssl
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.test_interop import spawn, twistd_turn, uclient_args
from tests.test_redis import free_tcp_port
from tests.test_service import free_udp_port, make_service
from txturn.testing import StunClient, self_signed_certificate
from txturn.wire.framing import StreamFramer
from txturn.wire.proxy_header import (
    MAX_V2_BODY,
    ProxyHeader,
    ProxyHeaderError,
    parse,
    v1,
    v2,
)
from txturn.wire.stun import Attr, Method, decode

reactor: Any = _reactor
CLIENT = ("198.51.100.7", 40000)
#: The load balancer these tests trust, and play.
BALANCER = [ipaddress.ip_network("127.0.0.2/32")]
SERVER = ("192.0.2.1", 3478)


class ParserTests(SynchronousTestCase):
    """
    Versions 1 and 2, whole, in pieces and broken.
    """

    def test_v1(self) -> None:
        header = v1(CLIENT, SERVER)
        self.assertEqual(parse(header + b"rest"), ProxyHeader(CLIENT, SERVER, len(header)))
        six = v1(("2001:db8::7", 1), ("2001:db8::1", 2))
        parsed = parse(six)
        assert parsed is not None
        self.assertEqual(parsed.source, ("2001:db8::7", 1))
        self.assertEqual(parse(b"PROXY UNKNOWN\r\n"), ProxyHeader(None, None, 15))

    def test_v2(self) -> None:
        header = v2(CLIENT, SERVER)
        self.assertEqual(parse(header + b"x"), ProxyHeader(CLIENT, SERVER, len(header)))
        six = parse(v2(("2001:db8::7", 1), ("2001:db8::1", 2), datagram=True))
        assert six is not None
        self.assertEqual((six.source, six.datagram), (("2001:db8::7", 1), True))
        local = parse(v2(CLIENT, SERVER, local=True))
        assert local is not None
        self.assertEqual((local.source, local.destination), (None, None))

    def test_pieces(self) -> None:
        """
        Every proper prefix of a header asks for more; the whole answers.
        """
        for header in (v1(CLIENT, SERVER), v2(("2001:db8::7", 1), ("2001:db8::1", 2))):
            for end in range(len(header)):
                self.assertIsNone(parse(header[:end]), (header, end))
            self.assertIsNotNone(parse(header))

    def test_malformed(self) -> None:
        """
        Each of these is refused with a reason, never taken as a client.
        """
        good = v2(CLIENT, SERVER)
        for data in [
            b"\x00\x01 a STUN message",
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY " + b"x" * 120,
            good[:12] + b"\x11" + good[13:],
            good[:12] + b"\x22" + good[13:],
            good[:13] + b"\x31" + good[14:],
            good[:13] + b"\x13" + good[14:],
            good[:14] + b"\x00\x04" + good[16:20],
            good[:14] + (MAX_V2_BODY + 1).to_bytes(2, "big"),
        ]:
            self.assertRaises(ProxyHeaderError, parse, data)

    def test_canonical(self) -> None:
        """
        Addresses come out as Python writes them, whatever the sender's
        spelling.
        """
        header = parse(b"PROXY TCP6 2001:DB8:0::7 2001:db8::1 1 2\r\n")
        assert header is not None
        self.assertEqual(header.source, ("2001:db8::7", 1))
        self.assertEqual(str(ipaddress.ip_address("2001:DB8:0::7")), "2001:db8::7")


def binding(sock: Any) -> tuple[str, int] | None:
    """
    A Binding request on C{sock}; the XOR-MAPPED-ADDRESS, or C{None} when
    the server closed the connection.
    """
    client = StunClient("x", "y")
    sock.sendall(client.request(Method.BINDING, authenticate=False))
    framer = StreamFramer()
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return None
        if not data:
            return None
        for frame in framer.feed(data):
            mapped: tuple[str, int] = decode(bytes(frame)).get(Attr.XOR_MAPPED_ADDRESS)
            return mapped


class ListenerTests(TestCase):
    """
    A real service on 127.0.0.1 trusting 127.0.0.2 as its balancer.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        from txturn.transports.tls import TlsCredentials

        self.service = make_service(
            transports={"tcp", "tls"},
            tls=TlsCredentials(cert, key),
            tls_port=0,
            proxy_from=BALANCER,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def connect(self, source: str, transport: str = "tcp") -> socket.socket:
        sock = socket.create_connection(
            ("127.0.0.1", self.service.port_of(transport)), timeout=5, source_address=(source, 0)
        )
        self.addCleanup(sock.close)
        return sock

    def in_thread(self, work: Any) -> Any:
        return threads.deferToThread(work)

    @defer.inlineCallbacks
    def test_trusted(self) -> Any:
        """
        From the balancer, v1 or v2: the client the header names is the one
        XOR-MAPPED-ADDRESS reports; without a header, the connection is
        closed.
        """
        for header in (v1(CLIENT, SERVER), v2(CLIENT, SERVER)):
            sock = self.connect("127.0.0.2")

            def ask(sock: socket.socket = sock, header: bytes = header) -> Any:
                sock.sendall(header)
                return binding(sock)

            self.assertEqual((yield self.in_thread(ask)), CLIENT)
        bare = self.connect("127.0.0.2")
        self.assertIsNone((yield self.in_thread(lambda: binding(bare))))

    @defer.inlineCallbacks
    def test_untrusted(self) -> Any:
        """
        From anyone else, a PROXY header is refused (the connection is
        closed), and a plain client is itself.
        """
        sock = self.connect("127.0.0.1")

        def spoof() -> Any:
            sock.sendall(v2(CLIENT, SERVER))
            return binding(sock)

        self.assertIsNone((yield self.in_thread(spoof)))
        plain = self.connect("127.0.0.1")
        mapped = yield self.in_thread(lambda: binding(plain))
        self.assertEqual(mapped, plain.getsockname())

    @defer.inlineCallbacks
    def test_tls(self) -> Any:
        """
        Over TLS the header comes before the handshake.
        """
        raw = self.connect("127.0.0.2", "tls")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def ask() -> Any:
            raw.sendall(v1(CLIENT, SERVER))
            with context.wrap_socket(raw) as tls:
                return binding(tls)

        self.assertEqual((yield self.in_thread(ask)), CLIENT)

    @defer.inlineCallbacks
    def test_deadline(self) -> Any:
        """
        A balancer's connection that sends nothing is closed after the
        handshake deadline, not held.
        """
        from txturn.transports.proxy import ProxyProtocolFactory

        [factory] = [p.factory for n, p in self.service.listeners.ports if n == "tcp"]
        self.assertIsInstance(factory, ProxyProtocolFactory)
        factory.deadline = 0.2
        sock = self.connect("127.0.0.2")
        sock.settimeout(5)

        def closed() -> bool:
            try:
                return sock.recv(10) == b""
            except ConnectionResetError:
                return True

        self.assertTrue((yield self.in_thread(closed)))


HAPROXY = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend turn_tcp
    bind 127.0.0.1:{tcp_front}
    default_backend txturn_tcp
backend txturn_tcp
    server txturn 127.0.0.1:{tcp_port} send-proxy-v2 source 127.0.0.2
frontend turn_tls
    bind 127.0.0.1:{tls_front}
    default_backend txturn_tls
backend txturn_tls
    server txturn 127.0.0.1:{tls_port} send-proxy source 127.0.0.2
"""


class HAProxyTests(TestCase):
    """
    HAProxy in front of C{twistd turn --proxy-protocol-from 127.0.0.2}:
    PROXY v2 to the TCP listener, v1 to the TLS one (TLS passed through).
    uclient's allocations are the client's, not the balancer's.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_uclient_through_haproxy(self) -> Any:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            if os.environ.get("CI"):
                raise AssertionError("haproxy is missing: .ci/run must install it")
            raise SkipTest("haproxy not installed (apt-get install haproxy)")
        uclient = shutil.which("turnutils_uclient")
        if uclient is None:
            raise SkipTest("turnutils_uclient not installed")
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        port, tls_port = free_udp_port(), free_tcp_port()
        tcp_front, tls_front, peer_port = free_tcp_port(), free_tcp_port(), free_udp_port()
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(
                HAPROXY.format(
                    tcp_front=tcp_front, tcp_port=port, tls_front=tls_front, tls_port=tls_port
                )
            )
        server = spawn(
            twistd_turn(
                port,
                "--user",
                "test:secret",
                "--realm",
                "txturn",
                "--relay-ip",
                "127.0.0.1",
                "--allow-loopback-peers",
                "--cert",
                cert,
                "--key",
                key,
                "--tls-port",
                str(tls_port),
                "--proxy-protocol-from",
                "127.0.0.2",
            ),
            self,
        )
        yield server.wait_for(rb"TURN listening on TLS")
        balancer = spawn([haproxy, "-f", config, "-db"], self)
        spawn(["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)], self)
        yield wait_listening(tcp_front)
        for flags, front in [(["-t"], tcp_front), (["-t", "-S"], tls_front)]:
            args = uclient_args(front, peer_port, 5, 1, length=100)
            out, err, code = yield getProcessOutputAndValue(
                uclient, [*flags, *args], env=os.environ.copy()
            )
            said = (out + err).decode(errors="replace")
            self.assertIn("tot_recv_msgs=", said, said[-2000:])
        log = server.output.decode(errors="replace")
        allocated = re.findall(r"Allocated \S+ for test from (\S+) over (\w+)", log)
        self.assertEqual(sorted({t for _, t in allocated}), ["tcp", "tls"], log[-3000:])
        for client, _ in allocated:
            self.assertTrue(client.startswith("127.0.0.1:"), client)
        self.assertNotIn("from 127.0.0.2", log)
        self.assertNotIn(b"ALERT", balancer.output)


@defer.inlineCallbacks
def wait_listening(port: int) -> Any:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            from twisted.internet.task import deferLater

            yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"nothing listens on {port}")


class DatagramTests(TestCase):
    """
    UDP from a balancer that prefixes every datagram with a PROXY v2
    header (this test's client plays it, from 127.0.0.2): the client it
    names allocates and relays both ways; answers go back to the balancer
    unprefixed; datagrams from the balancer without a header, and headers
    from anyone else, get nothing.
    """

    def setUp(self) -> None:
        self.service = make_service(transports={"udp"}, proxy_from=BALANCER)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.port_of("udp")

    def socket(self, host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((host, 0))
        sock.settimeout(2)
        return sock

    @defer.inlineCallbacks
    def test_relay_through_balancer(self) -> Any:
        balancer, peer = self.socket("127.0.0.2"), self.socket("127.0.0.1")
        server = ("127.0.0.1", self.port)
        header = v2(CLIENT, server, datagram=True)
        client = StunClient("alice", "secret")

        def exchange_through(method: int, attributes: list[tuple[int, Any]]) -> Any:
            from txturn.testing import exchange

            return exchange(
                client,
                method,
                attributes,
                lambda data: balancer.sendto(header + data, server),
                lambda: balancer.recv(4096),
            )

        def run() -> Any:
            mapped = exchange_through(Method.BINDING, [])
            allocated = exchange_through(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
            exchange_through(
                Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer.getsockname())]
            )
            relayed = allocated.get(Attr.XOR_RELAYED_ADDRESS)
            send = client.request(
                Method.SEND,
                [(Attr.XOR_PEER_ADDRESS, peer.getsockname()), (Attr.DATA, b"up")],
                cls=0x10,
            )
            balancer.sendto(header + send, server)
            up, _ = peer.recvfrom(100)
            peer.sendto(b"down", relayed)
            down = decode(balancer.recv(4096))
            return mapped.get(Attr.XOR_MAPPED_ADDRESS), up, down.get(Attr.DATA)

        mapped, up, down = yield threads.deferToThread(run)
        self.assertEqual(mapped, CLIENT)
        self.assertEqual((up, down), (b"up", b"down"))
        [(channel, address)] = list(self.service.server.allocations)
        self.assertEqual(address, CLIENT)

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        """
        The balancer without a header, or anyone else with one: no answer.
        """
        server = ("127.0.0.1", self.port)
        request = StunClient("x", "y").request(Method.BINDING, authenticate=False)
        for sender, data in [
            (self.socket("127.0.0.2"), request),
            (self.socket("127.0.0.1"), v2(CLIENT, server, datagram=True) + request),
            (self.socket("127.0.0.2"), v2(CLIENT, server) + request),
        ]:

            def silent(sender: socket.socket = sender, data: bytes = data) -> bool:
                sender.sendto(data, server)
                sender.settimeout(0.3)
                try:
                    sender.recv(100)
                except TimeoutError:
                    return True
                return False

            self.assertTrue((yield threads.deferToThread(silent)))
