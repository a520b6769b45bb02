# -*- test-case-name: tests.test_dtls_guard,tests.test_framing -*-
"""
TURN over DTLS: one UDP socket, a pyOpenSSL DTLS session per client
address over memory BIOs.

Each session is the client channel of its allocation, like a TCP
connection: decrypted datagrams go to the core one by one, and answers are
encrypted and sent back.

A DTLS server on a public address is a reflector and a memory sink unless
it is careful, so no state exists for a sender until it has proven its
address:

- A ClientHello without a valid cookie gets one HelloVerifyRequest (44
  bytes, smaller than the hello) and nothing else: OpenSSL's
  C{DTLSv1_listen}, stateless, with cookies that are an HMAC of the
  client's address under a secret that rotates every C{cookie_lifetime}
  seconds (L{CookieJar}).
- Only a hello that comes back with its cookie opens a session, and only
  within the caps: handshakes in progress and sessions per source
  address (past them the hello is dropped, and the refusal logged once a
  minute), and in all (where the oldest handshake, or the oldest session
  holding no allocation, makes room for the newcomer).
- A handshake must finish within C{handshake_timeout}; an established
  session that holds no allocation is closed after C{session_timeout},
  however much it talks.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from txturn.core.interfaces import Address, IClientChannel, host_port
from txturn.core.server import TurnServer
from txturn.fastpath.forwarding import client_key, user_space
from txturn.transports.sockets import datagram_sender
from txturn.util.counting import Counted, family
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle, source_of

_REFUSED = family("dtls_refused", "DTLS handshakes refused at a limit, by which.", "limit")
_CLOSED = family("dtls_closed", "DTLS sessions closed to make room or idle, by reason.", "reason")
_VERIFY = family(
    "dtls_hello_verify_requests",
    "DTLS cookies sent (HelloVerifyRequest): no state before a client returns one.",
)


class DtlsCounter(Counted):
    """
    What a DTLS listener refused, closed or answered statelessly.
    """

    HELLO_VERIFY_REQUESTS = (_VERIFY, None)
    REFUSED_HANDSHAKES_FROM_ONE_ADDRESS = (_REFUSED, "handshakes_per_address")
    REFUSED_SESSIONS_FROM_ONE_ADDRESS = (_REFUSED, "sessions_per_address")
    REFUSED_SESSIONS = (_REFUSED, "sessions")
    EVICTED_HANDSHAKES = (_CLOSED, "evicted_handshake")
    EVICTED_SESSIONS = (_CLOSED, "evicted_session")
    CLOSED_WITHOUT_ALLOCATION = (_CLOSED, "without_allocation")


#: What the log says each refusal was: too many...
_REFUSALS = {
    DtlsCounter.REFUSED_HANDSHAKES_FROM_ONE_ADDRESS: "handshakes in progress from one address",
    DtlsCounter.REFUSED_SESSIONS_FROM_ONE_ADDRESS: "sessions from one address",
    DtlsCounter.REFUSED_SESSIONS: "sessions",
}

#: DTLS record content type of a handshake, the only thing that may open a
#: session.
_HANDSHAKE = 22
_COOKIE_BYTES = 16


class CookieJar:
    """
    Stateless HelloVerifyRequest cookies (RFC 6347 section 4.2.1): an HMAC
    of the client's address under a secret and the current epoch of
    C{lifetime} seconds.  A cookie verifies in its own epoch and the next,
    so it is good for between one and two lifetimes, and a captured
    cookie is useless from any other address.
    """

    def __init__(self, clock: IReactorTime, lifetime: float = 60.0) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self._secret = secrets.token_bytes(32)

    def _cookie(self, address: Address, epoch: int) -> bytes:
        message = f"{epoch}|{address[0]}|{address[1]}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_COOKIE_BYTES]

    def _epoch(self) -> int:
        return int(self._clock.seconds() // self.lifetime)

    def issue(self, address: Address) -> bytes:
        return self._cookie(address, self._epoch())

    def verify(self, address: Address, cookie: bytes) -> bool:
        epoch = self._epoch()
        return any(
            hmac.compare_digest(self._cookie(address, e), cookie) for e in (epoch, epoch - 1)
        )


#: A DTLS record's header: type, version, epoch, sequence number, length.
_RECORD_HEADER = 13
#: Bytes asked of the memory BIO at a time: less back means it is empty.
_BIO_READ = 65536


@implementer(IClientChannel)
class DtlsSession:
    """
    One client's DTLS session, from the hello that brought back its
    cookie.
    """

    transport_name = "dtls"
    stream = False
    #: The key the fast path knows this session by (negative, apart from
    #: every descriptor), when it has one: decrypted messages are matched
    #: in C, and what peers send comes back through L{relayed}.
    forwarding_handle: int | None = None
    log = logger()

    def __init__(
        self, listener: "DtlsListener", address: Address, connection: SSL.Connection
    ) -> None:
        self._listener = listener
        self.address = address
        self.local_address = listener.local_address
        self.connection = connection
        self.established = False
        self.closed = False
        #: When the session was last seen holding no allocation.
        self.unallocated_since: float | None = None
        self._retransmit: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = listener.reactor.callLater(
            listener.handshake_timeout, self._handshake_timed_out
        )
        self._forward = listener.forward_datagram
        if self._forward is not None:
            self.forwarding_handle = client_key()

    def datagram_received(self, data: bytes) -> None:
        self.connection.bio_write(data)
        # One record filling the datagram (every record, once the
        # handshake is done, from the clients we know): one read takes
        # it, without a second read raising WantReadError to say so.
        self.progress(single=len(data) == _RECORD_HEADER + int.from_bytes(data[11:13], "big"))

    def progress(self, single: bool = False) -> None:
        """
        Move the handshake on, or read and hand on what was decrypted
        (once, when the datagram held C{single} record).
        """
        if not self.established:
            try:
                self.connection.do_handshake()
            except SSL.WantReadError:
                self._flush()
                self._schedule_retransmit()
                return
            except SSL.Error as e:
                self.log.info(
                    "DTLS handshake from {client} failed: {error}",
                    client=host_port(self.address),
                    error=e,
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
            except SSL.Error:
                self.close()
                return
            forward = self._forward
            if forward is None or not forward(self.forwarding_handle, self.address, plain):
                self._listener.server.datagram_received(self, plain, self.address)
            if single:
                break
        self._flush()

    def _established(self) -> None:
        self.established = True
        self.unallocated_since = self._listener.reactor.seconds()
        self._cancel_timers()
        self._listener.handshake_done(self)

    def _cancel_timers(self) -> None:
        for call in (self._deadline, self._retransmit):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._retransmit = None

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
                data = self.connection.bio_read(_BIO_READ)
            except SSL.WantReadError:
                return
            self._listener.write(data, self.address)
            if len(data) < _BIO_READ:
                return  # the memory BIO is empty: no WantReadError to raise

    def send(self, data: bytes, address: Address) -> None:
        if self.closed or not self.established:
            return
        try:
            self.connection.send(data)
        except SSL.Error:
            return
        self._flush()

    def relayed(self, data: bytes, frames: int) -> None:
        """
        One message from a peer the fast path framed for this client:
        sent as L{send} sends one.
        """
        self.send(data, self.address)

    def close(self) -> None:
        """
        Forget the session (and so its allocation); a close_notify goes
        out if the handshake had finished.
        """
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        if self.established:
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

    @param context: a pyOpenSSL DTLS server context not yet used for any
        connection (L{txturn.transports.tls.TlsCredentials.dtls_context}); the
        listener installs its cookie callbacks on it.
    @param max_handshakes: handshakes in progress, in all.
    @param max_handshakes_per_source: the same per client IP address.
    @param max_sessions: sessions (handshaking or established), in all.
    @param max_sessions_per_source: the same per client IP address.
    @param session_timeout: how long an established session may hold no
        allocation before it is closed.
    @param sweep_interval: how often sessions are checked for that.
    """

    noisy = False
    log = logger()
    #: Sessions looked at, oldest first, to find one to evict.
    EVICTION_SCAN = 64

    def __init__(
        self,
        server: TurnServer,
        context: SSL.Context,
        reactor: IReactorTime,
        handshake_timeout: float = 10.0,
        max_handshakes: int = 500,
        max_handshakes_per_source: int = 20,
        max_sessions: int = 2000,
        max_sessions_per_source: int = 100,
        session_timeout: float = 60.0,
        sweep_interval: float = 10.0,
        cookie_lifetime: float = 60.0,
        forwarding: object = None,
    ) -> None:
        self.server = server
        #: The fast path's C{forward_datagram}, when there is one.
        self.forward_datagram: Callable[[int | None, Address, bytes], bool] | None = (
            compiled.forwarder.forward_datagram
            if (compiled := user_space(forwarding)) is not None
            else None
        )
        self.context = context
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_source = max_handshakes_per_source
        self.max_sessions = max_sessions
        self.max_sessions_per_source = max_sessions_per_source
        self.session_timeout = session_timeout
        self.sweep_interval = sweep_interval
        self.cookies = CookieJar(reactor, cookie_lifetime)
        context.set_cookie_generate_callback(self._generate_cookie)
        context.set_cookie_verify_callback(self._verify_cookie)
        self.sessions: dict[Address, DtlsSession] = {}
        #: Sessions still handshaking, oldest first.
        self._handshaking: dict[Address, DtlsSession] = {}
        self._handshakes_from: collections.Counter[str] = collections.Counter()
        self._sessions_from: collections.Counter[str] = collections.Counter()
        #: What was refused or closed (exported by the metrics).
        self.counters: collections.Counter[DtlsCounter] = collections.Counter()
        self.local_address: Address = ("", 0)
        self._sendto: Any = None
        self._sweep: IDelayedCall | None = None
        self._door: SSL.Connection | None = None
        self._refusals = LogThrottle(reactor)

    def set_context(self, context: SSL.Context) -> None:
        """
        Handshakes from now on use C{context} (a new certificate, after a
        reload); sessions already established keep theirs.
        """
        context.set_cookie_generate_callback(self._generate_cookie)
        context.set_cookie_verify_callback(self._verify_cookie)
        self.context = context
        self._door = None

    # -- cookies -------------------------------------------------------------

    def _generate_cookie(self, connection: SSL.Connection) -> bytes:
        return self.cookies.issue(connection.get_app_data())

    def _verify_cookie(self, connection: SSL.Connection, cookie: bytes) -> bool:
        return self.cookies.verify(connection.get_app_data(), cookie)

    # -- the socket ------------------------------------------------------------

    def startProtocol(self) -> None:
        assert self.transport is not None
        host = self.transport.getHost()
        self.local_address = (host.host, host.port)
        self._sendto = datagram_sender(self.transport)
        self._sweep = self.reactor.callLater(self.sweep_interval, self._sweep_sessions)

    def stopProtocol(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for session in list(self.sessions.values()):
            session.close()

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        if not data:
            # UDP allows empty datagrams; OpenSSL's BIO refuses them.
            return
        session = self.sessions.get(addr)
        if session is not None:
            session.datagram_received(data)
        elif data[0] == _HANDSHAKE:
            self._hello(data, addr)

    def write(self, data: bytes, address: Address) -> None:
        try:
            self._sendto(data, address)
        except OSError:
            pass

    # -- admission ----------------------------------------------------------------

    def _hello(self, data: bytes, address: Address) -> None:
        """
        A handshake record from an address with no session: answered
        statelessly with a HelloVerifyRequest until its cookie comes back.
        """
        door = self._door
        if door is None:
            door = self._door = SSL.Connection(self.context, None)
            door.set_accept_state()
        door.set_app_data(address)
        door.bio_write(data)
        try:
            door.DTLSv1_listen()
        except SSL.WantReadError:
            # No valid cookie: OpenSSL wrote a HelloVerifyRequest (or, for
            # junk, nothing).
            self._drain(door, address)
            return
        except SSL.Error:
            self._door = None
            return
        # The cookie came back: the sender receives at this address.  The
        # connection that verified it carries on as the session.
        self._door = None
        if not self._admit(address):
            return
        session = DtlsSession(self, address, door)
        self.sessions[address] = session
        self._handshaking[address] = session
        source = source_of(address[0])
        self._handshakes_from[source] += 1
        self._sessions_from[source] += 1
        session.progress()

    def _drain(self, connection: SSL.Connection, address: Address) -> None:
        while True:
            try:
                data = connection.bio_read(65536)
            except SSL.WantReadError:
                return
            self.counters[DtlsCounter.HELLO_VERIFY_REQUESTS] += 1
            self.write(data, address)

    @property
    def handshakes(self) -> int:
        """
        Handshakes in progress.
        """
        return len(self._handshaking)

    def _admit(self, address: Address) -> bool:
        """
        Whether a client that returned its cookie may open a session.  An
        address past its own caps is refused; when the listener is full,
        the oldest handshake (or session holding no allocation) makes room,
        so senders from many addresses cannot lock real clients out.
        """
        source = source_of(address[0])
        refusal = None
        if self._handshakes_from[source] >= self.max_handshakes_per_source:
            refusal = DtlsCounter.REFUSED_HANDSHAKES_FROM_ONE_ADDRESS
        elif self._sessions_from[source] >= self.max_sessions_per_source:
            refusal = DtlsCounter.REFUSED_SESSIONS_FROM_ONE_ADDRESS
        else:
            if len(self._handshaking) >= self.max_handshakes:
                self.counters[DtlsCounter.EVICTED_HANDSHAKES] += 1
                next(iter(self._handshaking.values())).close()
            if len(self.sessions) >= self.max_sessions and not self._evict_session():
                refusal = DtlsCounter.REFUSED_SESSIONS
        if refusal is None:
            return True
        self.counters[refusal] += 1
        what = _REFUSALS[refusal]
        self._refusals.emit(
            what,
            self.log.warn,
            "DTLS client {client} refused: too many {what}",
            client=host_port(address),
            what=what,
        )
        return False

    def _evict_session(self) -> bool:
        """
        Close the oldest session that holds no allocation, looking at the
        oldest C{EVICTION_SCAN}; those holding one move to the back.
        """
        for _ in range(min(self.EVICTION_SCAN, len(self.sessions))):
            address, oldest = next(iter(self.sessions.items()))
            if oldest.established and self.server.has_allocation(oldest):
                self.sessions[address] = self.sessions.pop(address)
                continue
            self.counters[DtlsCounter.EVICTED_SESSIONS] += 1
            oldest.close()
            return True
        return False

    def handshake_done(self, session: DtlsSession) -> None:
        if self._handshaking.pop(session.address, None) is session:
            _decrement(self._handshakes_from, source_of(session.address[0]))

    def forget(self, session: DtlsSession) -> None:
        if self.sessions.get(session.address) is not session:
            return
        del self.sessions[session.address]
        _decrement(self._sessions_from, source_of(session.address[0]))
        if not session.established:
            self.handshake_done(session)

    def _sweep_sessions(self) -> None:
        """
        Close established sessions that have held no allocation for
        C{session_timeout}: talking (Bindings, say) does not keep a
        session alive, an allocation does.
        """
        now = self.reactor.seconds()
        for session in list(self.sessions.values()):
            if not session.established:
                continue
            if self.server.has_allocation(session):
                session.unallocated_since = None
            elif session.unallocated_since is None:
                session.unallocated_since = now
            elif now - session.unallocated_since >= self.session_timeout:
                self.counters[DtlsCounter.CLOSED_WITHOUT_ALLOCATION] += 1
                session.close()
        self._sweep = self.reactor.callLater(self.sweep_interval, self._sweep_sessions)


def _decrement(counter: collections.Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
