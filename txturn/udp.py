# -*- test-case-name: tests.test_service -*-
"""
The UDP listener: frames nothing (a datagram is a message) and hands every
datagram to the core with itself as the client channel.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from txturn.interfaces import Address, IClientChannel
from txturn.relay import MAX_DATAGRAM
from txturn.server import TurnServer

_LOST = (BlockingIOError, ConnectionRefusedError, InterruptedError)


@implementer(IClientChannel)
class TurnDatagramProtocol(DatagramProtocol):
    """
    TURN over UDP on one listening socket.
    """

    transport_name = "udp"

    def __init__(self, server: TurnServer) -> None:
        self._server = server
        self.local_address: Address = ("", 0)
        self._sendto: Any = None

    def startProtocol(self) -> None:
        assert self.transport is not None
        host = self.transport.getHost()
        self.local_address = (host.host, host.port)
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if sock is not None else self.transport.write

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self._server.datagram_received(self, data, addr)

    def send(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except _LOST:
            pass
        except OSError:
            pass


def bind_udp(reactor: IReactorSocket, host: str, port: int, protocol: DatagramProtocol) -> Any:
    """
    Bind a UDP socket ourselves and adopt it, so an IPv6 listener can be
    C{IPV6_V6ONLY} and sit beside an IPv4 one on the same port (Twisted's
    C{listenUDP} cannot set socket options before binding).

    @raise OSError: if the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        return reactor.adoptDatagramPort(sock.fileno(), family, protocol, MAX_DATAGRAM)
    finally:
        sock.close()
