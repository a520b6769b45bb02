"""
Allocates per second with users from SQLite and from Redis, next to
static users (``--user``), in the same run on the same machine.

Each source runs twice:

 - ``cached``: the default ``--user-cache-ttl`` (10 s): after each user's
   first request the keys come from the cache, as in production;
 - ``uncached``: ``--user-cache-ttl 0.001``: every request asks the
   database (the worst case: a flood of first-time users).

The client (this process, on CPU 1) keeps ``--clients`` users busy, each
with its own user: Allocate, then Refresh with lifetime 0, then again
from a new UDP socket, every request authenticated (one 401 round trip
per user at the start, and per socket where the server wants one).  The
server (``twistd turn``, pinned to CPU 0) is the same for every source.
The figure is completed Allocates per second and per server CPU-second,
and its ratio to static users.
A ``redis-server`` is started on a loopback port for the Redis runs.

coturn runs the same load in the same run with the same users: on its
command line, in its SQLite ``userdb`` and in Redis (``redis-userdb``, its
own key layout), one relay thread pinned to CPU 0 as in bench/relay.py.
coturn keeps no key cache, so "vs coturn" is shown for both txturn
columns.  The coturn of bench/build_coturn.sh needs libsqlite3-dev and
libhiredis-dev to have both databases.

usage: python bench/auth.py [--seconds 5] [--clients 32] [--rounds 2]
                            [--turnserver bench/build/coturn/bin/turnserver]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import selectors
import shutil
import socket
import sqlite3
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

from txturn.auth.credentials import long_term_key  # noqa: E402
from txturn.tools.client import StunClient  # noqa: E402
from txturn.wire.stun import Attr, Class, Method  # noqa: E402

REALM = relay.REALM


def users(count: int) -> list[tuple[str, str]]:
    return [(f"user{i}", f"password{i}") for i in range(count)]


def admin(*args: str, password: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "txturn.tools.admin", "--realm", REALM, *args],
        check=True,
        cwd=ROOT,
        env={**os.environ, "TXTURN_PASSWORD": password},
        stdout=subprocess.DEVNULL,
    )


class Client:
    """
    One user: Allocate, Refresh 0, and again from a new socket, as a new
    call from the same user would (coturn answers 437 to an Allocate on a
    5-tuple it has just deleted an allocation of).  The nonce is kept; a
    server that wants a new one for the new socket asks for it.
    """

    def __init__(
        self, port: int, username: str, password: str, selector: selectors.BaseSelector
    ) -> None:
        self.server = ("127.0.0.1", port)
        self.selector = selector
        self.stun = StunClient(username, password)
        self.allocated = 0
        #: Error answers by code.
        self.errors: collections.Counter[int] = collections.Counter()
        self.sent_at = 0.0
        self.method = Method.ALLOCATE
        self.sock = self._socket()
        self.send()

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, self)
        return sock

    def close(self) -> None:
        self.selector.unregister(self.sock)
        self.sock.close()

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
            self.errors[response.get(Attr.ERROR_CODE, (0, ""))[0]] += 1
        if self.method == Method.ALLOCATE and response.cls == Class.SUCCESS:
            self.allocated += 1
            self.method = Method.REFRESH
        else:
            # Deleted (or never made): the next call, from a new socket.
            self.close()
            self.sock = self._socket()
            self.method = Method.ALLOCATE
        self.send()


def measure(
    port: int, pid: int, accounts: list[tuple[str, str]], seconds: float
) -> dict[str, float]:
    selector = selectors.DefaultSelector()
    clients = [Client(port, name, password, selector) for name, password in accounts]
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
        client.close()
    return {
        "per_s": allocated / elapsed,
        "per_cpu_s": allocated / server_cpu if server_cpu else 0.0,
        "server_cpu": server_cpu / elapsed,
        "client_cpu": (time.process_time() - own0) / elapsed,
        "errors": float(sum(sum(c.errors.values()) for c in clients)),
        # Error answers by code, as one number each: 437 -> "errors_437".
        **{
            f"errors_{code}": float(sum(c.errors[code] for c in clients))
            for code in set().union(*(c.errors for c in clients))
        },
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


def start_coturn(
    turnserver: str, port: int, directory: str, *extra: str
) -> subprocess.Popen[bytes]:
    """
    coturn's turnserver on 127.0.0.1, one relay thread pinned to CPU 0,
    as bench/relay.py runs it, with C{extra} saying where its users are.
    """
    argv = [
        turnserver, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
        "--relay-ip=127.0.0.1", f"--realm={REALM}", "--lt-cred-mech", "--no-tls",
        "--no-dtls", "--no-tcp", "--no-cli", "--relay-threads=1", "--no-stdout-log",
        f"--log-file={os.path.join(directory, 'coturn.log')}",
        f"--pidfile={os.path.join(directory, 'coturn.pid')}",
        "--min-port=40000", "--max-port=48000", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        relay.pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def coturn_users(
    turnserver: str, directory: str, accounts: list[tuple[str, str]], redis_port: int
) -> dict[str, list[str]]:
    """
    The same users for coturn: on its command line, in its SQLite
    database (which it creates, then we fill) and in Redis, in coturn's
    own key layout; its options for each.
    """
    database = os.path.join(directory, "coturn.db")
    port = relay.free_port()
    first = start_coturn(turnserver, port, directory, f"--userdb={database}")
    relay.wait_for_server(port)
    first.terminate()
    first.wait()
    keys = [(name, long_term_key(name, REALM, password).hex()) for name, password in accounts]
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT OR REPLACE INTO turnusers_lt (realm, name, hmackey) VALUES (?, ?, ?)",
            [(REALM, name, key) for name, key in keys],
        )
    for name, key in keys:
        subprocess.run(
            ["redis-cli", "-p", str(redis_port), "SET", f"turn/realm/{REALM}/user/{name}/key", key],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return {
        "static": [f"--user={name}:{password}" for name, password in accounts],
        "sqlite": [f"--userdb={database}"],
        "redis": [f"--redis-userdb=ip=127.0.0.1 dbname=0 port={redis_port} connect_timeout=30"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--turnserver",
        default=os.path.join(HERE, "build", "coturn", "bin", "turnserver"),
        help="coturn's turnserver, built with SQLite and hiredis [bench/build/coturn]",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {1}) if hasattr(os, "sched_setaffinity") else None
    directory = tempfile.mkdtemp()
    accounts = users(args.clients)
    database = os.path.join(directory, "users.db")
    redis_process, redis_url = start_redis(directory)
    redis_port = int(redis_url.rsplit(":", 1)[1])
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
        coturn = shutil.which(args.turnserver)
        coturn_sources = coturn_users(coturn, directory, accounts, redis_port) if coturn else {}
        runs: list[tuple[str, Any]] = []
        for name, options in sources.items():
            for cache in ("cached", "uncached"):
                if name == "static" and cache == "uncached":
                    continue
                ttl = ["--user-cache-ttl", "0.001"] if cache == "uncached" else []
                label = name if name == "static" else f"{name} {cache}"
                runs.append(
                    (
                        label,
                        lambda port, o=options, t=ttl: relay.start_txturn(
                            port, *o, *t, "--user-quota", "0", "--no-tcp",
                            "--min-port", "40000", "--max-port", "48000",
                        ),
                    )
                )  # fmt: skip
        for name, options in coturn_sources.items():
            runs.append(
                (
                    f"coturn {name}",
                    lambda port, o=options: start_coturn(coturn, port, directory, *o),
                )
            )
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for label, start in runs:
                port = relay.free_port()
                server = start(port)
                try:
                    relay.wait_for_server(port)
                    results.setdefault(label, []).append(
                        measure(port, server.pid, accounts, args.seconds)
                    )
                finally:
                    server.terminate()
                    server.wait()
        report(results, args)
    finally:
        redis_process.terminate()
        redis_process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    """
    Medians: each source next to static users, and txturn next to coturn
    with the same source.
    """
    median = {
        label: {
            key: statistics.median(r[key] for r in runs)
            for key in ("per_s", "per_cpu_s", "server_cpu", "client_cpu")
        }
        for label, runs in results.items()
    }
    say = print  # a benchmark prints its figures
    say(f"{args.clients} users, {args.seconds:g} s x {args.rounds} rounds; medians")
    say(f"{'server and source':20} {'allocates/s':>11} {'per CPU-s':>10} {'vs static':>9} "
        f"{'vs coturn':>9} {'(per CPU)':>9} {'server CPU':>10} {'client CPU':>10} "
        f"{'errors':>6}")  # fmt: skip
    for label, m in median.items():
        coturn_label = "coturn " + label.split()[0]
        static = median["coturn static" if label.startswith("coturn") else "static"]
        other = median.get(coturn_label) if not label.startswith("coturn") else None
        known = other is not None and other["per_s"] and other["per_cpu_s"]
        versus = f"{m['per_s'] / other['per_s']:9.2f}" if known else f"{'':9}"  # type: ignore[index]
        versus_cpu = (
            f"{m['per_cpu_s'] / other['per_cpu_s']:9.2f}" if known else f"{'':9}"  # type: ignore[index]
        )
        errors = sum(r["errors"] for r in results[label])
        codes = sorted({k for r in results[label] for k in r if k.startswith("errors_")})
        detail = ", ".join(
            f"{int(sum(r.get(k, 0) for r in results[label]))} x {k[7:]}" for k in codes
        )
        ratio = m["per_s"] / static["per_s"] if static["per_s"] else 0.0
        say(
            f"{label:20} {m['per_s']:11.0f} {m['per_cpu_s']:10.0f} "
            f"{ratio:9.2f} {versus} {versus_cpu} "
            f"{m['server_cpu']:10.0%} {m['client_cpu']:10.0%} {errors:6.0f}"
            + (f" ({detail})" if detail else "")
        )


if __name__ == "__main__":
    main()
