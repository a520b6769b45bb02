# -*- test-case-name: tests.test_relay -*-
"""
UDP relay sockets and the allocator that opens them in the configured port
range.

A relay writes to peers with the socket's own C{sendto} rather than
C{transport.write}: on the hot path that skips a layer of Python per
datagram, and the errors C{write} would turn into exceptions or log lines
(a full socket buffer, an ICMP port unreachable reported on the next send)
are simply a lost datagram for a relay, which UDP allows.
"""

from __future__ import annotations

import errno
import random
import socket
from typing import Any, Iterable, Sequence

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from txturn.interfaces import Address, IRelay, IRelayAllocator, RelayUnavailable
from txturn.stun import FAMILY_IPV4, family_of

#: Twisted reads 8192 bytes per datagram unless told otherwise; a relay
#: must carry anything UDP can.
MAX_DATAGRAM = 65535

_LOST = (BlockingIOError, ConnectionRefusedError, InterruptedError)


def _discard(data: bytes, peer: Address) -> None:
    pass


@implementer(IRelay)
class UdpRelay(DatagramProtocol):
    """
    One relay socket: datagrams from peers go to C{receiver}, C{send}
    writes straight to the socket.
    """

    log = Logger()
    #: The core logs each allocation; two lines per relay port from
    #: Twisted as well would only be noise.
    noisy = False

    def __init__(self, allocator: "UdpRelayAllocator", host: str) -> None:
        self._allocator = allocator
        self._host = host
        self.address: Address = (host, 0)
        self.receiver = _discard
        self._sendto: Any = None
        self.dont_fragment = False

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.address = (self._host, self.transport.getHost().port)
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if sock is not None else self._write

    def _write(self, data: bytes, address: Address) -> None:
        assert self.transport is not None
        self.transport.write(data, address)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self.receiver(data, addr)

    def send(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except _LOST:
            pass
        except OSError as e:
            # EMSGSIZE with DF set, EHOSTUNREACH, ENETUNREACH...: the
            # datagram is lost, as it would be one hop later.
            if e.errno not in (
                errno.EMSGSIZE,
                errno.EHOSTUNREACH,
                errno.ENETUNREACH,
                errno.EPERM,
                errno.EACCES,
                errno.EINVAL,
            ):
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

    def close(self) -> object:
        self.receiver = _discard
        self._allocator.release(self.address)
        if self.transport is None:
            return None
        return self.transport.stopListening()


@implementer(IRelayAllocator)
class UdpRelayAllocator:
    """
    Opens relay sockets on the relay addresses, in [min_port, max_port].

    Ports are tried at random (RFC 8656 asks for unpredictable relayed
    ports); the set of ports in use is kept so an exhausted range is
    known at once and answered 508 without a scan.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUDP,
        addresses: Sequence[str],
        min_port: int = 49152,
        max_port: int = 65535,
        attempts: int = 64,
    ) -> None:
        self._reactor = reactor
        self._addresses: dict[int, list[str]] = {}
        for host in addresses:
            self._addresses.setdefault(family_of(host), []).append(host)
        self.families = frozenset(self._addresses)
        self.min_port = min_port
        self.max_port = max_port
        self._attempts = attempts
        self._in_use: dict[str, set[int]] = {h: set() for h in addresses}
        self._random = random.SystemRandom()

    def release(self, address: Address) -> None:
        self._in_use.get(address[0], set()).discard(address[1])

    def _candidates(self, host: str, even: bool) -> Iterable[int]:
        size = self.max_port - self.min_port + 1
        for _ in range(self._attempts):
            port = self.min_port + self._random.randrange(size)
            if even:
                port &= ~1
                if port < self.min_port or port + 1 > self.max_port:
                    continue
            yield port

    def _bind(self, host: str, port: int) -> UdpRelay | None:
        if port in self._in_use[host]:
            return None
        relay = UdpRelay(self, host)
        try:
            self._reactor.listenUDP(port, relay, interface=host, maxPacketSize=MAX_DATAGRAM)
        except CannotListenError:
            return None
        self._in_use[host].add(port)
        return relay

    def open(self, family: int, even: bool, reserve_next: bool) -> tuple[UdpRelay, UdpRelay | None]:
        hosts = self._addresses.get(family)
        if not hosts:
            raise RelayUnavailable("no relay address of that family", family_unsupported=True)
        host = hosts[self._random.randrange(len(hosts))]
        if len(self._in_use[host]) + (2 if reserve_next else 1) > (
            self.max_port - self.min_port + 1
        ):
            raise RelayUnavailable("relay port range exhausted")
        for port in self._candidates(host, even or reserve_next):
            relay = self._bind(host, port)
            if relay is None:
                continue
            if not reserve_next:
                return relay, None
            reserved = self._bind(host, port + 1)
            if reserved is not None:
                return relay, reserved
            relay.close()
        raise RelayUnavailable("relay port range exhausted")
