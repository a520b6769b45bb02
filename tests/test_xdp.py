"""
The kernel data path (C{--xdp}) in network namespaces the test creates:
a client, a server and a peer namespace joined by veth pairs, the XDP
program attached natively to the server's two veths.  Real
C{turnutils_uclient} clients relay through it over IPv4 and IPv6; a
scripted client and peer check packet by packet that what the program
relays, and what it leaves alone, is what the Python path does (an
expired channel, a refused peer, a deleted allocation, mutated
datagrams both ways); the program is gone after a stop and after
SIGKILL.  Skipped, with the reason, where BPF is not permitted.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shutil
import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest, TestCase

from tests.test_interop import require, spawn

_numbers = itertools.count(1)

#: The server's addresses: towards the client, and its relay towards peers.
SERVER4, SERVER6 = "10.97.1.1", "fd97:1::1"
RELAY4, RELAY6 = "10.97.2.1", "fd97:2::1"
CLIENT4, CLIENT6 = "10.97.1.2", "fd97:1::2"
PEER4, PEER6 = "10.97.2.2", "fd97:2::2"
#: A peer address the server's policy refuses.
REFUSED4 = "10.97.2.3"
PEER_PORT = 3480


def xdp_available() -> None:
    """
    Skip (or, under CI, fail) where the program cannot run.
    """
    if sys.platform != "linux" or os.geteuid() != 0:
        raise SkipTest("XDP needs Linux and root (CAP_BPF, CAP_NET_ADMIN) for the namespaces")
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            raise SkipTest(f"{tool} not installed (apt-get install iproute2 ethtool)")
    from txturn.fastpath.xdp import XdpProgram, XdpUnavailable, object_path

    if object_path() is None:
        if os.environ.get("CI"):
            raise AssertionError("the XDP program was not built: .ci/run must install clang")
        raise SkipTest("the XDP program was not built (apt-get install clang libbpf-dev)")
    try:
        XdpProgram([]).close()
    except XdpUnavailable as e:
        raise SkipTest(f"BPF not permitted here: {e}") from None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Topology:
    """
    Three namespaces: client (c0), server (s0 towards the client, s1
    towards the peers) and peer (p0); removed when the test ends.
    Transmit checksum offload is off, so every datagram carries its
    whole checksum (as from a physical NIC); GRO is on at the far ends,
    which lets a veth take redirected frames.
    """

    def __init__(self, test: TestCase) -> None:
        n = f"{os.getpid() % 10000}x{next(_numbers)}"
        self.client, self.server, self.peer = f"xc{n}", f"xs{n}", f"xp{n}"
        for ns in (self.client, self.server, self.peer):
            ip("netns", "add", ns)
            test.addCleanup(ip, "netns", "del", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "c0", "netns", self.client, "type", "veth", "peer", "name", "s0",
           "netns", self.server)  # fmt: skip
        ip("link", "add", "p0", "netns", self.peer, "type", "veth", "peer", "name", "s1",
           "netns", self.server)  # fmt: skip
        for ns, device, addresses in [
            (self.client, "c0", [f"{CLIENT4}/24", f"{CLIENT6}/64"]),
            (self.server, "s0", [f"{SERVER4}/24", f"{SERVER6}/64"]),
            (self.server, "s1", [f"{RELAY4}/24", f"{RELAY6}/64"]),
            (self.peer, "p0", [f"{PEER4}/24", f"{PEER6}/64", f"{REFUSED4}/24"]),
        ]:
            for address in addresses:
                ip("-n", ns, "addr", "add", address, "dev", device, "nodad")
            ip("-n", ns, "link", "set", device, "up")
            for feature in (["tx", "off"], ["gro", "on"]):
                self.run(ns, "ethtool", "-K", device, *feature)
        for device in ("s0", "s1"):
            for version in ("ipv4", "ipv6"):
                self.run(self.server, "sysctl", "-qw", f"net.{version}.conf.{device}.forwarding=1")

    def run(self, ns: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kwargs
        )

    def inside(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def xdp_attached(self) -> bool:
        shown = self.run(self.server, "ip", "link", "show")
        return " xdp" in shown.stdout or "prog/xdp" in shown.stdout

    def metrics(self) -> dict[str, float]:
        page = self.run(
            self.server,
            sys.executable,
            "-c",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:9641/metrics').read().decode())",
        ).stdout
        return {
            name: float(value)
            for name, value in re.findall(r"^(turn_\S+) (\S+)$", page, flags=re.MULTILINE)
        }


#: Runs in the server namespace: twistd, with shorter permission and
#: channel lifetimes when asked (so an expiry happens within the test).
SERVER = """
import sys
lifetimes = sys.argv.pop(1)
if lifetimes != "-":
    import txturn.core.allocation as allocation
    allocation.PERMISSION_LIFETIME, allocation.CHANNEL_LIFETIME = map(float, lifetimes.split(","))
