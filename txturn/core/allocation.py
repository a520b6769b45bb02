# -*- test-case-name: tests.test_server -*-
"""
One TURN allocation: its relays (one per address family, two for a dual
allocation), permissions and channel bindings, and the timer that expires
them.

Every lifetime is a deadline, and one C{IDelayedCall} per allocation on
the injected reactor fires at the earliest of them and ends whatever is
due, so the relay hot path never reads a clock: a permission or a
channel exists in its dict exactly as long as it is valid.  (One timer,
not one per permission and channel: each is some 340 bytes, and most
allocations hold three.)

Permissions and channels are keyed by peer address, and a peer address
has one family, so each belongs to exactly one of the relays; deleting one
family of a dual allocation (RFC 8656 section 8) drops just its own.

The two relay directions live here as the two methods the hot path calls
(L{Allocation.from_client_channel} and L{Allocation.from_peer}); each is a
couple of dict lookups and one socket send.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txturn.auth.policy import NO_POLICY
from txturn.core.counters import Counter
from txturn.core.events import ChannelBound, ChannelExpired, PermissionExpired, PermissionInstalled
from txturn.core.forwarding import NO_FORWARDING, IForwarding
from txturn.core.interfaces import Address, IClientChannel, IRelay
from txturn.util.rate import TokenBucket
from txturn.wire.stun import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    Attr,
    encode_channel_data,
    encode_data_indication,
    pack_icmp,
    xor_peer_attribute,
)

PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
#: After a channel binding expires, neither its number nor its peer may be
#: bound to anything else for this long (RFC 8656 section 12).
CHANNEL_COOLDOWN = 300.0


_txid_counter = itertools.count()
#: The most DATA a Data indication can carry: its STUN length field is 16
#: bits, and XOR-PEER-ADDRESS (IPv6: 24 bytes with its header), the DATA
#: header and padding come first.  A larger datagram from a peer (UDP
#: allows 65,527 bytes over IPv6) cannot be relayed without a channel.
MAX_INDICATION_DATA = 0xFFFF - 24 - 4 - 3
#: IPv4 peers whose XOR-PEER-ADDRESS an allocation keeps encoded.
MAX_KEPT_PEER_ATTRIBUTES = 64


def _ignore(event: object) -> None:
    pass


#: What most allocations never write to starts as these shared empty
#: containers and gets its own on the first write (L{Allocation._own}):
#: a thousand allocations hold a thousand fewer dicts of each.  Reading
#: or popping from them never writes.
_NO_DROPS: collections.Counter[Counter] = collections.Counter()
_EMPTY: Any = {}


def host_family(host: str) -> int:
    """
    The STUN family of an address literal, cheaply (hot path).
    """
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


class Allocation:
    """
    The state RFC 8656 keeps per 5-tuple.

    @ivar client: the channel the client speaks on; with C{client_address}
        the 5-tuple.
    @ivar relays: family -> the relay of that family.
    @ivar permissions: peer IP -> the timer that removes it.
    @ivar channels: channel number -> (peer address, relay that reaches it).
    @ivar peer_channels: peer address -> channel number.
    """

    # Slots keep attribute access on the per-packet path fast: past 30
    # attributes CPython stops sharing instance dict keys, and every
    # counter increment became a slower dict operation.
    __slots__ = (
        "_reactor",
        "id",
        "_emit",
        "created",
        "end_reason",
        "to_peers_packets",
        "to_peers_bytes",
        "to_client_packets",
        "to_client_bytes",
        "client",
        "client_address",
        "username",
        "relays",
        "_expiry",
        "permissions",
        "channels",
        "peer_channels",
        "_channel_ends",
        "_timer",
        "_cooldown_channels",
        "_cooldown_peers",
        "_on_empty",
        "allocate_transaction",
        "allocate_response",
        "closed",
        "tcp",
        "bandwidth",
        "_tally",
        "_txid_prefix",
        "_peer_attributes",
        "_send_to_client",
        "_pad",
        "dropped",
        "_forwarding",
        "_slot",
        "policy",
    )

    def __init__(
        self,
        reactor: IReactorTime,
        client: IClientChannel,
        client_address: Address,
        username: str,
        on_empty: Callable[["Allocation"], None],
        count: Callable[[Counter], None] | None = None,
        allocation_id: int = 0,
        emit: Callable[[object], None] | None = None,
        forwarding: IForwarding = NO_FORWARDING,
        bandwidth: TokenBucket | None = None,
    ) -> None:
        self._reactor = reactor
        #: A number unique on the server, naming it in lifecycle events.
        self.id = allocation_id
        self._emit = emit if emit is not None else _ignore
        self.created = reactor.seconds()
        #: Why it ended, for the deletion event; whoever deletes it says.
        self.end_reason = "expired"
        #: Packets and bytes relayed each way (the hot path's counters).
        self.to_peers_packets = self.to_peers_bytes = 0
        self.to_client_packets = self.to_client_bytes = 0
        #: Relayed packets dropped, by reason (see L{drop}).
        self.dropped: collections.Counter[Counter] = _NO_DROPS
        self.client = client
        self.client_address = client_address
        # One string per user, not per allocation.
        self.username = sys.intern(username)
        self.relays: dict[int, IRelay] = {}
        #: family -> when its relay's lifetime ends.
        self._expiry: dict[int, float] = {}
        #: peer IP -> when its permission ends.
        self.permissions: dict[str, float] = {}
        self.channels: dict[int, tuple[Address, IRelay]] = {}
        self.peer_channels: dict[Address, int] = {}
        self._channel_ends: dict[int, float] = _EMPTY
        #: The one timer: it fires at the earliest of the deadlines above
        #: (and the channel cool-downs').
        self._timer: IDelayedCall | None = None
        self._cooldown_channels: dict[int, tuple[Address, float]] = _EMPTY
        self._cooldown_peers: dict[Address, int] = _EMPTY
        self._on_empty = on_empty
        #: The Allocate transaction that made this allocation and the
        #: response it got, so a retransmission gets the same answer.
        self.allocate_transaction: bytes = b""
        self.allocate_response: bytes = b""
        self.closed = False
        #: A TCP allocation (RFC 6062): no channels, Send or Data.
        self.tcp = False
        #: Relayed bytes per second, both directions (--max-bps), or None.
        self.bandwidth = bandwidth
        #: What the credential that made it restricts: its peers, on
        #: every path (L{txturn.auth.policy}).
        self.policy = NO_POLICY
        #: Counts with the core's counters (L{txturn.core.state.CoreState.count}).
        self._tally = count if count is not None else _ignore
        self._txid_prefix = os.urandom(8)
        #: IPv4 peer -> its XOR-PEER-ADDRESS attribute, which no transaction
        #: id changes; bounded, as peers choose their ports.
        self._peer_attributes: dict[Address, bytes] = _EMPTY
        self._send_to_client = client.send
        self._pad = bool(client.stream)
        self._forwarding = forwarding
        #: Its handle in the fast path, or None: then every packet takes
        #: the Python path (a DTLS or scoped IPv6 client, no fast path, or a
        #: bandwidth limit, which only the Python path keeps).
        self._slot = (
            forwarding.open(client, client_address, self._txid_prefix)
            if bandwidth is None
            else None
        )

    # -- relays and lifetimes --------------------------------------------------

    def add_relay(self, family: int, relay: IRelay, lifetime: float) -> None:
        self.relays[family] = relay
        relay.receiver = self.from_peer
        relay.icmp_receiver = self.icmp_from_peer
        self._expiry[family] = self._in(lifetime)

    def relay_for(self, host: str) -> IRelay | None:
        """
        The relay that reaches peer C{host}, or C{None} (443).
        """
        return self.relays.get(host_family(host))

    def refresh(self, lifetime: float, family: int | None = None) -> None:
        for f in [family] if family is not None else list(self._expiry):
            self._expiry[f] = self._in(lifetime)

    def expires_in(self) -> float:
        return max(self._expiry.values()) - self._reactor.seconds()

    def _expired(self, family: int) -> None:
        self.end_reason = "expired"
        del self._expiry[family]
        self.remove_family(family)

    def remove_family(self, family: int) -> object:
        """
        Delete one family's relay with its permissions and channels; when
        none is left the whole allocation goes (C{on_empty}).
        """
        relay = self.relays.pop(family)
        self._expiry.pop(family, None)
        for host in [h for h in self.permissions if host_family(h) == family]:
            del self.permissions[host]
        for channel in [
            c for c, (peer, _) in self.channels.items() if host_family(peer[0]) == family
        ]:
            peer, _ = self.channels.pop(channel)
            del self.peer_channels[peer]
            del self._channel_ends[channel]
        for channel in [
            c for c, (peer, _) in self._cooldown_channels.items() if host_family(peer[0]) == family
        ]:
            peer, _ = self._cooldown_channels.pop(channel)
            self._cooldown_peers.pop(peer, None)
        relay.receiver = _discard
        relay.icmp_receiver = _discard_icmp
        slot = self._slot
        if slot is not None:
            self._forwarding.relay_closed(slot, relay)
            if not self.relays:
                self._slot = None
                self._count(self._forwarding.close(slot))
        if not self.relays and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        closing = relay.close()
        if not self.relays and not self.closed:
            self.closed = True
            self._on_empty(self)
        return closing

    def close(self) -> list[object]:
        """
        Delete every family; returns what each relay's close returned (a
        Deferred for a real port).
        """
        return [self.remove_family(family) for family in list(self.relays)]

    # -- the one timer -----------------------------------------------------------

    def _in(self, seconds: float) -> float:
        """
        The deadline C{seconds} from now, with the allocation's timer set
        to fire by then.
        """
        deadline = self._reactor.seconds() + seconds
        self._fire_by(deadline)
        return deadline

    def _fire_by(self, deadline: float) -> None:
        timer = self._timer
        delay = max(0.0, deadline - self._reactor.seconds())
        if timer is None or not timer.active():
            self._timer = self._reactor.callLater(delay, self._tick)
        elif deadline < timer.getTime():
            timer.reset(delay)

    def _tick(self) -> None:
        """
        The timer fired: end whatever is due (the relays' lifetimes, then
        permissions, channels and channel cool-downs), and set the timer
        for the next deadline.  A deadline that was pushed back since the
        timer was set is simply not due yet.
        """
        self._timer = None
        now = self._reactor.seconds()
        for family, end in list(self._expiry.items()):
            if end <= now and family in self._expiry:
                self._expired(family)
        if self.closed:
            return
        for host, end in list(self.permissions.items()):
            if end <= now and self.permissions.get(host) == end:
                self._permission_expired(host)
        for channel, end in list(self._channel_ends.items()):
            if end <= now and self._channel_ends.get(channel) == end:
                self._channel_expired(channel)
        for channel, (_, end) in list(self._cooldown_channels.items()):
            if end <= now and channel in self._cooldown_channels:
                self._cooldown_over(channel)
        ends = [
            *self._expiry.values(),
            *self.permissions.values(),
            *self._channel_ends.values(),
            *(end for _, end in self._cooldown_channels.values()),
        ]
        if ends:
            self._fire_by(min(ends))

    def timers(self) -> list[IDelayedCall]:
        """
        Every pending timer (one at most), for tests and accounting.
        """
        return [self._timer] if self._timer is not None and self._timer.active() else []

    # -- permissions -----------------------------------------------------------

    def install_permission(self, host: str) -> None:
        """
        Install or refresh the permission for peer IP C{host} (300 s).
        """
        new = host not in self.permissions
        self.permissions[host] = self._in(PERMISSION_LIFETIME)
        if new:
            self._emit(PermissionInstalled(self.id, host))

    def _permission_expired(self, host: str) -> None:
        self.permissions.pop(host, None)
        if self._slot is not None:
            self._forwarding.permission_expired(self._slot, host)
        self._emit(PermissionExpired(self.id, host))

    # -- channels --------------------------------------------------------------

    def channel_conflict(self, channel: int, peer: Address) -> bool:
        """
        Whether binding C{channel} to C{peer} breaks RFC 8656 section 12.2:
        a channel bound (or recently bound) to another peer, or the peer
        bound (or recently bound) to another channel.
        """
        entry = self.channels.get(channel)
        bound = entry[0] if entry is not None else None
        if bound is None and channel in self._cooldown_channels:
            bound = self._cooldown_channels[channel][0]
        if bound is not None and bound != peer:
            return True
        other = self.peer_channels.get(peer, self._cooldown_peers.get(peer))
        return other is not None and other != channel

    def bind_channel(self, channel: int, peer: Address, relay: IRelay) -> None:
        """
        Bind or refresh C{channel} to C{peer} (600 s) and refresh the
        peer's permission, as a successful ChannelBind does.
        """
        cooled = self._cooldown_channels.pop(channel, None)
        if cooled is not None:
            self._cooldown_peers.pop(cooled[0], None)
        if channel in self._channel_ends:
            self._channel_ends[channel] = self._in(CHANNEL_LIFETIME)
        else:
            self.channels[channel] = (peer, relay)
            self.peer_channels[peer] = channel
            if self._channel_ends is _EMPTY:
                self._channel_ends = {}
            self._channel_ends[channel] = self._in(CHANNEL_LIFETIME)
            if self._slot is not None:
                self._forwarding.channel_bound(self._slot, channel, relay, peer)
            self._emit(ChannelBound(self.id, channel, peer))
        self.install_permission(peer[0])

    def _channel_expired(self, channel: int) -> None:
        peer, relay = self.channels.pop(channel)
        if self._slot is not None:
            self._forwarding.channel_expired(self._slot, channel, relay, peer)
        self._emit(ChannelExpired(self.id, channel, peer))
        del self.peer_channels[peer]
        del self._channel_ends[channel]
        if self._cooldown_peers is _EMPTY:
            self._cooldown_peers, self._cooldown_channels = {}, {}
        self._cooldown_peers[peer] = channel
        self._cooldown_channels[channel] = (peer, self._in(CHANNEL_COOLDOWN))

    def _cooldown_over(self, channel: int) -> None:
        peer, _ = self._cooldown_channels.pop(channel)
        self._cooldown_peers.pop(peer, None)

    # -- the relay hot path ------------------------------------------------------

    def take_counters(self) -> None:
        """
        Add what the fast path relayed since last asked to the counters
        (for metrics; a deleted allocation's are complete).
        """
        if self._slot is not None:
            self._count(self._forwarding.take_counters(self._slot))

    def _count(self, counters: tuple[int, int, int, int]) -> None:
        self.to_peers_packets += counters[0]
        self.to_peers_bytes += counters[1]
        self.to_client_packets += counters[2]
        self.to_client_bytes += counters[3]

    def sent_to(self, relay: IRelay, peer: Address) -> None:
        """
        A Send indication's data went to C{peer}: the fast path may send
        the next ones itself.
        """
        if self._slot is not None:
            self._forwarding.send_seen(self._slot, relay, peer)

    def drop(self, reason: Counter) -> None:
        """
        Count a relayed packet dropped for C{reason}, for this allocation
        (its deletion event reports them) and for the server.  Only the
        drop path pays for it.
        """
        if self.dropped is _NO_DROPS:
            self.dropped = collections.Counter()
        self.dropped[reason] += 1
        self._tally(reason)

    def from_client_channel(self, channel: int, data: bytes, length: int) -> None:
        """
        ChannelData from the client: send its payload to the bound peer.
        Unbound channels are dropped, as RFC 8656 section 12.4 says.
        """
        entry = self.channels.get(channel)
        if entry is None:
            self.drop(Counter.DROPPED_UNBOUND_CHANNEL)
            return
        if self.bandwidth is not None and not self.bandwidth.take(length):
            self.drop(Counter.DROPPED_BANDWIDTH)
            return
        entry[1].send(data[4 : 4 + length], entry[0])
        self.to_peers_packets += 1
        self.to_peers_bytes += length

    def from_peer(self, data: bytes, peer: Address) -> None:
        """
        A datagram a peer sent to a relay: dropped without a permission,
        else ChannelData when a channel is bound to the peer, else a Data
        indication.
        """
        if peer[0] not in self.permissions:
            self.drop(Counter.DROPPED_NO_PERMISSION)
            return
        if self.bandwidth is not None and not self.bandwidth.take(len(data)):
            self.drop(Counter.DROPPED_BANDWIDTH)
            return
        channel = self.peer_channels.get(peer)
        if channel is not None:
            self._send_to_client(encode_channel_data(channel, data, self._pad), self.client_address)
        elif len(data) <= MAX_INDICATION_DATA:
            self._send_to_client(self.data_indication(peer, Attr.DATA, data), self.client_address)
        else:
            self.drop(Counter.DROPPED_OVERSIZE)
            return
        self.to_client_packets += 1
        self.to_client_bytes += len(data)
        if self._slot is not None:
            # The fast path relays the next ones from this peer itself.
            relay = self.relays.get(host_family(peer[0]))
            self._forwarding.peer_seen(
                self._slot, relay, peer, self.client, self.client_address, channel or 0
            )

    def icmp_from_peer(self, peer: Address, icmp_type: int, icmp_code: int, info: int) -> None:
        """
        An ICMP error about a datagram we relayed to C{peer}: reported to
        the client as a Data indication with an ICMP attribute (RFC 8656
        section 11.5), if the peer has a permission.
        """
        if peer[0] in self.permissions:
            value = pack_icmp((icmp_type, icmp_code, info))
            self._send_to_client(self.data_indication(peer, Attr.ICMP, value), self.client_address)

    def data_indication(self, peer: Address, attr_type: int, value: bytes) -> bytes:
        """
        A Data indication from C{peer} carrying DATA or ICMP, with a
        transaction id unique to this allocation.
        """
        counter = next(_txid_counter) & 0xFFFFFFFF
        attributes = self._peer_attributes
        attribute = attributes.get(peer)
        if attribute is None and ":" not in peer[0]:
            if attributes is _EMPTY:
                attributes = self._peer_attributes = {}
            if len(attributes) >= MAX_KEPT_PEER_ATTRIBUTES:
                attributes.clear()
            attribute = attributes[peer] = xor_peer_attribute(peer, b"")
        return encode_data_indication(self._txid_prefix, counter, peer, attr_type, value, attribute)


def _discard(data: bytes, peer: Address) -> None:
    """
    The receiver of a closed relay: drops what is still queued.
    """


def _discard_icmp(peer: Address, icmp_type: int, icmp_code: int, info: int) -> None:
    pass
