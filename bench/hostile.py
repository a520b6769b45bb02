"""
What hostile traffic costs a TURN server, measured on loopback against a
real server process: the figures behind doc/security.rst.

- CPU per worst-case packet: a 64 KiB Binding of 16,000 unknown
  comprehension-required attributes.
- Bytes answered per cookieless DTLS ClientHello, retransmissions
  included (the reflection a spoofed hello buys).
- DTLS sessions from one address without credentials: how many are held,
  the RSS they cost, and how many are still open 75 s later.
- Idle TCP connections from 11 addresses: how many the server holds, and
  how many are still open 75 s later.
- Allocation setup time for 1,000 clients behind one address (each
  retransmits after 500 ms of silence, as RFC 8489 clients do).
- One user's footprint with the defaults: allocations, then permissions
  on one allocation, until refused.

Run it against this tree's txturn, against another checkout of txturn
(--tree, for before-and-after figures), or against coturn's turnserver
(--coturn); every target listens on 127.0.0.1 only, and every loop is
bounded.

usage: python bench/hostile.py [--tree DIR | --coturn] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from OpenSSL import SSL

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txturn.testing import StunClient, self_signed_certificate  # noqa: E402
from txturn.wire.stun import Attr, Class, Method, decode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
USER, PASSWORD, REALM = "bench", "bench-password", "bench"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Target:
    """
    A server process on 127.0.0.1: UDP and TCP on C{port}, TLS and DTLS
    on C{tls_port}.
    """

    def __init__(self, name: str, argv: list[str], port: int, tls_port: int) -> None:
        self.name = name
        self.port = port
        self.tls_port = tls_port
        self.log = tempfile.NamedTemporaryFile(prefix="hostile-", suffix=".log", delete=False)
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def txturn(tree: str, cert: str, key: str, *extra: str) -> Target:
    port, tls_port = free_port(), free_port()
    argv = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "turn", "--listen", "127.0.0.1", "--port", str(port),
        "--tls-port", str(tls_port), "--cert", cert, "--key", key,
        "--relay-ip", "127.0.0.1", "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
        "--allow-loopback-peers", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=tree)
    target = Target.__new__(Target)
    target.name, target.port, target.tls_port = f"txturn ({tree})", port, tls_port
    target.log = tempfile.NamedTemporaryFile(prefix="hostile-", suffix=".log", delete=False)
    target.process = subprocess.Popen(
        argv, stdout=target.log, stderr=subprocess.STDOUT, cwd=tree, env=env
    )
    wait_for(port)
    return target


def coturn(cert: str, key: str) -> Target:
    port, tls_port = free_port(), free_port()
    logdir = tempfile.mkdtemp()
    argv = [
        "turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
        f"--tls-listening-port={tls_port}", f"--cert={cert}", f"--pkey={key}",
        "--relay-ip=127.0.0.1", f"--realm={REALM}", f"--user={USER}:{PASSWORD}",
        "--lt-cred-mech", "--allow-loopback-peers", "--no-cli", "--no-stdout-log",
        f"--log-file={os.path.join(logdir, 'coturn.log')}",
        f"--pidfile={os.path.join(logdir, 'coturn.pid')}",
    ]  # fmt: skip
    return Target("coturn", argv, port, tls_port)


def wait_for(port: int) -> None:
    client = StunClient(USER, PASSWORD)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        probe.connect(("127.0.0.1", port))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                probe.send(client.request(Method.BINDING, authenticate=False))
                probe.recv(2048)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError("the server did not start")


def settle(target: Target) -> float:
    """
    Wait until the server's CPU use stops moving; return its CPU seconds.
    """
    last = target.cpu_seconds()
    while True:
        time.sleep(0.3)
        now = target.cpu_seconds()
        if now == last:
            return now
        last = now


# -- the measures --------------------------------------------------------------


def worst_packet(target: Target) -> str:
    body = b"".join((0x0100 + i).to_bytes(2, "big") + b"\x00\x00" for i in range(16000))
    packet = b"\x00\x01" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + os.urandom(12)
    packet += body
    per_packet = 0.0
    # A few first; many only if each is cheap (the CPU clock ticks at 10 ms).
    for count in (5, 200):
        before = settle(target)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            for _ in range(count):
                s.sendto(packet, ("127.0.0.1", target.port))
                time.sleep(0.01)
        per_packet = (settle(target) - before) / count
        if per_packet > 0.02:
            break
    return f"{per_packet * 1000:.2f} ms CPU per {len(packet):,}-byte packet"


def dtls_client() -> SSL.Connection:
    client = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
    client.set_connect_state()
    return client


def flight(client: SSL.Connection) -> list[bytes]:
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    out = []
    while True:
        try:
            out.append(client.bio_read(65536))
        except SSL.WantReadError:
            return out


def cookieless_hello(target: Target) -> str:
    hello = flight(dtls_client())[0]
    received = 0
    datagrams = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(hello, ("127.0.0.1", target.tls_port))
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                received += len(s.recv(65536))
                datagrams += 1
            except socket.timeout:
                pass
    return (
        f"{len(hello)} bytes in, {received:,} bytes out in {datagrams} datagrams "
        f"({received / len(hello):.2f}x)"
    )


def dtls_handshake(port: int, timeout: float = 3.0) -> tuple[socket.socket, SSL.Connection] | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.3)
    client = dtls_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for data in flight(client):
            s.send(data)
        try:
            client.do_handshake()
            return s, client
        except SSL.WantReadError:
            pass
        except SSL.Error:
            break
        try:
            client.bio_write(s.recv(65536))
        except socket.timeout:
            try:
                client.DTLSv1_handle_timeout()
            except SSL.Error:
                break
        except OSError:
            break
    s.close()
    return None


def dtls_answers(s: socket.socket, client: SSL.Connection) -> bool:
    """
    Whether the session still answers a Binding sent inside it.
    """
    try:
        client.send(StunClient(USER, PASSWORD).request(Method.BINDING, authenticate=False))
        for data in flight(client):
            s.send(data)
        s.settimeout(0.3)
        client.bio_write(s.recv(65536))
        return decode(client.recv(65536)).cls == Class.SUCCESS
    except (SSL.Error, OSError, ValueError):
        return False


def dtls_sessions(target: Target, count: int = 300) -> str:
    before = target.rss_mib()
    sessions = [dtls_handshake(target.tls_port, timeout=0.5) for _ in range(count)]
    held = [session for session in sessions if session is not None]
    grown = target.rss_mib() - before
    time.sleep(75)
    alive = sum(dtls_answers(s, client) for s, client in held)
    for s, _ in held:
        s.close()
    per_session = grown * 1024 / len(held) if held else 0.0
    return (
        f"{len(held)} of {count} sessions from one address established, RSS +{grown:.0f} MiB "
        f"({per_session:.0f} KiB each); {alive} still answer after 75 s"
    )


def idle_connections(target: Target, count: int = 1100) -> str:
    base = target.descriptors()
    sockets = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((f"127.0.0.{2 + i % 11}", 0))
        try:
            s.connect(("127.0.0.1", target.port))
        except BlockingIOError:
            pass
        sockets.append(s)
        if i % 100 == 99:
            time.sleep(0.05)
    time.sleep(3)
    held = target.descriptors() - base
    time.sleep(72)
    left = target.descriptors() - base
    for s in sockets:
        s.close()
    return f"{count} idle connections: server held {held}, still held after 75 s: {left}"


def crowd(target: Target, count: int = 1000) -> str:
    clients = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        clients.append((s, StunClient(USER, PASSWORD)))
    allocate: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17)]
    pending = {i: 0.0 for i in range(count)}
    done: set[int] = set()
    start = time.monotonic()
    deadline = start + 30
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        for i, last in list(pending.items()):
            if now - last >= 0.5:
                s, client = clients[i]
                s.sendto(client.request(Method.ALLOCATE, allocate), ("127.0.0.1", target.port))
                pending[i] = now
        time.sleep(0.005)
        for i in list(pending):
            s, client = clients[i]
            try:
                data = s.recv(2048)
            except BlockingIOError:
                continue
            response = client.learn(data)
            if response.cls == Class.SUCCESS:
                done.add(i)
                del pending[i]
            elif response.get(Attr.ERROR_CODE)[0] in (401, 438):
                pending[i] = 0.0  # answer the challenge at once
    elapsed = time.monotonic() - start
    for s, client in clients:
        if client.nonce is not None:
            s.sendto(
                client.request(Method.REFRESH, [(Attr.LIFETIME, 0)]), ("127.0.0.1", target.port)
            )
        s.close()
    return f"{len(done)} of {count} clients behind one address allocated in {elapsed:.2f} s"


def footprint(target: Target) -> str:
    sockets = []
    allocations = 0
    client = StunClient(USER, PASSWORD)
    for _ in range(2000):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect(("127.0.0.1", target.port))
        sockets.append(s)
        if _transact(s, client, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]) != 0:
            break
        allocations += 1
    before = target.rss_mib()
    permissions = 0
    for i in range(20000):
        peer = (f"8.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 9)
        if _transact(sockets[0], client, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)]):
            break
        permissions += 1
    grown = target.rss_mib() - before
    for s in sockets:
        _transact(s, client, Method.REFRESH, [(Attr.LIFETIME, 0)])
        s.close()
    return (
        f"one user: {allocations} allocations (tried 2000), {permissions} permissions on one "
        f"(tried 20000, +{grown:.0f} MiB)"
    )


def _transact(s: socket.socket, client: StunClient, method: int, attrs: list[Any]) -> int:
    for _ in range(3):
        s.send(client.request(method, attrs))
        try:
            response = client.learn(s.recv(2048))
        except socket.timeout:
            return -1
        if response.cls == Class.SUCCESS:
            return 0
        code: int = response.get(Attr.ERROR_CODE)[0]
        if code not in (401, 438):
            return code
    return -1


MEASURES: dict[str, Callable[[Target], str]] = {
    "worst-packet": worst_packet,
    "cookieless-hello": cookieless_hello,
    "crowd": crowd,
    "footprint": footprint,
    "dtls-sessions": dtls_sessions,
    "idle-connections": idle_connections,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tree", default=os.path.dirname(HERE))
    group.add_argument("--coturn", action="store_true")
    parser.add_argument("--only", nargs="*", choices=list(MEASURES))
    args = parser.parse_args()
    cert, key = self_signed_certificate(tempfile.mkdtemp())
    for name in args.only or list(MEASURES):
        if args.coturn:
            target = coturn(cert, key)
        else:
            # A crowd of 1,000 clients is 1,000 users in real life; here
            # they share one, so lift the per-user quota for that measure.
            extra = ["--user-quota", "0"] if name == "crowd" else []
            target = txturn(os.path.abspath(args.tree), cert, key, *extra)
        try:
            print(f"{target.name} {name}: {MEASURES[name](target)}", flush=True)  # noqa: T201
        finally:
            target.stop()


if __name__ == "__main__":
    main()
