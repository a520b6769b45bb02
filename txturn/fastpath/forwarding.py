# -*- test-case-name: tests.test_forwarding -*-
"""
The fast path: forwarding entries the core installs, and the compiled
loop (C{txturn.fastpath._forwarder}) that reads UDP sockets through them.

The Python core stays the source of truth.  When it relays a packet on
its own path, or binds a channel, it tells its L{IForwarding} what it
decided (L{Forwarding.peer_seen}, L{Forwarding.send_seen},
L{Forwarding.channel_bound}); when the state behind a decision goes (a
permission, channel or relay expires, the policy is reloaded) it says so
in the same call that removes the state.  The compiled loop forwards only
what those entries allow and hands every other datagram to the Python
path unchanged, in order.  So no packet is relayed that the Python path
would have dropped, and the fast path holds no timer of its own.

Without the compiled module (no C compiler at install time, or
C{TXTURN_FAST_PATH=off}) L{NO_FORWARDING} takes its place: the core asks it
for nothing per packet, and every datagram takes the Python path.

Each allocation holds at most 64 Send entries and 64 peer entries there
(peers choose their ports; the compiled table refuses more, and that
traffic stays on the Python path, which bounds its own state); removing
entries walks only the allocation's own, and the table gives memory back
as it empties.

UDP relays are forwarded over IPv4 and IPv6, in every mix of client and
relay families, for UDP clients, for TCP and TLS clients (their
connections frame and write; the fast path forwards whole frames and
frames what peers send) and for DTLS clients (their sessions decrypt
and encrypt; the fast path forwards each decrypted message and hands
the session one message at a time): scoped (link-local) IPv6 addresses
and allocations with a bandwidth limit stay on the Python path.
"""

from __future__ import annotations

import itertools
import os
import secrets
from types import ModuleType
from typing import Any, Callable

from twisted.internet import udp
from zope.interface import implementer

from txturn.core.forwarding import NO_FORWARDING, Counters, IForwarding
from txturn.core.interfaces import Address, IClientChannel, IRelay
from txturn.util.log_level import logger

#: Batches of datagrams one read of a socket may take, before the reactor
#: serves the other sockets (C{udp.Port} reads 256 KiB per call).
BATCHES_PER_READ = 8


#: C{TXTURN_FAST_PATH} values other than C{on} (the default) and C{off}:
#: the fast path without one of its batching mechanisms, for bench/relay.py
#: to measure what each is worth.
TUNINGS = {"no-gso": (32, False), "unbatched": (1, False)}


def _setting() -> str:
    return os.environ.get("TXTURN_FAST_PATH", "on").lower()


def compiled_module() -> ModuleType | None:
    """
    C{txturn.fastpath._forwarder}, unless it was not built or C{TXTURN_FAST_PATH}
    is C{off}.
    """
    if _setting() in ("off", "0", "no", "false"):
        return None
    try:
        from txturn.fastpath import _forwarder  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _forwarder  # type: ignore[no-any-return]


def _handle(channel_or_relay: IClientChannel | IRelay) -> int | None:
    """
    The descriptor of a pumped socket, or C{None}: the
    C{forwarding_handle} that L{IClientChannel} and L{IRelay} declare.
    """
    # A TCP allocation's relay (RFC 6062) has none: nothing to forward.
    handle = getattr(channel_or_relay, "forwarding_handle", None)
    return handle if isinstance(handle, int) else None


def _plain(*addresses: Address) -> bool:
    """
    Whether no address is scoped (C{fe80::1%eth0}): the compiled table
    keeps addresses without an interface, so those stay on the Python
    path.
    """
    return all("%" not in address[0] for address in addresses)