from twisted.scripts.twistd import run
run()
"""

#: Runs in the client namespace: a TURN client driven by JSON commands on
#: stdin, answering each with a JSON line.
CLIENT = """
import json, socket, sys, time
from txturn.testing import StunClient, exchange
from txturn.wire.stun import Attr, Class, Method
server = sys.argv[1]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((server, 3478))
client = StunClient("test", "secret")
print(json.dumps({}), flush=True)
def request(method, attributes):
    answer = exchange(client, method, attributes, s.send, lambda: s.recv(65536))
    code = 0 if answer.cls == Class.SUCCESS else answer.get(Attr.ERROR_CODE)[0]
    return code, answer
for line in sys.stdin:
    command = json.loads(line)
    kind, reply = command[0], {}
    if kind == "allocate":
        attributes = [(Attr.REQUESTED_TRANSPORT, 17)]
        if family == socket.AF_INET6:
            attributes.append((Attr.REQUESTED_ADDRESS_FAMILY, 2))
        code, answer = request(Method.ALLOCATE, attributes)
        reply = {"code": code, "relay": list(answer.get(Attr.XOR_RELAYED_ADDRESS) or ())}
    elif kind == "bind":
        code, _ = request(
            Method.CHANNEL_BIND,
            [(Attr.CHANNEL_NUMBER, command[1]), (Attr.XOR_PEER_ADDRESS, (command[2], command[3]))],
        )
        reply = {"code": code}
    elif kind == "refresh0":
        reply = {"code": request(Method.REFRESH, [(Attr.LIFETIME, 0)])[0]}
    elif kind == "send":
        for data in command[1]:
            s.send(bytes.fromhex(data))
            time.sleep(0.003)
    elif kind == "receive":
        s.settimeout(command[1])
        got = []
        try:
            while True:
                got.append(s.recv(65536).hex())
        except OSError:
            pass
        s.settimeout(3)
        reply = {"received": got}
    print(json.dumps(reply), flush=True)
