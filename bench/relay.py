"""
Relay benchmark: packets/s and Mbit/s that a TURN server relays from
clients to a peer over ChannelData, for 1 and 50 clients at 100- and
1000-byte payloads, and over Send indications (Firefox's way: no
channels) at 100 bytes; the same for coturn's turnserver when installed,
in the same run, with the ratio.

The server runs pinned to CPU 0, the load generator (bench/loadgen.c,
compiled on first use) to CPU 1.  The generator sends with sendmmsg and
counts at the peer with recvmmsg, and reports its own CPU, so a figure
limited by the generator rather than the server is visible.  Everything is
on 127.0.0.1, and every run stops after --seconds.

usage: python bench/relay.py [--seconds 3] [--only txturn|coturn] [--turnserver PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txturn.stun import Attr, Class, Message, Method, encode  # noqa: E402
from txturn.testing import StunClient  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "build")
USER, PASSWORD, REALM = "bench", "bench-password", "bench"


def build_loadgen() -> str:
    binary = os.path.join(BUILD, "loadgen")
    source = os.path.join(HERE, "loadgen.c")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        os.makedirs(BUILD, exist_ok=True)
        subprocess.run(["cc", "-O2", "-pthread", "-o", binary, source], check=True)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def start_txturn(port: int, *extra: str, cpu: int | None = 0) -> subprocess.Popen[bytes]:
    """
    C{twistd -n turn} on 127.0.0.1 with the benchmark user, pinned to
    C{cpu} (or not, with C{None}); C{extra} options are appended.
    """
    argv = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "turn", "--listen", "127.0.0.1", "--port", str(port),
        "--relay-ip", "127.0.0.1", "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
        "--allow-loopback-peers", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        pinned(cpu, argv) if cpu is not None else argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=os.path.dirname(HERE),
    )


def start_coturn(port: int, logdir: str, turnserver: str = "turnserver") -> subprocess.Popen[bytes]:
    argv = [
        turnserver,
        "-n",
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--relay-ip=127.0.0.1",
        f"--realm={REALM}",
        f"--user={USER}:{PASSWORD}",
        "--lt-cred-mech",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-cli",
        "--relay-threads=1",
        "--no-stdout-log",
        f"--log-file={os.path.join(logdir, 'coturn.log')}",
        f"--pidfile={os.path.join(logdir, 'coturn.pid')}",
        "--min-port=40000",
        "--max-port=48000",
    ]
    return subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def transact(
    sock: socket.socket, client: StunClient, method: int, attrs: list[tuple[int, Any]]
) -> Any:
    for _ in range(3):
        sock.send(client.request(method, attrs))
        response = client.learn(sock.recv(2048))
        if response.cls == Class.ERROR and response.get(Attr.ERROR_CODE)[0] in (401, 438):
            continue
        if response.cls != Class.SUCCESS:
            raise RuntimeError(f"{method:#x} failed: {response.get(Attr.ERROR_CODE)}")
        return response
    raise RuntimeError("authentication failed")


def wait_for_server(port: int) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.2)
    probe.connect(("127.0.0.1", port))
    client = StunClient(USER, PASSWORD)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            probe.send(client.request(Method.BINDING, authenticate=False))
            probe.recv(2048)
            probe.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


Client = tuple[socket.socket, int, StunClient]


def allocate_clients(
    port: int, count: int, peer: tuple[str, int], send: bool = False
) -> list[Client]:
    """
    C{count} allocated clients relaying to C{peer}: over a channel each,
    or with C{send}, over a permission and Send indications.
    """
    clients = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        client = StunClient(USER, PASSWORD)
        transact(sock, client, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        channel = 0x4000 + i
        if send:
            transact(sock, client, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
        else:
            transact(
                sock,
                client,
                Method.CHANNEL_BIND,
                [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)],
            )
        clients.append((sock, channel, client))
    return clients


def send_header(peer: tuple[str, int], payload: int) -> str:
    """
    The bytes of a Send indication to C{peer} up to its DATA value, in
    hex, for the generator (which appends C{payload} bytes, a multiple of
    4, so no padding follows).
    """
    message = Message(Method.SEND, Class.INDICATION, os.urandom(12))
    message.add(Attr.XOR_PEER_ADDRESS, peer)
    message.add(Attr.DATA, b"x" * payload)
    return encode(message, add_fingerprint=False)[:-payload].hex()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(
    loadgen: str,
    port: int,
    server_pid: int,
    clients: int,
    payload: int,
    seconds: float,
    send: bool = False,
) -> dict[str, float]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind(("127.0.0.1", 0))
    peer = sink.getsockname()
    socks = allocate_clients(port, clients, peer, send)
    header = send_header(peer, payload) if send else ""
    fds = [sink.fileno()] + [s.fileno() for s, _, _ in socks]
    cpu0 = cpu_seconds(server_pid)
    result = subprocess.run(
        pinned(
            1,
            [
                loadgen,
                str(seconds),
                str(payload),
                str(sink.fileno()),
                *[f"{s.fileno()}:{f'x{header}' if send else ch}" for s, ch, _ in socks],
            ],
        ),
        pass_fds=fds,
        capture_output=True,
        text=True,
        check=True,
    )
    server_cpu = cpu_seconds(server_pid) - cpu0
    for s, _, client in socks:
        # Delete the allocation, or a later socket that gets the same
        # ephemeral port would find it (437).
        try:
            s.settimeout(0.5)
            while True:
                s.recv(2048)
        except OSError:
            pass
        try:
            transact(s, client, Method.REFRESH, [(Attr.LIFETIME, 0)])
        except (OSError, RuntimeError):
            pass
        s.close()
    sink.close()
    figures = dict(kv.split("=") for kv in result.stdout.split())
    elapsed = float(figures["seconds"])
    received = int(figures["received"])
    return {
        "sent_pps": int(figures["sent"]) / seconds,
        "pps": received / elapsed,
        "mbps": received * payload * 8 / elapsed / 1e6,
        "loss": 1 - received / max(1, int(figures["sent"])),
        "server_cpu": server_cpu / elapsed,
        "sender_cpu": float(figures["sender_cpu"]) / seconds,
        "rss": rss_mib(server_pid),
    }


#: (workload, clients, payload) measured for each server.
WORKLOADS = [("channel", clients, payload) for clients in (1, 50) for payload in (100, 1000)] + [
    ("send", clients, 100) for clients in (1, 50)
]


def run_server(
    name: str, loadgen: str, seconds: float, turnserver: str = "turnserver"
) -> dict[tuple[str, int, int], dict[str, float]]:
    port = free_port()
    logdir = tempfile.mkdtemp()
    process = start_txturn(port) if name == "txturn" else start_coturn(port, logdir, turnserver)
    results = {}
    try:
        wait_for_server(port)
        for key in WORKLOADS:
            workload, clients, payload = key
            results[key] = measure(
                loadgen, port, process.pid, clients, payload, seconds, workload == "send"
            )
            r = results[key]
            print(  # noqa: T201 - a benchmark prints its figures
                f"{name:7} {workload:7} clients={clients:<3} payload={payload:<5} "
                f"{r['pps']:>10,.0f} pkt/s {r['mbps']:>8,.1f} Mbit/s  "
                f"loss={r['loss']:6.1%}  server_cpu={r['server_cpu']:5.0%} "
                f"rss={r['rss']:5.1f}MiB  generator: {r['sent_pps']:>10,.0f} pkt/s sent, "
                f"sender_cpu={r['sender_cpu']:4.0%}",
                flush=True,
            )
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(logdir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", choices=["txturn", "coturn"])
    parser.add_argument(
        "--turnserver",
        default="turnserver",
        help="coturn's turnserver to compare with (bench/build_coturn.sh builds upstream's)",
    )
    args = parser.parse_args()
    loadgen = build_loadgen()
    servers = ["txturn"]
    if shutil.which(args.turnserver):
        servers.append("coturn")
    else:
        print("coturn's turnserver not installed: txturn figures only")  # noqa: T201
    if args.only:
        servers = [args.only]
    results = {name: run_server(name, loadgen, args.seconds, args.turnserver) for name in servers}
    if len(results) == 2:
        print()  # noqa: T201
        for key, ours in results["txturn"].items():
            theirs = results["coturn"][key]
            print(  # noqa: T201
                f"{key[0]:7} clients={key[1]:<3} payload={key[2]:<5} txturn/coturn = "
                f"{ours['pps'] / theirs['pps']:.2f}"
            )


if __name__ == "__main__":
    main()
