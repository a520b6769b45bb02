"""
Soak on real sockets: 10,000 allocations on a real C{twistd turn}, each
allocated, refreshed, given a permission and a channel, then deleted; two
rounds, so growth from the first round to the second shows a leak.
Prints the server's RSS and open descriptors at each step: descriptors
must return to where they started (every relay port released).

usage: python bench/soak.py [--allocations 10000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from relay import (  # noqa: E402
    PASSWORD,
    USER,
    free_port,
    rss_mib,
    start_txturn,
    transact,
    wait_for_server,
)

from txturn.testing import StunClient  # noqa: E402
from txturn.wire.stun import Attr, Method  # noqa: E402


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one_round(
    port: int, count: int, peer: tuple[str, int], pid: int
) -> tuple[float, float, float, int]:
    """
    Create and then delete C{count} allocations; returns the seconds each
    half took, and the server's RSS and descriptors at the peak.
    """
    clients = []
    # One 401 for the whole round: the nonce is bound to the IP, which all
    # these clients share (as clients behind one NAT would).
    first = StunClient(USER, PASSWORD)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(5)
        probe.connect(("127.0.0.1", port))
        probe.send(first.request(Method.REFRESH, authenticate=False))
        first.learn(probe.recv(2048))
    start = time.perf_counter()
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        client = StunClient(USER, PASSWORD)
        client.realm, client.nonce = first.realm, first.nonce
        transact(sock, client, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        transact(sock, client, Method.REFRESH, [(Attr.LIFETIME, 900)])
        transact(sock, client, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)])
        transact(
            sock,
            client,
            Method.CHANNEL_BIND,
            [(Attr.CHANNEL_NUMBER, 0x4000 + i % 0x1000), (Attr.XOR_PEER_ADDRESS, peer)],
        )
        clients.append((sock, client))
    created = time.perf_counter() - start
    peak_rss, peak_fds = rss_mib(pid), descriptors(pid)
    start = time.perf_counter()
    for sock, client in clients:
        transact(sock, client, Method.REFRESH, [(Attr.LIFETIME, 0)])
        sock.close()
    return created, time.perf_counter() - start, peak_rss, peak_fds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--allocations", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    server = start_txturn(port, "--no-tcp", "--stale-nonce", "3600", "--user-quota", "0", cpu=None)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        wait_for_server(port)
        base_rss, base_fds = rss_mib(server.pid), descriptors(server.pid)
        print(f"start: rss={base_rss:.1f} MiB fds={base_fds}", flush=True)  # noqa: T201
        for n in range(1, args.rounds + 1):
            created, deleted, peak_rss, peak_fds = one_round(
                port, args.allocations, peer.getsockname(), server.pid
            )
            time.sleep(1)
            print(  # noqa: T201 - a benchmark prints its figures
                f"round {n}: {args.allocations:,} allocations created in {created:.1f} s "
                f"(peak rss={peak_rss:.1f} MiB fds={peak_fds}), deleted in {deleted:.1f} s; "
                f"after: rss={rss_mib(server.pid):.1f} MiB fds={descriptors(server.pid)}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=20)
        peer.close()


if __name__ == "__main__":
    main()
