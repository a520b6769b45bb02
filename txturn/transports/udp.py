# -*- test-case-name: tests.test_service -*-
"""
The UDP listener: frames nothing (a datagram is a message) and hands every
datagram to the core with itself as the client channel.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from txturn.core.interfaces import Address, IClientChannel
from txturn.core.server import TurnServer
from txturn.fastpath.forwarding import pumped_descriptor
from txturn.transports.sockets import datagram_sender

_LOST = (BlockingIOError, ConnectionRefusedError, InterruptedError)


@implementer(IClientChannel)
class TurnDatagramProtocol(DatagramProtocol):
    """
    TURN over UDP on one listening socket.
    """

    transport_name = "udp"
    noisy = False
    stream = False

    def __init__(self, server: TurnServer) -> None:
        self._server = server
        self.local_address: Address = ("", 0)
        self._sendto: Any = None

    def startProtocol(self) -> None:
        assert self.transport is not None
        host = self.transport.getHost()
        self.local_address = (host.host, host.port)
        self._sendto = datagram_sender(self.transport)

    @property
    def forwarding_handle(self) -> int | None:
        """
        The descriptor the fast path knows this listener by, if it pumps it.
        """
        return pumped_descriptor(self.transport)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self._server.datagram_received(self, data, addr)

    def send(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except _LOST:
            pass
        except OSError:
            pass
