# -*- test-case-name: tests.test_proxy_protocol -*-
"""
PROXY protocol on TCP, TLS and UDP listeners (C{--proxy-protocol-from}): a
connection from a trusted balancer must start with a PROXY header (v1 or
v2; for TLS, before the handshake), and the client it names is who the
connection is from, everywhere: admission and per-source limits,
XOR-MAPPED-ADDRESS, the allocation's 5-tuple, logs, usage records.

 - From a trusted source, the header is read first, within
   C{deadline} seconds and L{MAX_HEADER} bytes; only then is the
   listener's own factory asked for a protocol, with the client's
   address, so its admission counts the client, not the balancer.  No
   header, or a malformed one: the connection is closed.
 - From anyone else, nothing changes: a PROXY header there is just bytes
   that are not STUN, and the connection is closed as any other garbage.
 - A version 2 LOCAL header (the balancer's own health check) keeps the
   balancer's addresses.
 - On UDP, each datagram from a trusted balancer must start with a
   version 2 header for a datagram (L{ProxiedDatagrams}).
"""

from __future__ import annotations

import collections
import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.core.interfaces import Address, IClientChannel
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle
from txturn.wire.proxy_header import MAX_HEADER, ProxyHeaderError, parse


def trusted_in(networks: Sequence[Any]) -> Callable[[str], bool]:
    """
    Whether a connection's source is one of C{networks}: an IPv4 source of
    a dual-stack listener (C{::ffff:a.b.c.d}) counts as the IPv4 address.
    """
    ranges = list(networks)

    def trusted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in ranges)

    return trusted


def _tcp_address(host: str, port: int) -> IAddress:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ProxiedConnection(ProtocolWrapper):
    """
    A trusted balancer's connection: reads the PROXY header, then starts
    the listener's protocol with the client's address and stands between
    it and the transport, answering C{getPeer} and C{getHost} with the
    addresses the header named.
    """

    def __init__(self, factory: ProxyProtocolFactory, real: IAddress) -> None:
        super().__init__(factory, Protocol())  # replaced once the header is read
        self._proxy_factory = factory
        self._real = real
        #: Whether the listener's protocol runs (the header has been read).
        self._started = False
        #: The balancer's TCP connection.
        self._connection: Any = None
        self._buffer = b""
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # The listener's protocol starts once the header says for whom.
        self._connection = transport
        Protocol.makeConnection(self, transport)  # type: ignore[no-untyped-call]
        self.factory.registerProtocol(self)
        self._deadline = self._proxy_factory.reactor.callLater(
            self._proxy_factory.deadline, self._too_late
        )

    def _too_late(self) -> None:
        self._deadline = None
        self._refuse("no PROXY header in time")

    def _refuse(self, reason: str) -> None:
        self._proxy_factory.refused(self._real, reason)
        self._connection.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            header = parse(self._buffer)
        except ProxyHeaderError as e:
            self._refuse(str(e))
            return
        if header is None:
            if len(self._buffer) > MAX_HEADER:
                self._refuse("PROXY header too long")
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        rest, self._buffer = self._buffer[header.length :], b""
        if header.source is not None and header.destination is not None:
            self._peer = _tcp_address(*header.source)
            self._host = _tcp_address(*header.destination)
        protocol = self._proxy_factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            # Not admitted (the client's own limits): closed, as Twisted
            # closes a connection whose factory builds nothing.
            self._connection.loseConnection()
            return
        self.wrappedProtocol = protocol
        self._started = True
        protocol.makeConnection(self)
        if rest:
            protocol.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._started:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        else:
            self.factory.unregisterProtocol(self)

    def getPeer(self) -> IAddress:
        return self._peer if self._peer is not None else self._connection.getPeer()

    def getHost(self) -> IAddress:
        return self._host if self._host is not None else self._connection.getHost()

    # The stream protocol sizes its transport's buffer (--max-tcp-buffer):
    # that is the real transport's.
    @property
    def bufferSize(self) -> int:
        return int(self._connection.bufferSize)

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        self._connection.bufferSize = size


if TYPE_CHECKING:
    _Wrapping = WrappingFactory[ProxiedConnection]
else:  # generic only in newer Twisted
    _Wrapping = WrappingFactory


class ProxyProtocolFactory(_Wrapping):
    """
    A TCP or TLS listener's factory behind trusted balancers: connections
    from C{trusted} sources are L{ProxiedConnection}s; the others go to
    the listener's factory as they are.
    """

    noisy = False
    protocol = ProxiedConnection
    log = logger("txturn.transports.proxy")

    def __init__(
        self,
        inner: Factory,
        trusted: Callable[[str], bool],
        reactor: IReactorTime,
        deadline: float = 10.0,
    ) -> None:
        super().__init__(inner)  # type: ignore[no-untyped-call]
        self.trusted = trusted
        self.reactor = reactor
        self.deadline = deadline
        self._throttle = LogThrottle(reactor)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = getattr(addr, "host", "")
        if not self.trusted(host):
            return self.wrappedFactory.buildProtocol(addr)
        assert addr is not None
        return ProxiedConnection(self, addr)

    def refused(self, real: IAddress, reason: str) -> None:
        host, port = getattr(real, "host", "?"), getattr(real, "port", 0)
        self._throttle.emit(
            host,
            self.log.warn,
            "Closed a connection from balancer {balancer}: {reason}",
            balancer=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            reason=reason,
        )


@implementer(IClientChannel)
class ProxiedDatagrams:
    """
    The clients a trusted UDP balancer forwards, each datagram prefixed
    with a PROXY v2 header naming its client: one client channel for all
    of them, beside the listener's own.

    The core sees the clients' own addresses; what it sends a client goes
    to the balancer's address the client's last datagram came through,
    unprefixed, as balancers that prefix datagrams expect.  Those
    addresses are kept for at most L{MAX_FLOWS} clients (least recently
    heard first out): past that, a client's answers wait for its next
    datagram.  The fast path cannot send for these clients (it would send
    to the client, not the balancer), so their allocations take the
    Python path.
    """

    transport_name = "udp"
    stream = False
    forwarding_handle = None
    #: Most clients whose balancer is remembered.
    MAX_FLOWS = 65536
    log = logger("txturn.transports.proxy")

    def __init__(self, listener: Any, server: Any) -> None:
        self._listener = listener
        self._server = server
        self._flows: collections.OrderedDict[Address, Address] = collections.OrderedDict()

    @property
    def local_address(self) -> Address:
        address: Address = self._listener.local_address
        return address

    def received(self, data: bytes, balancer: Address) -> None:
        """
        A datagram from a trusted balancer: its header, then the client's
        datagram.  No header, a malformed one, or one that is not for a
        datagram: dropped (at most a line a minute per balancer).
        """
        try:
            header = parse(data)
        except ProxyHeaderError as e:
            self._drop(balancer, str(e))
            return
        if header is None or not header.datagram or header.source is None:
            self._drop(balancer, "no PROXY v2 header for a datagram")
            return
        client = (_canonical(header.source[0]), header.source[1])
        flows = self._flows
        flows[client] = balancer
        flows.move_to_end(client)
        if len(flows) > self.MAX_FLOWS:
            flows.popitem(last=False)
        self._server.datagram_received(self, data[header.length :], client)

    def _drop(self, balancer: Address, reason: str) -> None:
        self._listener.refused_datagram(balancer, reason)

    def send(self, data: bytes, address: Address) -> None:
        balancer = self._flows.get(address)
        if balancer is not None:
            self._listener.send(data, balancer)


def _canonical(host: str) -> str:
    return str(ipaddress.ip_address(host))
