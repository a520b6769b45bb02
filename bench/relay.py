"""
Relay benchmark: packets/s and Mbit/s that a TURN server relays from
clients to a peer over ChannelData, for 1 and 50 clients at 100- and
1000-byte payloads, over Send indications (Firefox's way: no channels) at
100 bytes, both ways at once (ChannelData up, the peer's datagrams
down), ChannelData from TCP clients, over IPv6 (clients, relays and
peer on ::1), and from TLS and DTLS clients (one ChannelData per record,
as browsers write them); and the round trip through the relay at 10,000 round trips a
second (p50, p99).  For txturn with its compiled fast path, txturn on
its pure Python path (TXTURN_FAST_PATH=off), and coturn's turnserver when
installed, in the same run, with the ratios to coturn.

The server runs pinned to CPU 0, the load generator (bench/loadgen.c,
compiled on first use; it needs libssl-dev) to CPU 1.  The generator
sends with sendmmsg (over TLS and DTLS, one SSL_write per record) and
counts at the peer with recvmmsg, and reports its own CPU, so a figure
limited by the generator rather than the server is visible.  Everything is
on 127.0.0.1, and every run stops after --seconds.

usage: python bench/relay.py [--seconds 3] [--rounds 1] [--variants]
                             [--only txturn|python|coturn] [--turnserver PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from statistics import median
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txturn.testing import StunClient, self_signed_certificate  # noqa: E402
from txturn.wire.stun import Attr, Class, Message, Method, encode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "build")
USER, PASSWORD, REALM = "bench", "bench-password", "bench"


def build_loadgen() -> str:
    binary = os.path.join(BUILD, "loadgen")
    source = os.path.join(HERE, "loadgen.c")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        os.makedirs(BUILD, exist_ok=True)
        # OpenSSL (libssl-dev) for the TLS and DTLS clients.
        subprocess.run(
            ["cc", "-O2", "-pthread", "-o", binary, source, "-lssl", "-lcrypto"], check=True
        )
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


def start_txturn(
    port: int, *extra: str, cpu: int | None = 0, fast_path: str = "on"
) -> subprocess.Popen[bytes]:
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
        env={**os.environ, "TXTURN_FAST_PATH": fast_path},
    )


def start_coturn(
    port: int,
    logdir: str,
    turnserver: str = "turnserver",
    tcp: bool = False,
    extra: tuple[str, ...] = (),
    secure: tuple[str, str, int] | None = None,
) -> subprocess.Popen[bytes]:
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
        *(
            ["--no-tls", "--no-dtls"]
            if secure is None
            else [f"--cert={secure[0]}", f"--pkey={secure[1]}", f"--tls-listening-port={secure[2]}"]
        ),
        *([] if tcp or secure else ["--no-tcp"]),
        "--no-cli",
        "--relay-threads=1",
        "--no-stdout-log",
        f"--log-file={os.path.join(logdir, 'coturn.log')}",
        f"--pidfile={os.path.join(logdir, 'coturn.pid')}",
        "--min-port=40000",
        "--max-port=48000",
        *extra,
    ]
    return subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def coturn_extra(turnserver: str) -> tuple[str, ...]:
    """
    What coturn needs told to serve uclient as txturn does: 4.17 binds only
    RFC 8656's channels (0x4000-0x4FFF) unless told otherwise, and Debian's
    uclient picks RFC 5766's (up to 0x7FFF), as txturn accepts; and 4.17
    starts its DTLS listener only with --dtls.
    """
    shown = subprocess.run([turnserver, "-h"], capture_output=True, text=True).stdout
    extra: tuple[str, ...] = (
        ("--rfc5766-channel-numbers",) if "rfc5766-channel-numbers" in shown else ()
    )
    # 4.17 starts DTLS only when asked; 4.6.1 has no such option.
    if re.search(r"^\s*--dtls\b", shown, re.M):
        extra += ("--dtls",)
    return extra


def transact(
    sock: socket.socket, client: StunClient, method: int, attrs: list[tuple[int, Any]]
) -> Any:
    for _ in range(3):
        request = client.request(method, attrs)
        sock.send(request)
        response = client.learn(answer(sock, request[8:20]))
        if response.cls == Class.ERROR and response.get(Attr.ERROR_CODE)[0] in (401, 438):
            continue
        if response.cls != Class.SUCCESS:
            raise RuntimeError(f"{method:#x} failed: {response.get(Attr.ERROR_CODE)}")
        return response
    raise RuntimeError("authentication failed")


def answer(sock: socket.socket, transaction_id: bytes) -> bytes:
    """
    The response to C{transaction_id}, skipping relayed data still
    arriving from a workload that just ended (on a TCP socket, read one
    STUN message at a time; nothing else is in flight during set-up).
    """
    while True:
        if sock.type == socket.SOCK_STREAM:
            header = _read_exactly(sock, 20)
            data = header + _read_exactly(sock, int.from_bytes(header[2:4], "big"))
        else:
            data = sock.recv(65536)
        if data[:1] in (b"\x01", b"\x00") and data[8:20] == transaction_id:
            return data


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("the server closed the connection")
        data += chunk
    return data


def wait_for_server(
    port: int, host: str = "127.0.0.1", probe: socket.socket | None = None, timeout: float = 15
) -> None:
    """
    Wait until a Binding to C{host}:C{port} is answered, through
    C{probe} if given (a socket made in another network namespace).
    """
    if probe is None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.2)
    probe.connect((host, port))
    client = StunClient(USER, PASSWORD)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            probe.send(client.request(Method.BINDING, authenticate=False))
            probe.recv(2048)
            probe.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


#: A client's socket, channel, credentials and relayed port.
Client = tuple[socket.socket, int, StunClient, int]


def allocate_clients(
    port: int,
    count: int,
    peer: tuple[str, int],
    send: bool = False,
    kind: int = socket.SOCK_DGRAM,
    host: str = "127.0.0.1",
) -> list[Client]:
    """
    C{count} allocated clients relaying to C{peer}: over a channel each,
    or with C{send}, over a permission and Send indications; over UDP or
    (C{kind} C{SOCK_STREAM}) TCP, from C{host}, with a relay of the
    peer's family.
    """
    clients = []
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    allocate: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17)]
    if ":" in peer[0]:
        allocate.append((Attr.REQUESTED_ADDRESS_FAMILY, 2))
    for i in range(count):
        for attempt in range(3):
            sock = socket.socket(family, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.settimeout(2)
            sock.connect((host, port))
            client = StunClient(USER, PASSWORD)
            try:
                response = transact(sock, client, Method.ALLOCATE, allocate)
                break
            except RuntimeError:
                # 437: an earlier run's allocation on this ephemeral port
                # has not expired; another port will do.
                sock.close()
                if attempt == 2:
                    raise
        relayed = response.get(Attr.XOR_RELAYED_ADDRESS)[1]
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
        clients.append((sock, channel, client, relayed))
    return clients


def release(socks: list[Client]) -> None:
    """
    Delete each client's allocation and close its socket, or a later
    socket that gets the same ephemeral port would find it (437).
    """
    for s, _, client, _ in socks:
        s.setblocking(False)
        try:
            while True:
                s.recv(65536)
        except OSError:
            pass
        s.settimeout(2)
        try:
            transact(s, client, Method.REFRESH, [(Attr.LIFETIME, 0)])
        except (OSError, RuntimeError):
            pass
        s.close()


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
    workload: str,
    clients: int,
    payload: int,
    seconds: float,
    tls_port: int = 0,
) -> dict[str, float]:
    """
    One workload (C{channel}, C{send}, C{both}, C{latency}, or C{tcp} and
    C{ipv6}: ChannelData from TCP clients, and from IPv6 clients through
    IPv6 relays to an IPv6 peer) against the server on C{port}; C{tls} and
    C{dtls}: ChannelData from the generator's own TLS and DTLS clients of
    C{tls_port}.
    """
    if workload in SECURE:
        return _measure_secure(loadgen, tls_port, server_pid, workload, clients, payload, seconds)
    host = "::1" if workload == "ipv6" else "127.0.0.1"
    sink = socket.socket(
        socket.AF_INET6 if workload == "ipv6" else socket.AF_INET, socket.SOCK_DGRAM
    )
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind((host, 0))
    peer = sink.getsockname()[:2]
    send = workload == "send"
    kind = socket.SOCK_STREAM if workload == "tcp" else socket.SOCK_DGRAM
    socks = allocate_clients(port, clients, peer, send, kind, host)
    header = send_header(peer, payload) if send else ""
    fds = [sink.fileno()] + [s.fileno() for s, _, _, _ in socks]
    mode = {"both": ["--both"], "latency": [f"--latency={LATENCY_RATE}"]}.get(workload, [])
    cpu0 = cpu_seconds(server_pid)
    result = subprocess.run(
        pinned(
            1,
            [
                loadgen,
                *mode,
                str(seconds),
                str(payload),
                str(sink.fileno()),
                *[
                    f"{s.fileno()}:{f'x{header}' if send else ch}@{relayed}"
                    for s, ch, _, relayed in socks
                ],
            ],
        ),
        pass_fds=fds,
        capture_output=True,
        text=True,
        check=True,
    )
    server_cpu = cpu_seconds(server_pid) - cpu0
    release(socks)
    sink.close()
    figures = dict(kv.split("=") for kv in result.stdout.split())
    if workload == "latency":
        return {
            "p50": float(figures["p50_us"]),
            "p99": float(figures["p99_us"]),
            "loss": 1 - int(figures["returned"]) / max(1, int(figures["sent"])),
            "server_cpu": server_cpu / seconds,
            "rss": rss_mib(server_pid),
        }
    return _figures(figures, payload, seconds, server_cpu, server_pid)


def _measure_secure(
    loadgen: str,
    tls_port: int,
    server_pid: int,
    workload: str,
    clients: int,
    payload: int,
    seconds: float,
) -> dict[str, float]:
    """
    The C{tls} and C{dtls} workloads: the generator connects, allocates
    and binds a channel to the sink itself (the sessions cannot be handed
    to it from Python), and deletes its allocations at the end.
    """
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind(("127.0.0.1", 0))
    spec = f"--{workload}=127.0.0.1:{tls_port}:{USER}:{PASSWORD}:{clients}"
    # The server's CPU is counted while ChannelData flows, without the
    # handshakes before and the deletions after.
    with (
        sink,
        subprocess.Popen(
            pinned(1, [loadgen, spec, str(seconds), str(payload), str(sink.fileno())]),
            pass_fds=[sink.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as generator,
    ):
        assert generator.stdin is not None and generator.stdout is not None
        if generator.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {workload} clients could not allocate")
        cpu0 = cpu_seconds(server_pid)
        generator.stdin.write("go\n")
        generator.stdin.flush()
        line = generator.stdout.readline()
        server_cpu = cpu_seconds(server_pid) - cpu0
    figures = dict(kv.split("=") for kv in line.split())
    return _figures(figures, payload, seconds, server_cpu, server_pid)


def _figures(
    figures: dict[str, str], payload: int, seconds: float, server_cpu: float, server_pid: int
) -> dict[str, float]:
    elapsed = float(figures["seconds"])
    received = int(figures["received"]) + int(figures.get("back_received", 0))
    sent = int(figures["sent"]) + int(figures.get("back_sent", 0))
    return {
        "sent_pps": sent / seconds,
        "pps": received / elapsed,
        "mbps": received * payload * 8 / elapsed / 1e6,
        "loss": 1 - received / max(1, sent),
        "server_cpu": server_cpu / elapsed,
        "sender_cpu": float(figures["sender_cpu"]) / seconds,
        "rss": rss_mib(server_pid),
    }


#: Round trips a second of the latency workload.
LATENCY_RATE = 10_000

#: (workload, clients, payload) measured for each server.
WORKLOADS = (
    [("channel", clients, payload) for clients in (1, 50) for payload in (100, 1000)]
    + [("send", clients, 100) for clients in (1, 50)]
    + [("both", clients, 100) for clients in (1, 50)]
    + [("latency", 50, 100)]
    + [("tcp", clients, 100) for clients in (1, 50)]
    + [("ipv6", clients, 100) for clients in (1, 50)]
    + [(secure, clients, 100) for secure in ("tls", "dtls") for clients in (1, 50)]
)

#: The workloads whose clients the generator connects itself.
SECURE = ("tls", "dtls")

#: The servers compared: txturn with its fast path, txturn on the pure
#: Python path, coturn; and (with --variants) the fast path without UDP GSO
#: and without any batching, to see what each is worth.
SERVERS = ("txturn", "python", "coturn", "no-gso", "unbatched")
FAST_PATH = {"txturn": "on", "python": "off", "no-gso": "no-gso", "unbatched": "unbatched"}


def show(name: str, key: tuple[str, int, int], r: dict[str, float]) -> None:
    workload, clients, payload = key
    if workload == "latency":
        print(  # noqa: T201 - a benchmark prints its figures
            f"{name:7} {workload:7} clients={clients:<3} payload={payload:<5} "
            f"{LATENCY_RATE:,} round trips/s: p50={r['p50']:7.1f} us p99={r['p99']:7.1f} us "
            f"loss={r['loss']:6.1%}  server_cpu={r['server_cpu']:5.0%}",
            flush=True,
        )
        return
    print(  # noqa: T201 - a benchmark prints its figures
        f"{name:7} {workload:7} clients={clients:<3} payload={payload:<5} "
        f"{r['pps']:>10,.0f} pkt/s {r['mbps']:>8,.1f} Mbit/s  "
        f"loss={r['loss']:6.1%}  server_cpu={r['server_cpu']:5.0%} "
        f"rss={r['rss']:5.1f}MiB  generator: {r['sent_pps']:>10,.0f} pkt/s sent, "
        f"sender_cpu={r['sender_cpu']:4.0%}",
        flush=True,
    )


def run_server(
    name: str, loadgen: str, seconds: float, turnserver: str = "turnserver"
) -> dict[tuple[str, int, int], dict[str, float]]:
    port, tls_port = free_port(), free_port()
    logdir = tempfile.mkdtemp()
    cert, private_key = self_signed_certificate(logdir)
    # TCP, TLS, DTLS and IPv6 too, for those workloads.
    six: tuple[str, ...]
    if name == "coturn":
        six = ("--listening-ip=::1", "--relay-ip=::1")
        process = start_coturn(
            port,
            logdir,
            turnserver,
            tcp=True,
            extra=six + coturn_extra(turnserver),
            secure=(cert, private_key, tls_port),
        )
    else:
        six = ("--listen", "::1", "--relay-ip", "::1")
        tls = ("--cert", cert, "--key", private_key, "--tls-port", str(tls_port))
        process = start_txturn(port, *six, *tls, fast_path=FAST_PATH[name])
    results = {}
    try:
        wait_for_server(port)
        for key in WORKLOADS:
            workload, clients, payload = key
            results[key] = measure(
                loadgen, port, process.pid, workload, clients, payload, seconds, tls_port
            )
            show(name, key, results[key])
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(logdir, ignore_errors=True)
    return results


Results = dict[tuple[str, int, int], dict[str, float]]


def compare(rounds: list[dict[str, Results]]) -> None:
    """
    Each txturn's figures over coturn's, the median over rounds:
    packets per second and packets per CPU-second of the server (higher
    is better), and for latency coturn's p50 and p99 over ours (so above
    1 is better too).
    """
    print()  # noqa: T201
    names = [name for name in rounds[0] if name != "coturn"]
    for key in WORKLOADS:
        ratios = []
        for name in names:
            if key[0] == "latency":
                p50 = median([r["coturn"][key]["p50"] / r[name][key]["p50"] for r in rounds])
                p99 = median([r["coturn"][key]["p99"] / r[name][key]["p99"] for r in rounds])
                ratios.append(f"{name} p50 {p50:.2f} p99 {p99:.2f}")
                continue
            pps = median([r[name][key]["pps"] / r["coturn"][key]["pps"] for r in rounds])
            per_cpu = median(
                [
                    (r[name][key]["pps"] / max(r[name][key]["server_cpu"], 0.01))
                    / (r["coturn"][key]["pps"] / max(r["coturn"][key]["server_cpu"], 0.01))
                    for r in rounds
                ]
            )
            ratios.append(f"{name} {pps:.2f} ({per_cpu:.2f}/cpu)")
        print(  # noqa: T201
            f"{key[0]:7} clients={key[1]:<3} payload={key[2]:<5} over coturn: " + ", ".join(ratios)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds; ratios are their medians"
    )
    parser.add_argument("--only", choices=SERVERS)
    parser.add_argument(
        "--variants", action="store_true", help="also the fast path without GSO, unbatched"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(sorted({w for w, _, _ in WORKLOADS})),
        help="comma-separated: channel, send, both, latency, tcp, ipv6, tls, dtls",
    )
    parser.add_argument(
        "--turnserver",
        default="turnserver",
        help="coturn's turnserver to compare with (bench/build_coturn.sh builds upstream's)",
    )
    args = parser.parse_args()
    WORKLOADS[:] = [key for key in WORKLOADS if key[0] in args.workloads.split(",")]
    loadgen = build_loadgen()
    servers = ["txturn", "python"] + (["no-gso", "unbatched"] if args.variants else [])
    if shutil.which(args.turnserver):
        servers.append("coturn")
    else:
        print("coturn's turnserver not installed: txturn figures only")  # noqa: T201
    if args.only:
        servers = [args.only]
    rounds = []
    for _ in range(args.rounds):
        rounds.append(
            {name: run_server(name, loadgen, args.seconds, args.turnserver) for name in servers}
        )
    if "coturn" in servers and len(servers) > 1:
        compare(rounds)


if __name__ == "__main__":
    main()
