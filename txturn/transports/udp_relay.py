# -*- test-case-name: tests.test_service -*-
"""
UDP relay sockets and the allocator that opens them in the configured port
range.

A relay writes to peers with the socket's own C{sendto} rather than
C{transport.write}: on the hot path that skips a layer of Python per
datagram, and the errors C{write} would turn into exceptions or log lines
(a full socket buffer, an ICMP error reported on the next send) are simply
a lost datagram for a relay, which UDP allows.

ICMP errors for datagrams sent to peers are read from the socket's error
queue (Linux C{IP_RECVERR}/C{IPV6_RECVERR}) by L{RelayPort} and handed to
the allocation, which tells the client (RFC 8656 section 11.5).
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
from typing import Any, Mapping, Sequence

from twisted.internet import base
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.core.forwarding import IForwarding
from txturn.core.interfaces import Address, IHandOverRelay, IRelayAllocator, RelayUnavailable
from txturn.fastpath.forwarding import PumpedPort, pumped_descriptor, pumping
from txturn.transports.port_pool import PortPool
from txturn.transports.sockets import (
    MAX_DATAGRAM,
    RELAY_RECEIVE_BUFFER,
    datagram_sender,
    enlarge_receive_buffer,
)
from txturn.util.log_level import logger
from txturn.wire.stun import FAMILY_IPV4, family_of

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3
#: The ICMP types RFC 8656 section 11.5 relays: destination unreachable and
#: time exceeded (v4); destination unreachable, packet too big and time
#: exceeded (v6).
_RELAYED_ICMP = {_ORIGIN_ICMP: {3, 11}, _ORIGIN_ICMP6: {1, 2, 3}}

_LOST = (BlockingIOError, ConnectionRefusedError, InterruptedError)
#: Errors that mean no socket can be had at all, whichever port is tried.
OUT_OF_DESCRIPTORS = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
_QUIET_SEND_ERRORS = frozenset(
    [
        errno.EMSGSIZE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPERM,
        errno.EACCES,
        errno.EINVAL,
        errno.ECONNREFUSED,
    ]
)


def raise_unavailable(error: int | None, host: str) -> None:
    """
    Turn a bind error that no other port would cure into
    L{RelayUnavailable} with what an operator should do about it; return
    for one that another port may not have (the port is taken).
    """
    if error in OUT_OF_DESCRIPTORS:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise RelayUnavailable(
            f"out of file descriptors (ulimit -n is {soft}; raise it, e.g. LimitNOFILE= "
            "in the systemd unit)"
        )
    if error == errno.EADDRNOTAVAIL:
        raise RelayUnavailable(f"--relay-ip {host} is not an address of this host")


def _discard(data: bytes, peer: Address) -> None:
    pass


def _discard_icmp(peer: Address, icmp_type: int, icmp_code: int, info: int) -> None:
    pass


@implementer(IHalfCloseableDescriptor)
class RelayPort(PumpedPort):
    """
    A UDP port that reads ICMP errors from the socket's error queue.

    With C{IP_RECVERR} set, a queued error wakes epoll with C{EPOLLERR},
    which the reactor takes for a hang-up; declaring the port
    half-closeable makes the reactor call L{readConnectionLost} instead of
    closing it, and there we drain the queue and start reading again.  A
    pending error also makes the next C{recvfrom} fail, which
    L{doRead} treats the same way.

    It also binds and closes without Twisted's "starting on" and "(UDP
    Port N Closed)" lines: two per allocation would drown the log.
    """

    def _bindSocket(self) -> None:
        # udp.Port._bindSocket without its "starting on" line: a relay
        # opens per allocation, and the allocation's own event says so.
        # A socket another worker handed over (udp.Port's own attribute
        # for adopted descriptors) is bound already.
        skt = self._preexistingSocket
        self._preexistingSocket = None
        try:
            if skt is None:
                skt = self.createInternetSocket()
                skt.bind((self.interface, self.port))
        except OSError as e:
            raise CannotListenError(  # type: ignore[no-untyped-call]
                self.interface, self.port, e
            ) from None
        enlarge_receive_buffer(skt, RELAY_RECEIVE_BUFFER)
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = self.socket.fileno  # type: ignore[method-assign]
        level, option = (
            (socket.IPPROTO_IPV6, IPV6_RECVERR)
            if self.addressFamily == socket.AF_INET6
            else (socket.IPPROTO_IP, IP_RECVERR)
        )
        try:
            self.socket.setsockopt(level, option, 1)
        except OSError:
            pass  # not Linux: no ICMP reports, relaying is unaffected

    def connectionLost(self, reason: Failure | None = None) -> None:
        # udp.Port.connectionLost without its "(UDP Port N Closed)" line.
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)  # type: ignore[no-untyped-call]
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d

    def doRead(self) -> None:
        try:
            super().doRead()
        except OSError:
            self.drain_errors()

    def read_failed(self, error: OSError) -> None:
        # The fast path's read found an error queued: ICMP.
        self.drain_errors()

    def readConnectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.drain_errors()
        self.reactor.addReader(self)

    def writeConnectionLost(self, reason: Failure) -> None:
        pass

    def drain_errors(self) -> None:
        """
        Read every queued error; hand ICMP errors about peers to the relay.
        """
        while self.connected:
            try:
                _, ancillary, _, destination = self.socket.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except OSError:
                return
            for _level, kind, data in ancillary:
                if kind not in (IP_RECVERR, IPV6_RECVERR) or len(data) < _SOCK_EXTENDED_ERR.size:
                    continue
                _, origin, icmp_type, icmp_code, _, info, _ = _SOCK_EXTENDED_ERR.unpack_from(data)
                if icmp_type in _RELAYED_ICMP.get(origin, ()) and destination:
                    self.protocol.icmp_received(
                        (destination[0], destination[1]), icmp_type, icmp_code, info
                    )


@implementer(IHandOverRelay)
class UdpRelay(DatagramProtocol):
    """
    One relay socket: datagrams from peers go to C{receiver}, ICMP errors
    to C{icmp_receiver}, and C{send} writes straight to the socket.
    """

    log = logger()
    #: The core logs each allocation; two lines per relay port from
    #: Twisted as well would only be noise.
    noisy = False

    def __init__(self, allocator: "UdpRelayAllocator", host: str, public: str) -> None:
        self._allocator = allocator
        self._host = host
        self._public = public
        self.address: Address = (host, 0)
        self.advertised: Address = (public, 0)
        self.receiver = _discard
        self.icmp_receiver = _discard_icmp
        self._sendto: Any = None
        self.dont_fragment = False

    def startProtocol(self) -> None:
        assert self.transport is not None
        port = self.transport.getHost().port
        self.address = (self._host, port)
        self.advertised = (self._public, port)
        self._sendto = datagram_sender(self.transport)

    @property
    def forwarding_handle(self) -> int | None:
        """
        The descriptor the fast path knows this relay by, if it pumps it.
        """
        return pumped_descriptor(self.transport)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self.receiver(data, addr)

    def icmp_received(self, peer: Address, icmp_type: int, icmp_code: int, info: int) -> None:
        self.icmp_receiver(peer, icmp_type, icmp_code, info)

    def send(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except _LOST:
            pass
        except OSError as e:
            # EMSGSIZE with DF set, unreachable networks...: the datagram is
            # lost, as it would be one hop later.
            if e.errno not in _QUIET_SEND_ERRORS:
                self.log.failure("Relay send failed")

    def set_dont_fragment(self, enabled: bool) -> None:
        self.dont_fragment = enabled
        sock = getattr(self.transport, "socket", None)
        if sock is None or family_of(self._host) != FAMILY_IPV4:
            return
        mode = 2 if enabled else 0  # IP_PMTUDISC_DO / IP_PMTUDISC_DONT
        try:
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_MTU_DISCOVER", 10), mode)
        except OSError:
            pass

    def hand_over(self) -> int:
        """
        A duplicate of this relay's socket, for another worker, and this
        relay closed here (its port stays bound by the duplicate).
        """
        assert self.transport is not None
        descriptor = os.dup(self.transport.socket.fileno())  # type: ignore[attr-defined]
        self.close()
        return descriptor

    def close(self) -> object:
        self.receiver = _discard
        self.icmp_receiver = _discard_icmp
        self._allocator.release(self.address)
        if self.transport is None:
            return None
        return self.transport.stopListening()


@implementer(IRelayAllocator)
class UdpRelayAllocator:
    """
    Opens relay sockets in a L{PortPool}.
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        addresses: Sequence[str],
        min_port: int = 49152,
        max_port: int = 65535,
        attempts: int = 64,
        external: Mapping[str, str] | None = None,
        forwarding: IForwarding | None = None,
    ) -> None:
        self._reactor = reactor
        self._forwarding = forwarding
        self.pool = PortPool(addresses, min_port, max_port, external, attempts)
        self.families = self.pool.families
        self.min_port = min_port
        self.max_port = max_port

    def release(self, address: Address) -> None:
        self.pool.release(address)

    def _bind(self, host: str, port: int) -> UdpRelay | None:
        relay = UdpRelay(self, host, self.pool.public(host))
        listener = RelayPort(  # type: ignore[no-untyped-call]
            port, relay, interface=host, maxPacketSize=MAX_DATAGRAM, reactor=self._reactor
        )
        pumping(listener, self._forwarding, from_peers=True)
        try:
            listener.startListening()  # type: ignore[no-untyped-call]
        except CannotListenError as e:
            raise_unavailable(getattr(e.socketError, "errno", None), host)
            return None
        self.pool.take(host, port)
        return relay

    def adopt(self, descriptor: int) -> UdpRelay:
        """
        A relay on the bound socket C{descriptor}, which another worker
        opened (a reservation it held); the caller closes C{descriptor}.
        """
        with socket.socket(fileno=os.dup(descriptor)) as sock:
            host, family = sock.getsockname()[0], sock.family
        relay = UdpRelay(self, host, self.pool.public(host))
        listener = RelayPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
            self._reactor, descriptor, family, relay, maxPacketSize=MAX_DATAGRAM
        )
        pumping(listener, self._forwarding, from_peers=True)
        listener.startListening()
        return relay

    def open(self, family: int, even: bool, reserve_next: bool) -> tuple[UdpRelay, UdpRelay | None]:
        host = self.pool.host(family, 2 if reserve_next else 1)
        for port in self.pool.candidates(host, even or reserve_next):
            relay = self._bind(host, port)
            if relay is None:
                continue
            if not reserve_next:
                return relay, None
            reserved = self._bind(host, port + 1)
            if reserved is not None:
                return relay, reserved
            relay.close()
        raise RelayUnavailable(self.pool.exhausted(host))
