"""
Allocates per second with users from SQLite and from Redis, next to
static users (``--user``), in the same run on the same machine.

Each source runs twice:

 - ``cached``: the default ``--user-cache-ttl`` (10 s): after each user's
   first request the keys come from the cache, as in production;
 - ``uncached``: ``--user-cache-ttl 0.001``: every request asks the
   database (the worst case: a flood of first-time users).

The client (this process, on CPU 1) keeps ``--clients`` users busy, each
on its own UDP socket with its own user: Allocate, then Refresh with
lifetime 0, again and again, every request authenticated (one 401 round
trip per user at the start).  The server (``twistd turn``, pinned to
CPU 0) is the same for every source.  The figure is completed Allocates
per second and per server CPU-second, and its ratio to static users.
A ``redis-server`` is started on a loopback port for the Redis runs.

usage: python bench/auth.py [--seconds 5] [--clients 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import relay  # noqa: E402

from txturn.client import StunClient  # noqa: E402
from txturn.stun import Attr, Class, Method  # noqa: E402

REALM = relay.REALM


def users(count: int) -> list[tuple[str, str]]:
    return [(f"user{i}", f"password{i}") for i in range(count)]


def admin(*args: str, password: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "txturn.admin", "--realm", REALM, *args],
        check=True,
        cwd=ROOT,
        env={**os.environ, "TXTURN_PASSWORD": password},
        stdout=subprocess.DEVNULL,
    )


class Client:
    """
    One user on one socket: Allocate, Refresh 0, again.
    """

    def __init__(self, port: int, username: str, password: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.server = ("127.0.0.1", port)
        self.stun = StunClient(username, password)
        self.allocated = 0
        self.errors = 0
        self.sent_at = 0.0
        self.method = Method.ALLOCATE
        self.send()

    def send(self) -> None:
        attributes: list[tuple[int, Any]] = (
            [(Attr.REQUESTED_TRANSPORT, 17)]
            if self.method == Method.ALLOCATE
            else [(Attr.LIFETIME, 0)]
        )
        self.sock.sendto(self.stun.request(self.method, attributes), self.server)
        self.sent_at = time.monotonic()

    def received(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        response = self.stun.learn(data)
        if self.stun.challenged(response):
            self.send()
            return
        if response.cls != Class.SUCCESS:
            self.errors += 1
            self.method = Method.REFRESH if self.method == Method.ALLOCATE else Method.ALLOCATE
        elif self.method == Method.ALLOCATE:
            self.allocated += 1
            self.method = Method.REFRESH
        else:
            self.method = Method.ALLOCATE
        self.send()


def measure(
    port: int, pid: int, accounts: list[tuple[str, str]], seconds: float
) -> dict[str, float]:
    clients = [Client(port, name, password) for name, password in accounts]
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    # A second of warm-up: the 401 round trips, the first lookups.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            key.data.received()
    start_allocated = sum(c.allocated for c in clients)
    cpu0, own0, t0 = relay.cpu_seconds(pid), time.process_time(), time.monotonic()
    deadline = t0 + seconds
    while (now := time.monotonic()) < deadline:
        for key, _ in selector.select(0.1):
            key.data.received()
        for client in clients:
            if now - client.sent_at > 1.0:  # lost: ask again
                client.send()
    elapsed = time.monotonic() - t0
    allocated = sum(c.allocated for c in clients) - start_allocated
    server_cpu = relay.cpu_seconds(pid) - cpu0
    for client in clients:
        client.sock.close()
    return {
        "per_s": allocated / elapsed,
        "per_cpu_s": allocated / server_cpu if server_cpu else 0.0,
        "server_cpu": server_cpu / elapsed,
        "client_cpu": (time.process_time() - own0) / elapsed,
        "errors": float(sum(c.errors for c in clients)),
    }


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    port = relay.free_port()
    process = subprocess.Popen(
        relay.pinned(1, [shutil.which("redis-server") or "redis-server", "--port", str(port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", directory]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1}) if hasattr(os, "sched_setaffinity") else None
    directory = tempfile.mkdtemp()
    accounts = users(args.clients)
    database = os.path.join(directory, "users.db")
    redis_process, redis_url = start_redis(directory)
    try:
        for name, password in accounts:
            admin("--user-db", f"sqlite://{database}", "add", name, password=password)
            admin("--redis", redis_url, "add", name, password=password)
        static = [arg for name, password in accounts for arg in ("--user", f"{name}:{password}")]
        sources = {
            "static": static,
            "sqlite": ["--user-db", f"sqlite://{database}"],
            "redis": ["--redis", redis_url],
        }
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for name, options in sources.items():
                for cache in ("cached", "uncached"):
                    if name == "static" and cache == "uncached":
                        continue
                    ttl = ["--user-cache-ttl", "0.001"] if cache == "uncached" else []
                    port = relay.free_port()
                    server = relay.start_txturn(
                        port, *options, *ttl, "--user-quota", "0", "--no-tcp",
                        "--min-port", "40000", "--max-port", "48000",
                    )  # fmt: skip
                    try:
                        relay.wait_for_server(port)
                        label = name if name == "static" else f"{name} {cache}"
                        results.setdefault(label, []).append(
                            measure(port, server.pid, accounts, args.seconds)
                        )
                    finally:
                        server.terminate()
                        server.wait()
        base = statistics.median(r["per_s"] for r in results["static"])
        base_cpu = statistics.median(r["per_cpu_s"] for r in results["static"])
        say = print  # a benchmark prints its figures
        say(f"{args.clients} users, {args.seconds:g} s x {args.rounds} rounds; medians")
        say(f"{'source':18} {'allocates/s':>12} {'ratio':>6} {'per CPU-s':>10} {'ratio':>6} "
              f"{'server CPU':>10} {'client CPU':>10} {'errors':>6}")  # fmt: skip
        for label, runs in results.items():
            per_s = statistics.median(r["per_s"] for r in runs)
            per_cpu = statistics.median(r["per_cpu_s"] for r in runs)
            say(
                f"{label:18} {per_s:12.0f} {per_s / base:6.2f} {per_cpu:10.0f} "
                f"{per_cpu / base_cpu:6.2f} "
                f"{statistics.median(r['server_cpu'] for r in runs):10.0%} "
                f"{statistics.median(r['client_cpu'] for r in runs):10.0%} "
                f"{sum(r['errors'] for r in runs):6.0f}"
            )
    finally:
        redis_process.terminate()
        redis_process.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
