"""
What one valid user can make the server hold by sending to many peer
addresses and ports: Send indications through one allocation to N
distinct (host, port) pairs of permitted loopback hosts, as one client
can write them.  Prints the fast path's entries and the process's RSS
before and after (issue 23: with no bound per allocation, 800,000 pairs
grew the compiled table by 70 MB that never came back).

The server is a TurnService in this process (so its table can be
counted), from the installed txturn or from PYTHONPATH; the client is a
thread with a blocking socket.  Only loopback is used.

usage: [PYTHONPATH=TREE] python bench/table_growth.py [--pairs 800000]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from typing import Any

from twisted.internet import reactor as _reactor

from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.peer_policy import PeerPolicy
from txturn.core.server import ServerConfig
from txturn.testing import StunClient, exchange
from txturn.wire.stun import Attr, Class, Method

reactor: Any = _reactor


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def entries(service: TurnService) -> int | None:
    forwarder = getattr(service.server.state.forwarding, "forwarder", None)
    return None if forwarder is None else int(forwarder.entry_count())


def client(service: TurnService, pairs: int, report: list[str]) -> None:
    port = service.port_of("udp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    stun = StunClient("u", "p")

    def request(method: int, attrs: list[tuple[int, Any]]) -> Any:
        return exchange(
            stun,
            method,
            attrs,
            lambda d: sock.sendto(d, ("127.0.0.1", port)),
            lambda: sock.recv(4096),
        )

    try:
        assert request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]).cls == Class.SUCCESS
        hosts = [f"127.0.{i}.1" for i in range(1, 2 + pairs // 60_000)]
        for host in hosts:
            answer = request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, (host, 1))])
            assert answer.cls == Class.SUCCESS
        before, started, sent = rss_kib(), time.monotonic(), 0
        stun.fingerprint = False
        for host in hosts:
            for peer_port in range(1024, 61_024):
                if sent == pairs:
                    break
                data = stun.request(
                    Method.SEND,
                    [(Attr.XOR_PEER_ADDRESS, (host, peer_port)), (Attr.DATA, b"x")],
                    authenticate=False,
                    cls=Class.INDICATION,
                )
                sock.sendto(data, ("127.0.0.1", port))
                sent += 1
                if sent % 1000 == 0:
                    time.sleep(0.02)  # this measures state, not loss
        time.sleep(2)
        took = time.monotonic() - started
        report.append(
            f"{sent} (host, port) pairs in {took:.0f} s: fast-path entries "
            f"{entries(service)}, RSS +{(rss_kib() - before) / 1024:.1f} MiB"
        )
    finally:
        reactor.callFromThread(reactor.stop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=800_000)
    args = parser.parse_args()
    service = TurnService(
        reactor,
        StaticCredentials("txturn", {"u": "p"}),
        [("127.0.0.1", 0)],
        ["127.0.0.1"],
        policy=PeerPolicy(allow_loopback=True),
        config=ServerConfig(realm="txturn"),
        transports={"udp"},
    )
    service.startService()
    report: list[str] = []
    threading.Thread(target=client, args=(service, args.pairs, report), daemon=True).start()
    reactor.run()
    sys.stdout.write("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
