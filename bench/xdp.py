"""
The kernel data path (C{--xdp}) against the user-space paths and coturn,
in a veth topology this script creates: client, server and peer network
namespaces, the server's two veths between them (native XDP on veth).

For each server (txturn with --xdp, txturn with its compiled fast path,
txturn on the Python path, coturn), in the same run: ChannelData from N
clients to the peer as fast as the generator sends (bench/loadgen.c,
pinned to CPU 1; the server process pinned to CPU 0), then round trips
at a fixed rate for latency.  The generator's sockets are made inside
the client and peer namespaces and handed to it, so it runs the same
for every server.

CPU: XDP runs in the kernel where the interface receives, not in the
server process, so the figure that compares the paths is the busy time
of the server's CPU (below), per relayed packet; the floor line says what
merely receiving a datagram costs there (an XDP program that drops it).

Needs root, clang and libbpf (the package built with the program),
ethtool.  Every run stops after --seconds.

Each veth receives in a NAPI thread pinned as a NIC's interrupts would
be: the server's two on the server's CPU 0, the generator's and the
sink's on CPU 1; so CPU 0's busy time (/proc/stat) is the server's whole
cost, its process and its interfaces' receiving, XDP included.  With
--inline-napi a veth receives on the CPU that sent (the kernel's
default for veth): XDP then runs on the generator's CPU, which makes the
latency figures those of a relay with no thread hand-off.

usage: python bench/xdp.py [--seconds 3] [--clients 4] [--payload 100]
                           [--turnserver PATH] [--only NAME,...] [--inline-napi]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from relay import (  # noqa: E402
    LATENCY_RATE,
    PASSWORD,
    REALM,
    USER,
    allocate_clients,
    build_loadgen,
    coturn_extra,
    pinned,
    release,
    wait_for_server,
)

SERVER4, RELAY4, CLIENT4, PEER4 = "10.96.1.1", "10.96.2.1", "10.96.1.2", "10.96.2.2"
NAMESPACES = ("bxc", "bxs", "bxp")
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def topology(threaded: bool = True) -> None:
    for ns in NAMESPACES:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "c0", "netns", "bxc", "type", "veth", "peer", "name", "s0",
       "netns", "bxs")  # fmt: skip
    sh("ip", "link", "add", "p0", "netns", "bxp", "type", "veth", "peer", "name", "s1",
       "netns", "bxs")  # fmt: skip
    for ns, device, address in [
        ("bxc", "c0", CLIENT4),
        ("bxs", "s0", SERVER4),
        ("bxs", "s1", RELAY4),
        ("bxp", "p0", PEER4),
    ]:
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", device)
        sh("ip", "-n", ns, "link", "set", device, "up")
        for feature in (["tx", "off"], ["gro", "on"]):
            sh("ip", "netns", "exec", ns, "ethtool", "-K", device, *feature)
    if threaded:
        pin_napi()
    for device in ("s0", "s1"):
        for version in ("ipv4", "ipv6"):
            sh("ip", "netns", "exec", "bxs", "sysctl", "-qw",
               f"net.{version}.conf.{device}.forwarding=1")  # fmt: skip


def pin_napi() -> None:
    """
    Threaded NAPI, each device's thread pinned as a NIC's interrupts
    would be: the server's interfaces on the server's CPU 0, the
    generator's and the sink's on CPU 1.  Without it a veth receives on
    the sending CPU, and XDP would run on the generator's.
    """
    for ns, device in (("bxc", "c0"), ("bxs", "s0"), ("bxs", "s1"), ("bxp", "p0")):
        sh("ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > /sys/class/net/{device}/threaded")
    time.sleep(0.2)
    cpus = {"s0": 0, "s1": 0, "c0": 1, "p0": 1}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        device = comm[len("napi/") :].split("-")[0] if comm.startswith("napi/") else ""
        if device in cpus:
            sh("taskset", "-pc", str(cpus[device]), pid)


def teardown() -> None:
    for ns in NAMESPACES:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class In:
    """
    Sockets made within C{with In(ns):} belong to that namespace.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def __enter__(self) -> None:
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, 0) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(target)

    def __exit__(self, *_: Any) -> None:
        _libc.setns(self.home, 0)
        os.close(self.home)


def busy() -> float:
    """
    The machine's busy CPU-seconds so far: user, nice, system, irq,
    softirq and steal of every CPU.
    """
    return sum(per_cpu().values())


