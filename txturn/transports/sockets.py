# -*- test-case-name: tests.test_service -*-
"""
Binding listening sockets ourselves and handing them to the reactor.

Twisted's C{listenUDP}/C{listenTCP} cannot set socket options before
binding, and an IPv6 wildcard socket is dual-stack by default on Linux:
IPv4 clients would show up as C{::ffff:a.b.c.d} and an IPv4 socket on the
same port could not be bound.  Binding IPv6 listeners C{IPV6_V6ONLY} beside
IPv4 ones keeps every IPv4 client IPv4 everywhere (responses, policy,
logs).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import DatagramProtocol

#: Datagram size read from listeners and relays: anything UDP can carry
#: (Twisted's default is 8192).
MAX_DATAGRAM = 65535

#: Receive buffer for UDP listeners: a burst of a few thousand datagrams
#: (a flood, or many clients at once) must not push out a client's
#: packets before the reactor gets to them.  Forced past net.core.rmem_max
#: where the process may (root), else as large as the system allows.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


#: Receive buffer for relay sockets: a peer's burst (echoes of a client's
#: burst, say) must fit while the server is busy with other clients; at
#: the default 208 KiB a DTLS client's burst of a few hundred echoes lost
#: packets on the relay.  Memory is only charged as datagrams wait, and
#: the kernel's udp_mem bounds the total.
RELAY_RECEIVE_BUFFER = 1024 * 1024


def enlarge_receive_buffer(sock: socket.socket, size: int = UDP_RECEIVE_BUFFER) -> None:
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:
        pass


def datagram_sender(transport: Any) -> Any:
    """
    The fastest way to send a datagram on C{transport}: its socket's own
    C{sendto} (one C call per datagram on the hot path), or
    C{transport.write} for transports without a socket (test fakes).
    The caller handles C{OSError}: for a relay, a lost datagram.
    """
    sock = getattr(transport, "socket", None)
    return sock.sendto if sock is not None else transport.write


def bound_socket(host: str, port: int, kind: int, reuse_port: bool = False) -> socket.socket:
    """
    A non-blocking socket of C{kind} bound to C{(host, port)}; with
    C{reuse_port}, one of several sharing that address (a TCP relay's
    listener and its outgoing connections).

    @raise OSError: if it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket(
    host: str, port: int, datagram: bool, reuse_port: bool = False
) -> socket.socket:
    """
    A listener's socket, bound (UDP, with a deep receive buffer) or
    listening (TCP); with C{reuse_port}, one of a C{SO_REUSEPORT} group,
    as the supervisor of C{--workers N} binds one per worker.
    """
    if datagram:
        sock = bound_socket(host, port, socket.SOCK_DGRAM, reuse_port)
        enlarge_receive_buffer(sock)
        return sock
    sock = bound_socket(host, port, socket.SOCK_STREAM, reuse_port)
    # A deep backlog: under a connection flood, legitimate clients wait in
    # the queue (refused ones leave it at once) instead of losing their
    # SYNs and retrying a second later.
    sock.listen(1024)
    return sock


def adopt_listener(reactor: Any, sock: socket.socket, handler: Any, port_type: Any = None) -> Any:
    """
    Give a listening socket to the reactor with its protocol (UDP) or
    factory (TCP); returns the listening port.  The reactor holds its own
    duplicate of the descriptor: the caller closes C{sock} when it wants.
    A UDP C{port_type} (a C{udp.Port} subclass) reads it instead of the
    reactor's own.
    """
    if sock.type == socket.SOCK_DGRAM:
        if port_type is not None:
            port = port_type._fromListeningDescriptor(
                reactor, sock.fileno(), sock.family, handler, maxPacketSize=MAX_DATAGRAM
            )
            port.startListening()
            return port
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, handler, MAX_DATAGRAM)
    return reactor.adoptStreamPort(sock.fileno(), sock.family, handler)


def listen_udp(
    reactor: Any, host: str, port: int, protocol: DatagramProtocol, port_type: Any = None
) -> Any:
    """
    Bind a UDP listener and adopt it; returns the listening port.
    """
    with listening_socket(host, port, datagram=True) as sock:
        return adopt_listener(reactor, sock, protocol, port_type)


def listen_tcp(reactor: Any, host: str, port: int, factory: IProtocolFactory) -> Any:
    """
    Bind a TCP listener and adopt it; returns the listening port.
    """
    with listening_socket(host, port, datagram=False) as sock:
        return adopt_listener(reactor, sock, factory)
