# -*- test-case-name: tests.test_dtls -*-
"""
TURN over DTLS: one UDP socket, a pyOpenSSL DTLS session per client
address over memory BIOs.

Each session is the client channel of its allocation, like a TCP
connection: decrypted datagrams go to the core one by one, and answers are
encrypted and sent back.  A session must finish its handshake within
C{handshake_timeout} seconds, and the number of sessions still
handshaking is capped, so spoofed or abandoned handshakes leave nothing
behind; an established session with no allocation and no traffic for a
sweep interval is dropped.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from txturn.interfaces import Address, IClientChannel
from txturn.server import TurnServer
from txturn.sockets import datagram_sender

#: DTLS record content type of a handshake, the only thing that may open a
#: session.
_HANDSHAKE = 22
_LOST = (BlockingIOError, ConnectionRefusedError, InterruptedError)


@implementer(IClientChannel)
class DtlsSession:
    """
    One client's DTLS session.
    """

    transport_name = "dtls"
    log = Logger()

    def __init__(self, listener: "DtlsListener", address: Address) -> None:
        self._listener = listener
        self.address = address
        self.local_address = listener.local_address
        self.connection = SSL.Connection(listener.context, None)
        self.connection.set_accept_state()
        self.established = False
        self.closed = False
        self.packets = 0
        self._retransmit: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = listener.reactor.callLater(
            listener.handshake_timeout, self._handshake_timed_out
        )

    def datagram_received(self, data: bytes) -> None:
        self.packets += 1
        self.connection.bio_write(data)
        if not self.established:
            try:
                self.connection.do_handshake()
            except SSL.WantReadError:
                self._flush()
                self._schedule_retransmit()
                return
            except SSL.Error as e:
                self.log.info(
                    "DTLS handshake from {client} failed: {error}", client=self.address, error=e
                )
                # Send the alert OpenSSL wrote (protocol_version, say), so
                # the client gives up at once instead of retransmitting.
                self._flush()
                self.close()
                return
            self._established()
        while not self.closed:
            try:
                plain = self.connection.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.close()
                return
            except SSL.Error:
                self.close()
                return
            self._listener.server.datagram_received(self, plain, self.address)
        self._flush()

    def _established(self) -> None:
        self.established = True
        for call in (self._deadline, self._retransmit):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._retransmit = None
        self._listener.handshakes -= 1

    def _schedule_retransmit(self) -> None:
        timeout = self.connection.DTLSv1_get_timeout()
        if self._retransmit is not None and self._retransmit.active():
            self._retransmit.cancel()
        if timeout is not None:
            self._retransmit = self._listener.reactor.callLater(timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._retransmit = None
        try:
            self.connection.DTLSv1_handle_timeout()
        except SSL.Error:
            self.close()
            return
        self._flush()
        self._schedule_retransmit()

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        self.close()

    def _flush(self) -> None:
        while True:
            try:
                data = self.connection.bio_read(65536)
            except SSL.WantReadError:
                return
            self._listener.write(data, self.address)

    def send(self, data: bytes, address: Address) -> None:
        if self.closed or not self.established:
            return
        try:
            self.connection.send(data)
        except SSL.Error:
            return
        self._flush()

    def close(self) -> None:
        """
        Forget the session (and so its allocation); a close_notify goes
        out if the handshake had finished.
        """
        if self.closed:
            return
        self.closed = True
        for call in (self._deadline, self._retransmit):
            if call is not None and call.active():
                call.cancel()
        if not self.established:
            self._listener.handshakes -= 1
        else:
            try:
                self.connection.shutdown()
            except SSL.Error:
                pass
            self._flush()
        self._listener.forget(self)
        self._listener.server.connection_lost(self)


class DtlsListener(DatagramProtocol):
    """
    The UDP socket DTLS clients send to.

    @param context: a pyOpenSSL DTLS server context
        (L{txturn.tls.TlsCredentials.dtls_context}).
    """

    noisy = False

    def __init__(
        self,
        server: TurnServer,
        context: SSL.Context,
        reactor: IReactorTime,
        handshake_timeout: float = 20.0,
        max_handshakes: int = 1000,
        sweep_interval: float = 120.0,
    ) -> None:
        self.server = server
        self.context = context
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.sweep_interval = sweep_interval
        self.sessions: dict[Address, DtlsSession] = {}
        self.handshakes = 0
        self.local_address: Address = ("", 0)
        self._sendto: Any = None
        self._sweep: IDelayedCall | None = None
        self._seen: dict[Address, int] = {}

    def startProtocol(self) -> None:
        assert self.transport is not None
        host = self.transport.getHost()
        self.local_address = (host.host, host.port)
        self._sendto = datagram_sender(self.transport)
        self._sweep = self.reactor.callLater(self.sweep_interval, self._sweep_idle)

    def stopProtocol(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for session in list(self.sessions.values()):
            session.close()

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        session = self.sessions.get(addr)
        if session is None:
            if not data or data[0] != _HANDSHAKE or self.handshakes >= self.max_handshakes:
                return
            session = DtlsSession(self, addr)
            self.sessions[addr] = session
            self.handshakes += 1
        session.datagram_received(data)

    def write(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except (OSError, *_LOST):
            pass

    def forget(self, session: DtlsSession) -> None:
        if self.sessions.get(session.address) is session:
            del self.sessions[session.address]

    def _sweep_idle(self) -> None:
        """
        Close established sessions that have neither an allocation nor
        sent anything since the last sweep.  Counting packets, not reading
        a clock per packet, keeps the hot path free of time.
        """
        seen = {}
        for address, session in list(self.sessions.items()):
            if (
                session.established
                and self._seen.get(address) == session.packets
                and not self.server.has_allocation(session)
            ):
                session.close()
            else:
                seen[address] = session.packets
        self._seen = seen
        self._sweep = self.reactor.callLater(self.sweep_interval, self._sweep_idle)
