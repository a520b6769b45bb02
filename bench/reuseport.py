"""
How a Linux SO_REUSEPORT group of UDP sockets maps clients to sockets,
and what a worker that dies does to the others' clients: the measurement
behind --workers' design (issue 12).

Four "worker" sockets share 127.0.0.1:PORT; 400 clients (one source port
each) send one datagram each, and every socket reports who reached it.
Then, as if worker 1 died:

  plain     its socket closes: how many of the *surviving* workers'
            clients now land on another worker (whose allocation table
            does not know them);
  rejoin    a replacement socket joins the group: the same, again;
  held      the supervisor keeps every worker's socket open (a dup of
            the descriptor) and hands the dead worker's socket to its
            replacement: the group never changes.

usage: python bench/reuseport.py [--workers 4] [--clients 400]
"""

from __future__ import annotations

import argparse
import select
import socket


def group(port: int, count: int) -> list[socket.socket]:
    return [member(port) for _ in range(count)]


def member(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def mapping(
    workers: list[socket.socket | None], clients: list[socket.socket], port: int
) -> dict[int, int]:
    """
    client index -> worker index that received its datagram.
    """
    for i, client in enumerate(clients):
        client.sendto(b"%d" % i, ("127.0.0.1", port))
    found: dict[int, int] = {}
    live = {w.fileno(): i for i, w in enumerate(workers) if w is not None}
    while len(found) < len(clients):
        ready, _, _ = select.select([w for w in workers if w is not None], [], [], 1.0)
        if not ready:
            break
        for sock in ready:
            try:
                while True:
                    data = sock.recv(64)
                    found[int(data)] = live[sock.fileno()]
            except BlockingIOError:
                pass
    return found


def moved(before: dict[int, int], after: dict[int, int], dead: int) -> tuple[int, int]:
    """
    (clients of surviving workers that moved, clients of surviving workers).
    """
    survivors = [c for c, w in before.items() if w != dead]
    return sum(1 for c in survivors if after.get(c) != before[c]), len(survivors)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=400)
    args = parser.parse_args()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    clients = []
    for _ in range(args.clients):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        clients.append(client)

    workers: list[socket.socket | None] = list(group(port, args.workers))
    before = mapping(workers, clients, port)
    dead = 1
    closing = workers[dead]
    assert closing is not None
    closing.close()
    workers[dead] = None
    plain = mapping(workers, clients, port)
    workers[dead] = member(port)
    rejoin = mapping(workers, clients, port)
    for sock in workers:
        assert sock is not None
        sock.close()

    held_workers = group(port, args.workers)
    held_before = mapping(list(held_workers), clients, port)
    # The worker dies, but the supervisor's duplicate keeps its socket in
    # the group; the replacement gets that same socket back.
    replacement = held_workers[dead].dup()
    held_workers[dead].close()
    held_workers[dead] = replacement
    held_after = mapping(list(held_workers), clients, port)

    for name, after, baseline in [
        ("plain (socket closed)", plain, before),
        ("rejoin (replacement binds anew)", rejoin, before),
        ("held (supervisor keeps the socket)", held_after, held_before),
    ]:
        count, total = moved(baseline, after, dead)
        print(  # noqa: T201 - a benchmark prints its figures
            f"{name:38s} {count:4d} of {total} surviving workers' clients moved "
            f"({100 * count / max(total, 1):.0f}%)"
        )
    for sock in held_workers + clients:
        sock.close()


if __name__ == "__main__":
    main()
