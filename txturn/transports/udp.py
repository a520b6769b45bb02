# -*- test-case-name: tests.test_service -*-
"""
The UDP listener: frames nothing (a datagram is a message) and hands every
datagram to the core with itself as the client channel.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from txturn.core.interfaces import Address, IClientChannel, host_port
from txturn.core.server import TurnServer
from txturn.fastpath.forwarding import pumped_descriptor
from txturn.transports.sockets import datagram_sender
from txturn.util.log_level import logger

_LOST = (BlockingIOError, ConnectionRefusedError, InterruptedError)


@implementer(IClientChannel)
class TurnDatagramProtocol(DatagramProtocol):
    """
    TURN over UDP on one listening socket.
    """

    transport_name = "udp"
    noisy = False
    stream = False
    log = logger("txturn.transports.udp")

    def __init__(self, server: TurnServer, trusted: Callable[[str], bool] | None = None) -> None:
        self._server = server
        self.local_address: Address = ("", 0)
        self._sendto: Any = None
        #: Balancers whose datagrams carry a PROXY v2 header
        #: (C{--proxy-protocol-from}), and the channel of their clients.
        self._trusted = trusted
        self._proxied: Any = None
        self._refusals: Any = None
        if trusted is not None:
            from txturn.transports.proxy import ProxiedDatagrams
            from txturn.util.rate import LogThrottle

            self._proxied = ProxiedDatagrams(self, server)
            self._refusals = LogThrottle(server.reactor)

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
        if self._trusted is not None and self._trusted(addr[0]):
            self._proxied.received(data, addr)
            return
        self._server.datagram_received(self, data, addr)

    def refused_datagram(self, balancer: Address, reason: str) -> None:
        """
        A trusted balancer's datagram without a usable header: dropped,
        and said at most once a minute per balancer.
        """
        self._refusals.emit(
            balancer[0],
            self.log.warn,
            "Dropped a datagram from balancer {balancer}: {reason}",
            balancer=host_port(balancer),
            reason=reason,
        )

    def send(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except _LOST:
            pass
        except OSError:
            pass