"""

#: Runs in the peer namespace: a socket on PEER_PORT of each peer address;
#: sends from one of them to the relay, and reports what reached them.
PEER = """
import json, select, socket, sys, time
port = int(sys.argv[1])
sockets = {}
for host in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    sockets[host] = s
print(json.dumps({}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    reply = {}
    if command[0] == "send":
        _, source, host, to_port, datagrams = command
        for data in datagrams:
            sockets[source].sendto(bytes.fromhex(data), (host, to_port))
            time.sleep(0.003)
    elif command[0] == "drain":
        got = []
        deadline = time.time() + command[1]
        while time.time() < deadline:
            ready, _, _ = select.select(list(sockets.values()), [], [], 0.05)
            for s in ready:
                data, _ = s.recvfrom(65536)
                got.append([s.getsockname()[0], data.hex()])
        reply = {"received": got}
    print(json.dumps(reply), flush=True)
"""


class Helper:
    """
    A helper process in a namespace, asked one JSON command at a time
    (blocking: call it in a thread).
    """

    def __init__(self, test: TestCase, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        test.addCleanup(self.close)
        self.read()

    def read(self) -> Any:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        if not ready:
            raise AssertionError("the helper process did not answer in 30 s")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError("the helper process ended")
        return json.loads(line)

    def ask(self, *command: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(list(command)) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class XdpBase(TestCase):
    timeout = 240

    def setUp(self) -> None:
        xdp_available()
        require("turnutils_uclient")
        self.net = Topology(self)

    def start_server(
        self,
        *extra: str,
        lifetimes: str = "-",
        python_path: bool = False,
        prefix: list[str] | None = None,
    ) -> Any:
        env = dict(os.environ)
        if python_path:
            env["TXTURN_FAST_PATH"] = "off"
        argv = self.net.inside(
            self.net.server,
            *(prefix or []),
            sys.executable,
            "-c",
            SERVER,
            lifetimes,
            "-n",
            "--pidfile=",
            "turn",
            "--listen", SERVER4, "--listen", SERVER6,
            "--relay-ip", RELAY4, "--relay-ip", RELAY6,
            "--user", "test:secret",
            "--allowed-peer-ip", "10.97.2.0/24", "--allowed-peer-ip", "fd97:2::/64",
            "--denied-peer-ip", REFUSED4,
            "--no-tls", "--no-dtls", "--no-tcp",
            "--prometheus", "--prometheus-port", "9641",
            *extra,
        )  # fmt: skip
        from twisted.internet import reactor

        from tests.test_interop import OutputWatcher

        watcher = OutputWatcher()
        process = reactor.spawnProcess(watcher, argv[0], argv, env=env)

        def stop(how: str = "TERM") -> Any:
            try:
                process.signalProcess(how)
            except Exception:
                pass
            return watcher.ended

        self.addCleanup(stop)
        return watcher.wait_for(rb"Relaying on").addCallback(lambda _: (watcher, stop))

    @defer.inlineCallbacks
    def uclient(self, server: str, peer: str, messages: int, clients: int) -> Any:
        """
        turnutils_uclient in the client namespace, relaying C{messages}
        from each of C{clients} through C{server} to the echo peer; every
        message must come back.  Its output.
        """
        done = yield threads.deferToThread(
            self.net.run,
            self.net.client,
            require("turnutils_uclient"),
            "-u", "test", "-w", "secret", "-e", peer, "-r", str(PEER_PORT),
            "-p", "3478", "-n", str(messages), "-m", str(clients), "-l", "120", server,
            timeout=120,
        )  # fmt: skip
        output: str = done.stdout + done.stderr
        total = messages * clients
        self.assertIn(f"tot_send_msgs={total}, tot_recv_msgs={total}", output, output[-2000:])
        return output

    def client(self, server: str) -> Helper:
        return Helper(self, self.net.inside(self.net.client, sys.executable, "-c", CLIENT, server))

    def peer(self, *hosts: str) -> Helper:
        return Helper(
            self,
            self.net.inside(self.net.peer, sys.executable, "-c", PEER, str(PEER_PORT), *hosts),
        )


class UclientTests(XdpBase):
    @defer.inlineCallbacks
    def test_uclient(self) -> Any:
        """
        turnutils_uclient relays over IPv4 and IPv6, both ways, through
        XDP (its counters show nearly every datagram), losing nothing;
        the allocations' counters, which usage records and metrics
        report, include what XDP relayed.
        """
        watcher, _ = yield self.start_server("--xdp", "s0,s1")
        self.assertRegex(
            watcher.output.decode(), r"UDP channels relayed in the kernel by XDP \(native on s0"
        )
        spawn(
            self.net.inside(
                self.net.peer, require("turnutils_peer"), "-L", PEER4, "-L", PEER6,
                "-p", str(PEER_PORT),
            ),
            self,
        )  # fmt: skip
        for server, peer in ((SERVER4, PEER4), (SERVER6, PEER6)):
            output = yield self.uclient(server, peer, 200, 2)
            self.assertIn("Total lost packets 0 ", output)
        metrics = yield threads.deferToThread(self.net.metrics)
        # The first datagram of each way may go up while the neighbour is
        # resolved; the rest go through the kernel.
        self.assertGreaterEqual(metrics['turn_xdp_datagrams_total{outcome="to_peers"}'], 780)
        self.assertGreaterEqual(metrics['turn_xdp_datagrams_total{outcome="to_clients"}'], 780)
        self.assertEqual(metrics['turn_relayed_packets_total{direction="to_peers"}'], 800)
        self.assertEqual(metrics['turn_relayed_packets_total{direction="to_client"}'], 800)


def channel_data(channel: int, payload: bytes, length: int | None = None) -> str:
    size = len(payload) if length is None else length
    return (channel.to_bytes(2, "big") + size.to_bytes(2, "big") + payload).hex()


class DecisionTests(XdpBase):
    """
    The same script against the server with XDP and on the Python path
    (TXTURN_FAST_PATH=off): the same datagrams reach the peer and the
    client, in the same order; and with XDP, most of them went through
    the kernel.
    """

    @defer.inlineCallbacks
    def scenario(self, xdp: bool, server: str, peer: str, refused: str | None) -> Any:
        # Permissions last 2 s and channels 3 s: both expire within it.
        extra = ("--xdp", "s0,s1") if xdp else ()
        _, stop = yield self.start_server(*extra, lifetimes="2,3", python_path=not xdp)
        hosts = [peer] + ([refused] if refused else [])
        peers = yield threads.deferToThread(self.peer, *hosts)
        client = yield threads.deferToThread(self.client, server)
        ask = lambda helper, *c: threads.deferToThread(helper.ask, *c)  # noqa: E731
        log: list[Any] = []
        allocated = yield ask(client, "allocate")
        relay_host, relay_port = allocated["relay"]
        log.append(allocated["code"])
        log.append((yield ask(client, "bind", 0x4001, peer, PEER_PORT))["code"])
        if refused:
            log.append((yield ask(client, "bind", 0x4002, refused, PEER_PORT))["code"])

        @defer.inlineCallbacks
        def both_ways(tag: str) -> Any:
            out = [channel_data(0x4001, f"{tag} {i}".encode()) for i in range(10)]
            if refused:
                out += [channel_data(0x4002, f"{tag} refused {i}".encode()) for i in range(5)]
            yield ask(client, "send", out)
            back = [f"{tag} back {i}".encode().hex() for i in range(10)]
            yield ask(peers, "send", peer, relay_host, relay_port, back)
            if refused:
                back = [f"{tag} refused back {i}".encode().hex() for i in range(5)]
                yield ask(peers, "send", refused, relay_host, relay_port, back)
            log.append((yield ask(peers, "drain", 0.5))["received"])
            log.append((yield ask(client, "receive", 0.5))["received"])

        yield both_ways("live")
        yield deferLater(3.5)
        yield both_ways("expired")
        metrics = yield threads.deferToThread(self.net.metrics)
        peers.close()
        client.close()
        yield stop()
        return log, metrics

    @defer.inlineCallbacks
    def compare(self, server: str, peer: str, refused: str | None) -> Any:
        with_xdp, metrics = yield self.scenario(True, server, peer, refused)
        python, _ = yield self.scenario(False, server, peer, refused)
        self.assertEqual(with_xdp, python)
        # Live traffic both ways, none after expiry, none with the refused peer.
        codes = with_xdp[: 3 if refused else 2]
        self.assertEqual(codes, [0, 0, 403] if refused else [0, 0])
        live_peer, live_client, expired_peer, expired_client = with_xdp[len(codes) :]
        self.assertEqual(
            [bytes.fromhex(d) for _, d in live_peer], [f"live {i}".encode() for i in range(10)]
        )
        self.assertEqual(len(live_client), 10)
        self.assertEqual((expired_peer, expired_client), ([], []))
        self.assertGreaterEqual(metrics['turn_xdp_datagrams_total{outcome="to_peers"}'], 9)
        self.assertGreaterEqual(metrics['turn_xdp_datagrams_total{outcome="to_clients"}'], 9)

    def test_ipv4(self) -> Any:
        """
        IPv4, with a channel to a peer the policy refuses (403: nothing
        relayed either way).
        """
        return self.compare(SERVER4, PEER4, REFUSED4)

    def test_ipv6(self) -> Any:
        return self.compare(SERVER6, PEER6, None)


def deferLater(seconds: float) -> Any:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class LifecycleTests(XdpBase):
    @defer.inlineCallbacks
    def test_gone_after_stop_and_kill(self) -> Any:
        """
        The program is attached while the server runs, and gone once it
        stops, and once it is killed (the kernel drops the links of a
        dead process); a server started again attaches it again.
        """
        for how in ("TERM", "KILL"):
            _, stop = yield self.start_server("--xdp", "s0,s1")
            attached = yield threads.deferToThread(self.net.xdp_attached)
            self.assertTrue(attached)
            yield stop(how)
            attached = yield threads.deferToThread(self.net.xdp_attached)
            self.assertFalse(attached, how)

    @defer.inlineCallbacks
    def test_generic(self) -> Any:
        """
        An interface whose driver has no native XDP (lo) gets the generic
        hook, and the start-up line says so.
        """
        watcher, stop = yield self.start_server("--xdp", "s0,lo")
        self.assertIn(b"by XDP (native on s0, generic on lo)", watcher.output)
        yield stop()

    @defer.inlineCallbacks
    def test_not_permitted(self) -> Any:
        """
        Without CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, or with an
        interface that does not exist: one line, and the server serves
        through the user-space path.
        """
        for prefix, interfaces, said in [
            (
                ["setpriv", "--bounding-set", "-bpf,-sys_admin,-net_admin,-perfmon", "--"],
                "s0,s1",
                rb"--xdp: the kernel refused the XDP program \(it needs CAP_BPF",
            ),
            ([], "nosuch0", rb"--xdp: no interface nosuch0; relaying in user space"),
        ]:
            watcher, stop = yield self.start_server("--xdp", interfaces, prefix=prefix)
            yield watcher.wait_for(said)
            self.assertIn(b"UDP relayed through the compiled fast path", watcher.output)
            self.assertNotIn(b"Traceback", watcher.output)
            yield stop()


class WorkersTests(XdpBase):
    @defer.inlineCallbacks
    def test_workers(self) -> Any:
        """
        Under --workers 2 both workers write into the supervisor's
        program: uclient's clients on both relay through XDP; a worker
        killed takes its entries with it.
        """
        watcher, _ = yield self.start_server("--xdp", "s0,s1", "--workers", "2")
        yield watcher.wait_for(rb"\[worker 1 [^\]]*\] Relaying on")
        spawn(
            self.net.inside(
                self.net.peer, require("turnutils_peer"), "-L", PEER4, "-p", str(PEER_PORT)
            ),
            self,
        )
        yield self.uclient(SERVER4, PEER4, 100, 10)
        log = watcher.output.decode()
        for index in (0, 1):
            self.assertIn(f"[worker {index} txturn.observers.event_log.EventLog#info] Alloc", log)
        metrics = yield threads.deferToThread(self.net.metrics)
        self.assertGreaterEqual(metrics['turn_xdp_datagrams_total{outcome="to_peers"}'], 950)
        self.assertGreaterEqual(metrics['turn_xdp_datagrams_total{outcome="to_clients"}'], 950)
        self.assertEqual(metrics['turn_relayed_packets_total{direction="to_peers"}'], 1000)
        # A worker killed with a live channel: its entries go.
        helper = yield threads.deferToThread(self.client, SERVER4)
        allocated = yield threads.deferToThread(helper.ask, "allocate")
        self.assertEqual(allocated["code"], 0)
        bound = yield threads.deferToThread(helper.ask, "bind", 0x4001, PEER4, PEER_PORT)
        self.assertEqual(bound["code"], 0)
        owners = re.findall(rb"\[worker (\d) [^\]]*EventLog#info\] Allocated", watcher.output)
        pids = dict(re.findall(rb"Worker (\d) started \(pid (\d+)\)", watcher.output))
        index = owners[-1]
        os.kill(int(pids[index]), 9)
        yield watcher.wait_for(rb"Worker %s's 2 XDP entries removed" % index)


def mutated(seed: int, count: int) -> list[bytes]:
    """
    ChannelData on the bound channel 0x4001, then C{count} mutations of
    it (bytes flipped, cut, added; the length and channel rewritten):
    what a fuzzer would send, the same for both runs.
    """
    import random

    rng = random.Random(seed)
    base = [bytes.fromhex(channel_data(0x4001, bytes([i]) * size)) for i, size in
            enumerate((0, 1, 3, 4, 100, 1200, 1468))]  # fmt: skip
    out = list(base)
    for _ in range(count):
        data = bytearray(rng.choice(base))
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == 2:
            data += bytes(rng.randrange(1, 8))
        elif kind == 3 and len(data) >= 4:
            data[2:4] = rng.randrange(65536).to_bytes(2, "big")
        elif kind == 4 and len(data) >= 2:
            data[0:2] = rng.choice((0x4000, 0x4001, 0x4002, 0x7FFF, 0x3FFF, 0x0001)).to_bytes(
                2, "big"
            )
        else:
            data = bytearray(rng.randbytes(rng.randrange(1, 64)))
        out.append(bytes(data))
    return out


class DifferentialTests(XdpBase):
    """
    The same mutated datagrams, from the client and from the peer,
    through the server with XDP and on the Python path: the peer and the
    client receive the same bytes, in the same order.
    """

    @defer.inlineCallbacks
    def run_once(self, xdp: bool, server: str, peer: str) -> Any:
        extra = ("--xdp", "s0,s1") if xdp else ()
        _, stop = yield self.start_server(*extra, python_path=not xdp)
        peers = yield threads.deferToThread(self.peer, peer)
        client = yield threads.deferToThread(self.client, server)
        ask = lambda helper, *c: threads.deferToThread(helper.ask, *c)  # noqa: E731
        allocated = yield ask(client, "allocate")
        relay_host, relay_port = allocated["relay"]
        bound = yield ask(client, "bind", 0x4001, peer, PEER_PORT)
        self.assertEqual(bound["code"], 0)
        to_peer = [d.hex() for d in mutated(27, 200)]
        to_client = [
            bytes([i % 256]) * size
            for i, size in enumerate([0, 1, 2, 3, 4, 5, 100, 1000, 1440, 1452, 1472] * 3)
        ]
        # What looks like ChannelData, STUN, or nothing at all.
        to_client += [b"\x40\x01\x00\x02ab", b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" * 4]
        yield ask(client, "send", to_peer)
        yield ask(peers, "send", peer, relay_host, relay_port, [d.hex() for d in to_client])
        at_peer = (yield ask(peers, "drain", 0.5))["received"]
        at_client = (yield ask(client, "receive", 0.5))["received"]
        metrics = yield threads.deferToThread(self.net.metrics)
        peers.close()
        client.close()
        yield stop()
        return [d for _, d in at_peer], at_client, metrics

    @defer.inlineCallbacks
    def compare(self, server: str, peer: str) -> Any:
        with_xdp = yield self.run_once(True, server, peer)
        python = yield self.run_once(False, server, peer)
        self.assertEqual(with_xdp[0], python[0])
        self.assertEqual(with_xdp[1], python[1])
        self.assertGreater(len(python[0]), 7)
        self.assertEqual(len(python[1]), 35)
        metrics = with_xdp[2]
        self.assertGreater(metrics['turn_xdp_datagrams_total{outcome="to_peers"}'], 0)
        self.assertGreater(metrics['turn_xdp_datagrams_total{outcome="to_clients"}'], 0)
        # The largest don't fit the route with the header added: up.
        self.assertGreater(metrics['turn_xdp_datagrams_total{outcome="too_big"}'], 0)

    def test_ipv4(self) -> Any:
        return self.compare(SERVER4, PEER4)

    def test_ipv6(self) -> Any:
        return self.compare(SERVER6, PEER6)
