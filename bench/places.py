"""
The ``--workers`` quota table (txturn.workers.shared_places) after many
distinct names: with REST credentials every session is a new name.  Each
step is what an Allocate and its end do to the table (the quota check
under the lock, the place taken, the place given back), for a name never
seen before, while 1,000 users hold places throughout.  Prints the cost
of a step every ``--every`` names.

usage: [PYTHONPATH=TREE] python bench/places.py [--names 2000000] [--every 250000]
                                                [--seconds-limit 120]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from txturn.workers import shared_places
from txturn.workers.shared_places import SharedPlaces


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=2_000_000)
    parser.add_argument("--every", type=int, default=250_000)
    parser.add_argument("--seconds-limit", type=float, default=120.0)
    args = parser.parse_args()
    fd = shared_places.create(2, shared_places.DEFAULT_ROWS)
    key = os.urandom(16)
    worker, other = SharedPlaces(fd, 0, key), SharedPlaces(fd, 1, key)
    for n in range(1000):
        other.add(f"holder{n}", 1)
    started = window = time.monotonic()
    for n in range(1, args.names + 1):
        name = f"1700000000:session{n}"
        with worker.transaction():
            worker.held_by(name)
            worker.add(name, 1)
        worker.add(name, -1)
        if n % args.every == 0 or n == args.names:
            now = time.monotonic()
            step = (now - window) / min(args.every, n) * 1e6
            sys.stdout.write(f"{n:>9} names: {step:8.1f} us per Allocate and release\n")
            sys.stdout.flush()
            window = now
            if now - started > args.seconds_limit:
                sys.stdout.write(f"stopped after {args.seconds_limit:.0f} s\n")
                break
    assert other.held_by("holder999") == 1


if __name__ == "__main__":
    main()
