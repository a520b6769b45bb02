"""
What a real client's packets cost the server: coturn's turnutils_uclient
(20 clients, each sending --messages messages that turnutils_peer echoes
back) through txturn (fast path and Python path) and coturn's
turnserver, in the same run, alternating; the server's CPU time per
relayed packet (both directions), in microseconds, and coturn's over
txturn's (above 1: txturn is cheaper).

Modes are uclient's: channels (the default), send (-s: Send and Data
indications, DATA before XOR-PEER-ADDRESS), tcp (-t), tls (-S -t) and
dtls (-S), the last two with a self-signed certificate; ipv6 (client,
server, relay and peer on ::1, channels) and ipv6-relay (an IPv4 client
with an IPv6 relay, -x).  The server is
pinned to CPU 0, uclient and the peer to CPU 1; loopback only; each run
ends when uclient has sent its messages.

usage: python bench/uclient.py [--modes channels,send,tcp] [--messages 1000]
                               [--rounds 1] [--turnserver PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from relay import (  # noqa: E402
    PASSWORD,
    USER,
    coturn_extra,
    cpu_seconds,
    free_port,
    pinned,
    start_coturn,
    start_txturn,
)

from txturn.testing import self_signed_certificate  # noqa: E402

CLIENTS = 20
MODES = {
    "channels": [],
    "send": ["-s"],
    "tcp": ["-t"],
    "tls": ["-S", "-t"],
    "dtls": ["-S"],
    "ipv6": ["-x"],
    "ipv6-relay": ["-x"],
}
#: The server's and the peer's address, where not 127.0.0.1.
HOSTS = {"ipv6": ("::1", "::1"), "ipv6-relay": ("127.0.0.1", "::1")}
#: Modes over a stream, and over TLS or DTLS (to the TLS port).
STREAM = ("tcp", "tls")
SECURE = ("tls", "dtls")


def wait_listening(port: int, tcp: bool) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-lnu" if not tcp else "-lnt"], capture_output=True, text=True)
        if f":{port} " in out.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def run(server: str, mode: str, messages: int, turnserver: str) -> tuple[float, int, int]:
    """
    Server CPU microseconds per relayed packet, messages sent and lost.
    """
    port, peer_port, tls_port = free_port(), free_port(), free_port()
    server_host, peer_host = HOSTS.get(mode, ("127.0.0.1", "127.0.0.1"))
    ipv6 = mode in HOSTS
    with tempfile.TemporaryDirectory() as logdir:
        cert, key = self_signed_certificate(logdir)
        secure = (cert, key, tls_port) if mode in SECURE else None
        if server == "coturn":
            process = start_coturn(
                port,
                logdir,
                turnserver,
                tcp=mode in STREAM,
                extra=coturn_extra(turnserver)
                + (("--listening-ip=::1", "--relay-ip=::1") if ipv6 else ()),
                secure=secure,
            )
        else:
            tls = ("--cert", cert, "--key", key, "--tls-port", str(tls_port)) if secure else ()
            six = ("--listen", "::1", "--relay-ip", "::1") if ipv6 else ()
            process = start_txturn(
                port, *tls, *six, fast_path="on" if server == "txturn" else "off"
            )
        peer = subprocess.Popen(
            pinned(1, ["turnutils_peer", "-L", peer_host, "-p", str(peer_port)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(tls_port if secure else port, tcp=mode in STREAM)
            before = cpu_seconds(process.pid)
            uclient = subprocess.run(
                pinned(
                    1,
                    [
                        "turnutils_uclient",
                        *MODES[mode],
                        "-u",
                        USER,
                        "-w",
                        PASSWORD,
                        "-p",
                        str(tls_port if secure else port),
                        "-m",
                        str(CLIENTS),
                        "-n",
                        str(messages),
                        "-l",
                        "100",
                        "-z",
                        "0",
                        "-e",
                        peer_host,
                        "-r",
                        str(peer_port),
                        server_host,
                    ],  # fmt: skip
                ),
                capture_output=True,
                text=True,
                timeout=600,
            )
            used = cpu_seconds(process.pid) - before
        finally:
            for child in (process, peer):
                child.terminate()
                child.wait()
    totals = re.findall(
        r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\n", uclient.stderr + uclient.stdout
    )
    if not totals:
        # coturn 4.17.1's DTLS at uclient's full pace has ended this way:
        # the row says so, the other rows are still measured.
        print(f"{mode:9} {server:7} no summary from turnutils_uclient", flush=True)  # noqa: T201
        return float("nan"), 0, 0
    total, received = int(totals[-1][0]), int(totals[-1][1])
    lost_count = total - received
    # Each message crosses the server twice: to the peer, and back.
    relayed = total + received
    return used * 1e6 / max(relayed, 1), total, lost_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="channels,send,tcp")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--turnserver", default="turnserver")
    parser.add_argument("--servers", default="txturn,python,coturn")
    args = parser.parse_args()
    servers = args.servers.split(",")
    if "coturn" in servers and not shutil.which(args.turnserver):
        servers.remove("coturn")
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            for server in servers:
                cost, sent, lost = run(server, mode, args.messages, args.turnserver)
                results.setdefault((mode, server), []).append(cost)
                print(  # noqa: T201 - a benchmark prints its figures
                    f"{mode:9} {server:7} {cost:6.2f} us/packet  sent={sent} lost={lost}",
                    flush=True,
                )
    print()  # noqa: T201
    for mode in args.modes.split(","):
        row = {s: median(results[(mode, s)]) for s in servers}
        line = "  ".join(f"{s} {row[s]:.2f}" for s in servers)
        if "coturn" in row:
            line += "  | coturn/txturn " + f"{row['coturn'] / row.get('txturn', row['coturn']):.2f}"
        print(f"{mode:9} {line}")  # noqa: T201


if __name__ == "__main__":
    main()