def per_cpu() -> dict[str, float]:
    """
    Busy CPU-seconds so far of each CPU.
    """
    found = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *rest = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in rest[:8])
            found[name] = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return found


def start(name: str, port: int, turnserver: str, logdir: str) -> subprocess.Popen[bytes]:
    inside = ["ip", "netns", "exec", "bxs"]
    if name == "coturn":
        argv = [
            os.path.abspath(turnserver) if os.sep in turnserver else turnserver,
            "-n", f"--listening-ip={SERVER4}", f"--listening-port={port}",
            f"--relay-ip={RELAY4}", f"--realm={REALM}", f"--user={USER}:{PASSWORD}",
            "--lt-cred-mech", "--no-tls", "--no-dtls", "--no-tcp", "--no-cli",
            "--relay-threads=1", "--no-stdout-log", f"--log-file={logdir}/coturn.log",
            f"--pidfile={logdir}/coturn.pid", "--min-port=40000", "--max-port=48000",
            f"--allowed-peer-ip={PEER4}", *coturn_extra(turnserver),
        ]  # fmt: skip
        env = dict(os.environ)
    else:
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "turn", "--listen", SERVER4, "--port", str(port),
            "--relay-ip", RELAY4, "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
            "--allowed-peer-ip", f"{PEER4}/32", "--no-tcp", "--no-tls", "--no-dtls",
            "--log-level", "warn",
            *(["--xdp", "s0,s1"] if name == "xdp" else []),
        ]  # fmt: skip
        env = {**os.environ, "TXTURN_FAST_PATH": "off" if name == "python" else "on"}
    # From / : the installed package (with the program the wheel built),
    # not the checkout.
    return subprocess.Popen(
        inside + pinned(0, argv),
        stdout=open(f"{logdir}/server.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd="/",
    )


def wait_ready(port: int) -> None:
    with In("bxc"):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wait_for_server(port, SERVER4, probe, timeout=20)


DROP = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} bench_dropped SEC(".maps");
SEC("xdp") int drop(struct xdp_md *ctx) {
    __u32 key = 0;
    __u64 *n = bpf_map_lookup_elem(&bench_dropped, &key);
    if (n)
        *n += 1;
    return XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
"""


def dropped(ns: str) -> int:
    """
    What the drop program of C{ns} counted.
    """
    import json

    shown = subprocess.run(
        ["ip", "netns", "exec", ns, "bpftool", "-j", "map", "dump", "name", "bench_dropped"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    entries = json.loads(shown.stdout)
    return sum(int(v["value"]) for e in entries for v in e.get("formatted", e).get("values", []))


def drop_program() -> str:
    """
    An XDP program that drops everything: attached to the server's
    interface, what is left is what the generator and the veth cost to
    bring a datagram to the server (the floor every path pays).
    """
    import sysconfig
    import tempfile

    directory = tempfile.mkdtemp()
    source, target = f"{directory}/drop.c", f"{directory}/drop.o"
    with open(source, "w") as f:
        f.write(DROP)
    multiarch = sysconfig.get_config_var("MULTIARCH")
    include = f"-I/usr/include/{multiarch}"
    sh("clang", "-O2", "-g", "-target", "bpf", include, "-c", source, "-o", target)
    return target


def run(
    loadgen: str,
    port: int,
    mode: list[str],
    clients: int,
    payload: int,
    seconds: float,
    drop: str | None = None,
    where: tuple[str, str] = ("bxs", "s0"),
) -> dict[str, float]:
    with In("bxp"):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sink.bind((PEER4, 0))
    peer = sink.getsockname()[:2]
    with In("bxc"):
        socks = allocate_clients(port, clients, peer, host=SERVER4)
    fds = [sink.fileno()] + [s.fileno() for s, _, _, _ in socks]
    # The first datagrams of each way resolve the neighbours.
    time.sleep(0.2)
    ns, device = where
    if drop is not None:
        sh("ip", "-n", ns, "link", "set", "dev", device, "xdpdrv", "obj", drop, "sec", "xdp")
    before, cpus = busy(), per_cpu()
    result = subprocess.run(
        pinned(1, [loadgen, *mode, str(seconds), str(payload), str(sink.fileno()),
                   *[f"{s.fileno()}:{ch}@{relayed}" for s, ch, _, relayed in socks]]),
        pass_fds=fds, capture_output=True, text=True, check=True,
    )  # fmt: skip
    machine = busy() - before
    if drop is not None:
        figures_dropped = dropped(ns)
        sh("ip", "-n", ns, "link", "set", "dev", device, "xdpdrv", "off")
    cpus = {name: round(t - cpus[name], 2) for name, t in per_cpu().items()}
    release(socks)
    sink.close()
    figures = {k: float(v) for k, v in (kv.split("=") for kv in result.stdout.split())}
    generator = figures.get("sender_cpu", 0.0) + figures.get("receiver_cpu", 0.0)
    if drop is not None:
        figures["dropped"] = figures_dropped
    figures["machine_cpu"] = machine
    figures["cpus"] = cpus  # type: ignore[assignment]
    figures["generator_cpu"] = generator
    return figures


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--turnserver", default="turnserver")
    parser.add_argument("--only", default="xdp,fast,python,coturn")
    parser.add_argument(
        "--inline-napi",
        action="store_true",
        help="leave the veths' receiving on the sending CPU (no NAPI threads): the server's "
        "CPU figures then miss what XDP does on the generator's CPU; for latency",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/xdp.py needs root (namespaces, XDP)")
    loadgen = build_loadgen()
    topology(threaded=not args.inline_napi)
    results: dict[str, dict[str, float]] = {}
    floor_per_packet = 0.0
    drop = drop_program()
    try:
        server = start("fast", 3478, args.turnserver, "/tmp")
        try:
            wait_ready(3478)
            floor = run(loadgen, 3478, [], args.clients, args.payload, args.seconds, drop)
        finally:
            server.terminate()
            server.wait()
        floor_per_packet = floor["cpus"]["cpu0"] / max(1.0, floor["sent"])  # type: ignore[index]
        say(
            f"floor   {floor['sent'] / args.seconds:10,.0f} pkt/s dropped by XDP on arrival: "
            f"{floor_per_packet * 1e6:.2f} us of the server CPU a packet (receiving it)",
        )
        for name in args.only.split(","):
            port = 3478
            logdir = f"/tmp/bench-xdp-{name}"
            os.makedirs(logdir, exist_ok=True)
            server = start(name, port, args.turnserver, logdir)
            try:
                wait_ready(port)
                flood = run(loadgen, port, [], args.clients, args.payload, args.seconds)
                latency = run(
                    loadgen, port, [f"--latency={LATENCY_RATE}"], args.clients, args.payload,
                    args.seconds,
                )  # fmt: skip
            finally:
                server.terminate()
                server.wait()
            # The server's CPU: all of CPU 0, where its process, its
            # interfaces' receiving and XDP run.
            cpu = max(1e-9, flood["cpus"]["cpu0"])  # type: ignore[index]
            results[name] = {
                "pps": flood["received"] / args.seconds,
                "loss": 1 - flood["received"] / max(1.0, flood["sent"]),
                "machine_cpu": flood["machine_cpu"] / args.seconds,
                "server_cpu": cpu / args.seconds,
                "generator_cpu": flood["generator_cpu"] / args.seconds,
                "us_per_packet": cpu / max(1.0, flood["received"]) * 1e6,
                "per_cpu_s": flood["received"] / cpu,
                "p50": latency["p50_us"],
                "p99": latency["p99_us"],
                "cpus": flood["cpus"],
            }
            r = results[name]
            say(
                f"{name:7s} {r['pps']:10,.0f} pkt/s  loss {r['loss']:5.1%}  "
                f"server CPU {r['server_cpu']:.2f}, generator {r['generator_cpu']:.2f}  "
                f"{r['us_per_packet']:.2f} us/pkt = {r['per_cpu_s']:10,.0f} pkt per CPU-s  "
                f"latency p50 {r['p50']:.0f} us p99 {r['p99']:.0f} us  (busy: {r['cpus']})",
            )
    finally:
        teardown()
    base = results.get("fast")
    if base:
        for name, r in results.items():
            say(
                f"{name:7s} vs fast path: {r['pps'] / base['pps']:.2f}x pkt/s, "
                f"{r['per_cpu_s'] / base['per_cpu_s']:.2f}x per CPU-s, "
                f"p99 {r['p99'] / base['p99']:.2f}x"
            )


if __name__ == "__main__":
    main()
