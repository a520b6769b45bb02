"""
Relay datagrams through a TURN server with aioice's TURN client, to an echo
peer on loopback, and print what came back as JSON.

Usage: python aioice_echo.py HOST PORT USERNAME PASSWORD COUNT [udp|tcp [CAFILE]]

With CAFILE, the TCP connection is TLS, verified against that file.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

from aioice.turn import create_turn_endpoint


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


async def main() -> None:
    host, port, username, password, count = sys.argv[1:6]
    transport_name = sys.argv[6] if len(sys.argv) > 6 else "udp"
    tls = ssl.create_default_context(cafile=sys.argv[7]) if len(sys.argv) > 7 else None
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    peer = echo_transport.get_extra_info("sockname")
    turn, collector = await create_turn_endpoint(
        Collect, (host, int(port)), username, password, transport=transport_name, ssl=tls
    )
    relayed = turn.get_extra_info("sockname")
    sent = []
    for i in range(int(count)):
        payload = b"message %d " % i + b"x" * 80
        sent.append(payload)
        turn.sendto(payload, peer)
        await asyncio.sleep(0.005)
    for _ in range(200):
        if len(collector.received) >= len(sent):
            break
        await asyncio.sleep(0.01)
    turn.close()
    echo_transport.close()
    await asyncio.sleep(0.1)
    sys.stdout.write(
        json.dumps(
            {
                "relayed": list(relayed),
                "sent": len(sent),
                "received": len(collector.received),
                "intact": sorted(collector.received) == sorted(sent),
            }
        )
        + "\n"
    )


asyncio.run(main())
