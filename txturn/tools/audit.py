# -*- test-case-name: tests.test_audit -*-
"""
C{txturn-probe --audit}: is a TURN server an open door into its own
network?  With valid credentials, the audit asks the server for
permissions and channels towards every address form a relay must refuse
(loopback, unspecified, every IPv4-in-IPv6 spelling of them, link-local
and cloud metadata, private, CGNAT, multicast, broadcast, reserved, the
server's own listening port), and reports, for each form and path,
whether the server refused it.  Every TURN server has shipped a bypass of
its peer policy (CVE-2020-26262: 0.0.0.0 and C{::ffff:127.0.0.1}; the
RFC 6062 Connect path); this is the test that catches them.

It never sends a packet to a non-loopback address: a granted permission
is the finding.  The only traffic it relays goes to a UDP (and TCP) peer
it runs itself on loopback, to show whether a granted loopback form
really delivers (Send indication, and RFC 6062 Connect over TCP).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from txturn.tools.probing import Connection, Probe, ProbeFailed
from txturn.wire.stun import FAMILY_IPV4, FAMILY_IPV6, Attr, Class, Message, Method, encode

#: (form, family, what it is, whether it reaches this host's loopback).
#: Loopback forms are the only ones the audit relays to (its own peer).
FORMS: list[tuple[str, int, str, bool]] = [
    ("127.0.0.1", FAMILY_IPV4, "loopback", True),
    ("127.1.2.3", FAMILY_IPV4, "loopback, not .1", True),
    ("0.0.0.0", FAMILY_IPV4, "unspecified (reaches the host)", True),
    ("0.1.2.3", FAMILY_IPV4, "0.0.0.0/8", False),
    ("169.254.169.254", FAMILY_IPV4, "cloud metadata", False),
    ("169.254.1.1", FAMILY_IPV4, "link-local", False),
    ("10.0.0.1", FAMILY_IPV4, "private 10/8", False),
    ("172.16.0.1", FAMILY_IPV4, "private 172.16/12", False),
    ("192.168.0.1", FAMILY_IPV4, "private 192.168/16", False),
    ("100.64.0.1", FAMILY_IPV4, "CGNAT 100.64/10", False),
    ("224.0.0.1", FAMILY_IPV4, "multicast", False),
    ("255.255.255.255", FAMILY_IPV4, "broadcast", False),
    ("240.0.0.1", FAMILY_IPV4, "reserved 240/4", False),
    ("192.0.0.1", FAMILY_IPV4, "IETF protocol assignments", False),
    ("::1", FAMILY_IPV6, "loopback", True),
    ("::", FAMILY_IPV6, "unspecified", True),
    ("::ffff:127.0.0.1", FAMILY_IPV6, "IPv4-mapped loopback", True),
    ("::ffff:0.0.0.0", FAMILY_IPV6, "IPv4-mapped unspecified", True),
    ("::127.0.0.1", FAMILY_IPV6, "IPv4-compatible loopback", True),
    ("::ffff:0:127.0.0.1", FAMILY_IPV6, "SIIT loopback", True),
    ("64:ff9b::7f00:1", FAMILY_IPV6, "NAT64 loopback", True),
    ("64:ff9b:1::7f00:1", FAMILY_IPV6, "local-use NAT64 loopback", True),
    ("2002:7f00:1::1", FAMILY_IPV6, "6to4 of loopback", False),
    ("::ffff:169.254.169.254", FAMILY_IPV6, "IPv4-mapped metadata", False),
    ("::ffff:10.0.0.1", FAMILY_IPV6, "IPv4-mapped private", False),
    ("fe80::1", FAMILY_IPV6, "link-local", False),
    ("fc00::1", FAMILY_IPV6, "unique local", False),
    ("ff02::1", FAMILY_IPV6, "multicast", False),
    ("fd00:ec2::254", FAMILY_IPV6, "cloud metadata (AWS IPv6)", False),
]


@dataclass
class Finding:
    form: str
    what: str
    path: str
    result: str

    @property
    def granted(self) -> bool:
        return self.result.startswith(("GRANTED", "DELIVERED"))


class Audit:
    """
    The audit of one server; L{run} returns every row, findings and
    refusals alike.
    """

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.rows: list[Finding] = []

    def run(self) -> list[Finding]:
        probe = self.probe
        udp_peer, tcp_peer = _loopback_peer(socket.SOCK_DGRAM), _loopback_peer(socket.SOCK_STREAM)
        try:
            for family in (FAMILY_IPV4, FAMILY_IPV6):
                self._audit_family(family, udp_peer)
            if probe.uri.transport == "tcp":
                self._audit_connect(tcp_peer)
            self._audit_own_port()
        finally:
            udp_peer.close()
            tcp_peer.close()
        return self.rows

    # -- one allocation per family -------------------------------------------------

    def _allocation(self, family: int) -> tuple[Connection, Probe] | str:
        """
        A fresh connection with a UDP allocation of C{family}, or why
        there is none.
        """
        probe = self.probe.fresh()
        connection = probe.connect()
        attrs: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17)]
        if family == FAMILY_IPV6:
            attrs.append((Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6))
        try:
            probe.request(connection, Method.ALLOCATE, attrs)
        except ProbeFailed as e:
            connection.close()
            return f"untested: no {'IPv6' if family == FAMILY_IPV6 else 'IPv4'} relay ({e})"
        except OSError as e:
            connection.close()
            return f"untested: {e}"
        return connection, probe

    def _audit_family(self, family: int, peer: socket.socket) -> None:
        forms = [f for f in FORMS if f[1] == family]
        got = self._allocation(family)
        if isinstance(got, str):
            for form, _, what, _ in forms:
                self.rows.append(Finding(form, what, "CreatePermission", got))
            return
        connection, probe = got
        try:
            for channel, (form, _, what, loopback) in enumerate(forms, 0x4100):
                port = peer.getsockname()[1]
                permission = self._ask(
                    probe,
                    connection,
                    Method.CREATE_PERMISSION,
                    [(Attr.XOR_PEER_ADDRESS, (form, port))],
                )
                self.rows.append(Finding(form, what, "CreatePermission", permission))
                self.rows.append(
                    Finding(
                        form,
                        what,
                        "ChannelBind",
                        self._ask(
                            probe,
                            connection,
                            Method.CHANNEL_BIND,
                            [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, (form, port))],
                        ),
                    )
                )
                if loopback:
                    self.rows.append(
                        Finding(form, what, "Send indication", self._send(connection, form, peer))
                    )
            probe.request(connection, Method.REFRESH, [(Attr.LIFETIME, 0)])
        finally:
            connection.close()

    def _ask(
        self, probe: Probe, connection: Connection, method: int, attrs: list[tuple[int, Any]]
    ) -> str:
        try:
            probe.request(connection, method, attrs)
        except ProbeFailed as e:
            return f"refused ({e})"
        except socket.timeout:
            return "refused (no answer)"
        return "GRANTED"

    def _send(self, connection: Connection, form: str, peer: socket.socket) -> str:
        """
        A Send indication to our own loopback peer through C{form}: does
        it arrive?
        """
        marker = os.urandom(12)
        send = Message(Method.SEND, Class.INDICATION, os.urandom(12))
        send.add(Attr.XOR_PEER_ADDRESS, (form, peer.getsockname()[1])).add(Attr.DATA, marker)
        connection.send(encode(send))
        peer.settimeout(0.3)
        deadline = time.monotonic() + 0.3
        try:
            while time.monotonic() < deadline:
                data, _ = peer.recvfrom(2048)
                if data == marker:
                    return "DELIVERED to the audit's loopback peer"
        except socket.timeout:
            pass
        return "refused (nothing arrived)"

    # -- RFC 6062 ------------------------------------------------------------------

    def _audit_connect(self, peer: socket.socket) -> None:
        """
        Over TCP: a TCP allocation, and Connect towards each loopback form
        of the audit's own TCP listener (only loopback: a granted Connect
        elsewhere would make the server open a connection off this host).
        """
        probe = self.probe.fresh()
        connection = probe.connect()
        try:
            probe.request(connection, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)])
        except ProbeFailed as e:
            connection.close()
            self.rows.append(Finding("-", "RFC 6062", "Connect", f"untested: no TCP relay ({e})"))
            return
        port = peer.getsockname()[1]
        try:
            for form, _, what, loopback in FORMS:
                if loopback and ":" not in form:
                    result = self._ask(
                        probe, connection, Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, (form, port))]
                    )
                    self.rows.append(Finding(form, what, "Connect (RFC 6062)", result))
        finally:
            connection.close()

    def _audit_own_port(self) -> None:
        """
        The server's own listening address and port as a peer.
        """
        got = self._allocation(FAMILY_IPV4 if ":" not in self.probe.server_host() else FAMILY_IPV6)
        if isinstance(got, str):
            return
        connection, probe = got
        try:
            own = (probe.server_host(), probe.uri.port)
            result = self._ask(
                probe,
                connection,
                Method.CHANNEL_BIND,
                [(Attr.CHANNEL_NUMBER, 0x4FFF), (Attr.XOR_PEER_ADDRESS, own)],
            )
            self.rows.append(
                Finding(f"{own[0]}:{own[1]}", "the server's own listener", "ChannelBind", result)
            )
        finally:
            connection.close()


def _loopback_peer(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    return sock


def table(rows: list[Finding]) -> str:
    widths = [max(len(getattr(r, name)) for r in rows) for name in ("form", "what", "path")]
    lines = []
    for r in rows:
        mark = "!!" if r.granted else "ok"
        lines.append(
            f"{mark}  {r.form.ljust(widths[0])}  {r.what.ljust(widths[1])}  "
            f"{r.path.ljust(widths[2])}  {r.result}"
        )
    return "\n".join(lines)
