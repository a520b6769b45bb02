"""
Scaling benchmark for ``--workers``: packets relayed per second and per
CPU-second of every worker together, for one process and for two
workers, with the load generator of bench/relay.py (sendmmsg/recvmmsg,
50 clients over ChannelData to one peer).

This machine has two cores and the generator needs one, so two workers
cannot run on two free cores here.  The figure that predicts N-fold
scaling on N free cores is therefore packets per CPU-second: if two
workers relay as many packets per CPU-second as one process does, N
workers on N free cores relay N times as much.  Runs:

 - ``1 worker``: ``--workers 1``, pinned to CPU 0; the generator on CPU 1;
 - ``2 workers, 1 core``: ``--workers 2``, supervisor and both workers
   pinned to CPU 0 (the per-packet cost of the arrangement, at the same
   saturation);
 - ``2 workers, 2 cores``: ``--workers 2`` unpinned, sharing both cores
   with the generator (what two workers take when they can).

Each line shows the packets relayed per second, each worker's CPU, the
packets per CPU-second of all workers, and the generator's own rate and
CPU.  Loopback only; every run stops after --seconds.

usage: python bench/workers.py [--seconds 5] [--clients 50] [--payload 100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import relay  # noqa: E402


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def run(label: str, workers: int, cpu: int | None, args: argparse.Namespace) -> dict[str, float]:
    port = relay.free_port()
    process = relay.start_txturn(
        port, "--workers", str(workers), "--min-port", "40000", "--max-port", "48000", cpu=cpu
    )
    try:
        relay.wait_for_server(port)
        time.sleep(1.0)  # every worker listening
        pids = children(process.pid) if workers > 1 else [process.pid]
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sink.bind(("127.0.0.1", 0))
        clients = relay.allocate_clients(port, args.clients, sink.getsockname())
        before = {pid: relay.cpu_seconds(pid) for pid in pids}
        supervisor_before = relay.cpu_seconds(process.pid)
        result = subprocess.run(
            relay.pinned(
                1,
                [
                    relay.build_loadgen(),
                    str(args.seconds),
                    str(args.payload),
                    str(sink.fileno()),
                    *[f"{s.fileno()}:{ch}" for s, ch, _, _ in clients],
                ],
            ),
            pass_fds=[sink.fileno()] + [s.fileno() for s, _, _, _ in clients],
            capture_output=True,
            text=True,
            check=True,
        )
        used = {pid: relay.cpu_seconds(pid) - before[pid] for pid in pids}
        supervisor = relay.cpu_seconds(process.pid) - supervisor_before
        for s, _, _, _ in clients:
            s.close()
        sink.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    figures = dict(kv.split("=") for kv in result.stdout.split())
    elapsed = float(figures["seconds"])
    received = int(figures["received"])
    total_cpu = sum(used.values()) + (supervisor if workers > 1 else 0.0)
    line = {
        "pps": received / elapsed,
        "per_cpu_second": received / total_cpu if total_cpu else 0.0,
        "cpu": total_cpu / elapsed,
        "sent_pps": int(figures["sent"]) / args.seconds,
        "sender_cpu": float(figures["sender_cpu"]) / args.seconds,
    }
    each = " ".join(f"{cpu / elapsed:4.0%}" for cpu in used.values())
    print(  # noqa: T201 - a benchmark prints its figures
        f"{label:18} {line['pps']:>9,.0f} pkt/s  workers' CPU [{each}]"
        f"{f' supervisor {supervisor / elapsed:4.1%}' if workers > 1 else ''}  "
        f"{line['per_cpu_second']:>9,.0f} pkt per CPU-second  "
        f"generator: {line['sent_pps']:>9,.0f} pkt/s sent, cpu={line['sender_cpu']:4.0%}",
        flush=True,
    )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    ratios: list[tuple[float, float, float]] = []
    for _ in range(args.rounds):
        one = run("1 worker", 1, 0, args)
        pinned = run("2 workers, 1 core", 2, 0, args)
        free = run("2 workers, 2 cores", 2, None, args)
        ratios.append(
            (
                pinned["per_cpu_second"] / one["per_cpu_second"],
                free["per_cpu_second"] / one["per_cpu_second"],
                free["pps"] / one["pps"],
            )
        )
        print(  # noqa: T201
            "per CPU-second, 2 workers / 1 worker: {:.2f} (1 core), {:.2f} (2 cores); "
            "throughput, 2 workers on 2 cores / 1 worker: {:.2f}".format(*ratios[-1]),
            flush=True,
        )
    medians = [statistics.median(r[i] for r in ratios) for i in range(3)]
    print(  # noqa: T201
        "median of {} rounds: {:.2f} (1 core), {:.2f} (2 cores); throughput {:.2f}".format(
            len(ratios), *medians
        )
    )


if __name__ == "__main__":
    main()