@implementer(IForwarding)
class Forwarding:
    """
    Forwarding entries in a compiled C{Forwarder}, which also reads the
    sockets it pumps (L{PumpedPort}).
    """

    def __init__(self, module: ModuleType) -> None:
        self.forwarder = module.Forwarder(secrets.token_bytes(16))
        tuning = TUNINGS.get(_setting())
        if tuning is not None:
            self.forwarder.tune(*tuning)

    def open(self, client: Any, client_address: Address, txid_prefix: bytes) -> int | None:
        fd = _handle(client)
        if fd is None or not _plain(client_address):
            return None
        # A stream client (TCP, TLS) or a DTLS session, known by a
        # negative key, gets what peers send it through its own C{relayed}:
        # joined and padded for a stream, one message a call for DTLS
        # (the session encrypts each into its own record).
        writer = client.relayed if fd < 0 else None
        slot: int = self.forwarder.add_allocation(
            fd, client_address[:2], txid_prefix, writer, bool(client.stream)
        )
        return slot

    def close(self, slot: int) -> Counters:
        counters: Counters = self.forwarder.remove_allocation(slot)
        return counters

    def take_counters(self, slot: int) -> Counters:
        counters: Counters = self.forwarder.take_counters(slot)
        return counters

    def channel_bound(self, slot: int, channel: int, relay: Any, peer: Address) -> None:
        fd = _handle(relay)
        if fd is not None and _plain(peer):
            self.forwarder.add_channel(slot, channel, fd, peer[:2])
            # Its Data indication entry, if any, is now wrong: the next
            # datagram from the peer takes the Python path and is learned
            # again as ChannelData.
            self.forwarder.remove_peer(slot, fd, peer[:2])

    def channel_expired(self, slot: int, channel: int, relay: Any, peer: Address) -> None:
        self.forwarder.remove_channel(slot, channel)
        fd = _handle(relay)
        if fd is not None and _plain(peer):
            self.forwarder.remove_peer(slot, fd, peer[:2])

    def peer_seen(
        self,
        slot: int,
        relay: Any,
        peer: Address,
        client: Any,
        client_address: Address,
        channel: int,
    ) -> None:
        fd, client_fd = _handle(relay), _handle(client)
        if fd is None or client_fd is None or not _plain(peer, client_address):
            return
        self.forwarder.add_peer(slot, fd, peer[:2], client_fd, client_address[:2], channel)

    def send_seen(self, slot: int, relay: Any, peer: Address) -> None:
        fd = _handle(relay)
        if fd is not None and _plain(peer):
            self.forwarder.add_send(slot, fd, peer[:2])

    def permission_expired(self, slot: int, host: str) -> None:
        if _plain((host, 0)):
            self.forwarder.remove_host(slot, host)

    def relay_closed(self, slot: int, relay: Any) -> None:
        fd = _handle(relay)
        if fd is not None:
            self.forwarder.remove_relay(slot, fd)

    def policy_changed(self) -> None:
        self.forwarder.clear_sends()


_keys = itertools.count(1)


def client_key() -> int:
    """
    A key for a client the fast path knows by something other than a
    listening socket (a TCP or TLS connection, a DTLS session): negative,
    so apart from every descriptor, and never the same twice, so no two
    clients share a 5-tuple in its table whatever their transports.
    """
    return -next(_keys)


def forwarding() -> IForwarding:
    """
    The fast path when it was built (and not turned off), else
    L{NO_FORWARDING}.
    """
    module = compiled_module()
    return Forwarding(module) if module is not None else NO_FORWARDING


def user_space(forwarding: object) -> Forwarding | None:
    """
    The compiled fast path of C{forwarding}: itself, or the one beneath
    the kernel's (L{txturn.fastpath.xdp.XdpForwarding}); C{None} when
    there is none.
    """
    if isinstance(forwarding, Forwarding):
        return forwarding
    beneath = getattr(forwarding, "user_space", None)
    return beneath if isinstance(beneath, Forwarding) else None


def pumping(port: "PumpedPort", forwarding: object, from_peers: bool) -> None:
    """
    Have C{port} read by C{forwarding}'s fast path, if it has one.
    """
    compiled = user_space(forwarding)
    if compiled is not None:
        port.pump_with(compiled, from_peers)


def pumped_descriptor(transport: object) -> int | None:
    """
    The descriptor the fast path knows a protocol's C{transport} by (a
    relay's or a listener's), when it pumps it.
    """
    return transport.forwarding_handle() if isinstance(transport, PumpedPort) else None


class PumpedPort(udp.Port):
    """
    A UDP port read by the fast path: C{recvmmsg} in batches, forwarding
    what the entries allow, the rest handed to the protocol in order.

    C{from_peers} says which entries apply: a relay's (datagrams from
    peers) or a listener's (datagrams from clients).
    """

    log = logger()
    forwarding: Forwarding | None = None
    from_peers = False
    #: The compiled read and the hand-up, bound once: C{doRead} runs per
    #: wake-up of the reactor.
    _pump: Callable[..., int] | None = None
    _hand_up: Callable[[bytes, Address], None] | None = None

    def pump_with(self, forwarding: Forwarding, from_peers: bool) -> None:
        self.forwarding = forwarding
        self.from_peers = from_peers
        self._pump = forwarding.forwarder.pump
        self._hand_up = self._deliver

    def forwarding_handle(self) -> int | None:
        """
        The descriptor the entries name, when this port is pumped.
        """
        if self.forwarding is None or not self.connected:
            return None
        fileno: int = self.socket.fileno()
        return fileno

    def doRead(self) -> None:
        pump = self._pump
        if pump is None:
            super().doRead()  # type: ignore[no-untyped-call]
            return
        try:
            pump(self.socket.fileno(), self.from_peers, self._hand_up, BATCHES_PER_READ)
        except OSError as e:
            self.read_failed(e)

    def read_failed(self, error: OSError) -> None:
        """
        Reading failed with C{error} before any datagram was read: for a
        listener, a transient error (the next read tries again).
        """

    def _deliver(self, data: bytes, address: Address) -> None:
        # What udp.Port.doRead does for each datagram: a failing protocol
        # is logged and the port keeps reading.
        try:
            self.protocol.datagramReceived(data, address)
        except BaseException:
            self.log.failure("Unhandled error in {protocol!r}", protocol=self.protocol)
