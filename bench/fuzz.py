"""
The long fuzz run: mutations of real requests into the server core (UDP
datagrams, and stream chunks cut at random through TCP framing), by
default 1,000,000 of them, then mutated DTLS and TLS records into the
transports (another 1,000,000), then mutated client datagrams and random
peer datagrams into a core behind the compiled fast path and a pure
Python core side by side (another 1,000,000 in each mix of address
families, when the fast path is built), and the figures: how many, how
fast, and what escaped, reached the last-resort handler, stayed behind
for senders that never authenticated, or came out of the two paths
differently (all should be 0).

usage: python bench/fuzz.py [--iterations 1000000] [--transports 1000000]
                            [--forwarding 1000000] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txturn.fastpath.forwarding import compiled_module  # noqa: E402
from txturn.testing.forwarding_check import TOPOLOGIES, fuzz_forwarding  # noqa: E402
from txturn.testing.fuzzing import fuzz, fuzz_transports  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--transports", type=int, default=1_000_000)
    parser.add_argument("--forwarding", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    result = fuzz(args.iterations, args.seed)
    elapsed = time.perf_counter() - start
    server = result["server"]
    counters = {c.key: n for c, n in server.counters.items()}
    print(  # noqa: T201 - a benchmark prints its figures
        f"{result['iterations']:,} inputs in {elapsed:.1f} s "
        f"({result['iterations'] / elapsed:,.0f}/s): "
        f"successes={result['successes']:,} "
        f"escaped={len(result['escaped'])} failures={len(result['failures'])} "
        f"stranger_allocations={len(result['strangers'])} "
        f"allocations={len(server.allocations)} counters={counters}"
    )
    for failure in result["failures"][:3]:
        print(failure.getTraceback())  # noqa: T201
    start = time.perf_counter()
    transports = fuzz_transports(args.transports, args.seed)
    elapsed = time.perf_counter() - start
    print(  # noqa: T201
        f"{transports['iterations']:,} DTLS/TLS records in {elapsed:.1f} s "
        f"({transports['iterations'] / elapsed:,.0f}/s): "
        f"escaped={len(transports['escaped'])} failures={len(transports['failures'])} "
        f"most DTLS sessions={transports['most_sessions']} (cap {transports['max_sessions']})"
    )
    for failure in transports["failures"][:3]:
        print(failure.getTraceback())  # noqa: T201
    for escape in sorted(set(transports["escaped"]))[:5]:
        print("escaped:", escape)  # noqa: T201
    module = compiled_module()
    differences: list[object] = []
    forwarding_failures: list[object] = []
    if module is None:
        print("the fast path is not built: no forwarding fuzz")  # noqa: T201
    else:
        for topology in TOPOLOGIES:
            start = time.perf_counter()
            twins = fuzz_forwarding(args.forwarding, args.seed, module, topology)
            elapsed = time.perf_counter() - start
            differences += twins["mismatches"] + twins["escaped"]
            forwarding_failures += twins["failures"]
            print(  # noqa: T201
                f"{twins['iterations']:,} datagrams ({topology}) to the fast and Python paths "
                f"in {elapsed:.1f} s ({twins['iterations'] / elapsed:,.0f}/s): forwarded by "
                f"the fast path={twins['forwarded']:,} different={len(twins['mismatches'])} "
                f"escaped={len(twins['escaped'])} failures={len(twins['failures'])}",
                flush=True,
            )
            for data, fast, slow in twins["mismatches"][:3]:
                print("different:", data[:64].hex(), fast[:1], slow[:1])  # noqa: T201
    if (
        differences
        or forwarding_failures
        or result["escaped"]
        or result["failures"]
        or result["strangers"]
        or transports["escaped"]
        or transports["failures"]
    ):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
