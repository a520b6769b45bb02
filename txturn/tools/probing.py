# -*- test-case-name: tests.test_probe -*-
"""
What C{txturn-probe} (L{txturn.tools.probe}) checks: does a deployed
TURN server really relay?  It checks any server end to end, through
txturn's own codec, without root:

  Binding, Allocate over the URI's transport, CreatePermission,
  ChannelBind, round trips through a UDP peer the probe runs itself,
  and what the server announces (SOFTWARE, the RFC 8489 nonce cookie,
  SHA-256 support).

It prints a table and exits 0, or names the step that failed and why
(the error code, or a timeout) and exits 1.

The URI is RFC 7065's: C{turn:host[:port][?transport=udp|tcp]} or
C{turns:host[:port]} (TLS over TCP).
"""

from __future__ import annotations

import os
import socket
import ssl
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from txturn.tools.client import StunClient
from txturn.wire.framing import StreamFramer
from txturn.wire.stun import (
    CHANNEL_DATA_HEADER,
    Attr,
    Class,
    Message,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    encode_channel_data,
)

#: RFC 8489 section 9.2: a nonce starting with this says which security
#: features the server supports.
NONCE_COOKIE = "obMatJos2"
CHANNEL = 0x4000


class ProbeFailed(Exception):
    """
    A step failed; the message says which and why.
    """


class Redirected(ProbeFailed):
    """
    The server answered Allocate with 300 Try Alternate.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(f"redirected to {_host_port(address)} (300 Try Alternate)")
        self.address = address


@dataclass(frozen=True)
class TurnUri:
    """
    RFC 7065's C{turn:} or C{turns:} URI.
    """

    secure: bool
    host: str
    port: int
    transport: str

    @classmethod
    def parse(cls, text: str) -> "TurnUri":
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in ("turn", "turns"):
            raise ValueError(f"{text!r} is not a turn: or turns: URI")
        rest, _, query = rest.partition("?")
        transport = "tcp" if scheme == "turns" else "udp"
        if query:
            key, _, value = query.partition("=")
            if key != "transport" or value not in ("udp", "tcp"):
                raise ValueError(f"unknown URI query {query!r}; transport=udp or tcp")
            transport = value
        if scheme == "turns" and transport != "tcp":
            raise ValueError("turns: runs over TCP (TLS)")
        if rest.startswith("["):
            host, _, after = rest[1:].partition("]")
            port_text = after[1:] if after.startswith(":") else ""
        else:
            host, _, port_text = rest.partition(":")
        if not host:
            raise ValueError(f"{text!r} names no host")
        port = int(port_text) if port_text else (5349 if scheme == "turns" else 3478)
        return cls(scheme == "turns", host, port, transport)


class Connection:
    """
    One client connection to the server: a UDP socket, or a TCP or TLS
    stream cut into frames.
    """

    def __init__(self, uri: TurnUri, timeout: float, ca_file: str | None, insecure: bool):
        self.uri = uri
        self.timeout = timeout
        address = socket.getaddrinfo(
            uri.host, uri.port, type=socket.SOCK_DGRAM if uri.transport == "udp" else 0
        )[0]
        self.family = address[0]
        self.address: tuple[str, int] = (str(address[4][0]), int(address[4][1]))
        if uri.transport == "udp":
            self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
            self.sock.connect(self.address)
        else:
            self.sock = socket.create_connection(self.address, timeout=timeout)
            if uri.secure:
                context = ssl.create_default_context(cafile=ca_file)
                if insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self.sock = context.wrap_socket(self.sock, server_hostname=uri.host)
        self.sock.settimeout(timeout)
        self._framer = StreamFramer()
        self._frames: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.uri.transport == "udp":
            self.sock.send(data)
        else:
            self.sock.sendall(data)

    def receive(self) -> bytes:
        """
        The next datagram or frame; C{socket.timeout} after the timeout.
        """
        if self.uri.transport == "udp":
            return self.sock.recv(65535)
        while not self._frames:
            data = self.sock.recv(65535)
            if not data:
                raise ProbeFailed("the server closed the connection")
            self._frames += self._framer.feed(data)
        return self._frames.pop(0)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Report:
    """
    What the probe learnt, for the table.
    """

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        self.rows.append((name, str(value)))

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in self.rows)


class Probe:
    """
    The end-to-end check, step by step; L{run} returns the L{Report} or
    raises L{ProbeFailed}.
    """

    def __init__(
        self,
        uri: TurnUri,
        username: str,
        password: str,
        *,
        peer_host: str | None = None,
        count: int = 10,
        timeout: float = 3.0,
        ca_file: str | None = None,
        insecure: bool = False,
        sha256: bool = False,
    ) -> None:
        self.uri = uri
        self.client = StunClient(
            username,
            password,
            PasswordAlgorithm.SHA256 if sha256 else PasswordAlgorithm.MD5,
        )
        self.peer_host = peer_host
        self.count = count
        self.timeout = timeout
        self.ca_file = ca_file
        self.insecure = insecure
        self.report = Report()

    def fresh(self) -> "Probe":
        """
        The same probe with a client that knows nothing yet (a new
        connection needs a new nonce).
        """
        return Probe(
            self.uri,
            self.client.username,
            self.client.password,
            peer_host=self.peer_host,
            count=self.count,
            timeout=self.timeout,
            ca_file=self.ca_file,
            insecure=self.insecure,
            sha256=self.client.algorithm == PasswordAlgorithm.SHA256,
        )

    def server_host(self) -> str:
        """
        The server's address, resolved.
        """
        return str(socket.getaddrinfo(self.uri.host, self.uri.port)[0][4][0])

    def run(self) -> Report:
        """
        Every step; a 300 Try Alternate is followed once, as a client
        does, and the report says where to.
        """
        try:
            return self._run()
        except Redirected as redirect:
            host, port = redirect.address
            self.report.add("redirected to", _host_port(redirect.address))
            self.uri = TurnUri(self.uri.secure, host, port, self.uri.transport)
            self.client = StunClient(
                self.client.username, self.client.password, self.client.algorithm
            )
            return self._run()

    def _run(self) -> Report:
        report = self.report
        report.add("server", f"{self.uri.host}:{self.uri.port} over {self._transport_name()}")
        connection = self._step("connect", self.connect)
        try:
            self._step("Binding", lambda: self._binding(connection))
            relayed = self._step("Allocate", lambda: self._allocate(connection))
            peer = self._start_peer(relayed)
            try:
                self._step("CreatePermission", lambda: self._permission(connection, peer))
                self._step("ChannelBind", lambda: self._channel_bind(connection, peer))
                self._step("round trips", lambda: self._round_trips(connection, peer, relayed))
            finally:
                peer.close()
            self._step("Refresh (delete)", lambda: self._delete(connection))
        finally:
            connection.close()
        return report

    # -- steps -------------------------------------------------------------------

    def _transport_name(self) -> str:
        return "TLS" if self.uri.secure else self.uri.transport.upper()

    def _step(self, name: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Redirected:
            raise
        except ProbeFailed as e:
            raise ProbeFailed(f"{name}: {e}") from None
        except socket.timeout:
            raise ProbeFailed(f"{name}: no answer within {self.timeout:g} s") from None
        except ssl.SSLError as e:
            raise ProbeFailed(f"{name}: TLS: {e.reason or e}") from None
        except OSError as e:
            raise ProbeFailed(f"{name}: {e.strerror or e}") from None

    def connect(self) -> Connection:
        return Connection(self.uri, self.timeout, self.ca_file, self.insecure)

    def _transact(self, connection: Connection, request: bytes, txid: bytes) -> Message:
        for _ in range(3 if self.uri.transport == "udp" else 1):
            connection.send(request)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                try:
                    response = self.client.learn(connection.receive())
                except StunDecodeError:
                    continue
                except socket.timeout:
                    break
                if response.transaction_id == txid:
                    return response
        raise socket.timeout()

    def request(
        self, connection: Connection, method: int, attributes: list[tuple[int, Any]]
    ) -> Message:
        """
        A request signed with what the server taught; a 401 or 438 is
        answered once, as a real client does, and any other error fails
        the step with its code and reason.
        """
        for attempt in range(2):
            txid = os.urandom(12)
            request = self.client.request(method, attributes, transaction_id=txid)
            response = self._transact(connection, request, txid)
            if attempt or not self.client.challenged(response):
                break
        if response.cls == Class.ERROR:
            code, reason = response.get(Attr.ERROR_CODE)
            alternate = response.get(Attr.ALTERNATE_SERVER)
            if code == 300 and method == Method.ALLOCATE and alternate is not None:
                raise Redirected(alternate)
            # Some servers pad the reason with NULs inside its length.
            raise ProbeFailed(f"error {code} {reason.rstrip(chr(0))}".rstrip())
        return response

    def _binding(self, connection: Connection) -> None:
        txid = os.urandom(12)
        request = self.client.request(Method.BINDING, authenticate=False, transaction_id=txid)
        response = self._transact(connection, request, txid)
        if response.cls != Class.SUCCESS:
            raise ProbeFailed(f"error {response.get(Attr.ERROR_CODE)}")
        mapped = response.get(Attr.XOR_MAPPED_ADDRESS) or response.get(Attr.MAPPED_ADDRESS)
        self.mapped = mapped
        self.report.add("mapped address", _host_port(mapped))
        self.report.add("SOFTWARE", response.get(Attr.SOFTWARE) or "(none)")

    def _allocate(self, connection: Connection) -> tuple[str, int]:
        response = self.request(connection, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        relayed: tuple[str, int] = response.get(Attr.XOR_RELAYED_ADDRESS)
        self.report.add("realm", self.client.realm)
        nonce = self.client.nonce or ""
        self.report.add(
            "nonce cookie (RFC 8489)", "yes" if nonce.startswith(NONCE_COOKIE) else "no"
        )
        algorithms = [a for a, _ in self.client.algorithms or []]
        self.report.add(
            "SHA-256 passwords",
            "offered" if PasswordAlgorithm.SHA256 in algorithms else "not offered",
        )
        self.report.add("relayed address", _host_port(relayed))
        self.report.add("lifetime", f"{response.get(Attr.LIFETIME)} s")
        return relayed

    def _start_peer(self, relayed: tuple[str, int]) -> socket.socket:
        """
        The UDP peer the probe relays to: on the host the server saw the
        probe come from (or C{--peer}), in the relayed address's family.
        """
        family = socket.AF_INET6 if ":" in relayed[0] else socket.AF_INET
        peer = socket.socket(family, socket.SOCK_DGRAM)
        peer.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        peer.settimeout(self.timeout)
        host = self.peer_host or self.mapped[0]
        self.peer_address = (host, peer.getsockname()[1])
        self.report.add("peer", _host_port(self.peer_address))
        return peer

    def _permission(self, connection: Connection, peer: socket.socket) -> None:
        self.request(
            connection, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, self.peer_address)]
        )

    def _channel_bind(self, connection: Connection, peer: socket.socket) -> None:
        self.request(
            connection,
            Method.CHANNEL_BIND,
            [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, self.peer_address)],
        )

    def _round_trips(
        self, connection: Connection, peer: socket.socket, relayed: tuple[str, int]
    ) -> None:
        """
        C{count} messages client -> relay -> peer, echoed peer -> relay ->
        client, each timed.
        """
        times = []
        pad = self.uri.transport == "tcp"
        for i in range(self.count):
            payload = b"txturn-probe %d " % i + os.urandom(16)
            started = time.perf_counter()
            connection.send(encode_channel_data(CHANNEL, payload, pad))
            data, source = peer.recvfrom(65535)
            if data != payload:
                raise ProbeFailed(f"the peer got {len(data)} other bytes")
            peer.sendto(data, source[:2])
            self._await_channel_data(connection, payload)
            times.append((time.perf_counter() - started) * 1000)
        self.report.add(
            "round trips",
            f"{len(times)} of {self.count}, via relay {_host_port(relayed)}",
        )
        self.report.add(
            "latency (ms)",
            f"min {min(times):.2f}  median {statistics.median(times):.2f}  max {max(times):.2f}",
        )

    def _await_channel_data(self, connection: Connection, payload: bytes) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            frame = connection.receive()
            if frame[:1] and 0x40 <= frame[0] <= 0x7F:
                channel, length = CHANNEL_DATA_HEADER.unpack_from(frame)
                if channel == CHANNEL and frame[4 : 4 + length] == payload:
                    return
        raise socket.timeout()

    def _delete(self, connection: Connection) -> None:
        self.request(connection, Method.REFRESH, [(Attr.LIFETIME, 0)])


def _host_port(address: Sequence[Any]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
