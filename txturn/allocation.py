# -*- test-case-name: tests.test_server -*-
"""
One TURN allocation: its relay, permissions and channel bindings, and the
timers that expire them.

Every lifetime is an C{IDelayedCall} on the injected reactor, reset when
refreshed, so the relay hot path never reads a clock: a permission or a
channel exists in its dict exactly as long as it is valid.

The two relay directions live here as the two methods the hot path calls
(L{Allocation.from_client_channel} and L{Allocation.from_peer}); each is a
couple of dict lookups and one socket send.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txturn.interfaces import Address, IClientChannel, IRelay
from txturn.stun import (
    CHANNEL_DATA_HEADER,
    MAGIC_COOKIE_BYTES,
    Attr,
    Class,
    Method,
    message_type,
    pack_xor_address,
    padding,
)

PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
#: After a channel binding expires, neither its number nor its peer may be
#: bound to anything else for this long (RFC 8656 section 12).
CHANNEL_COOLDOWN = 300.0

_DATA_INDICATION_TYPE = message_type(Method.DATA, Class.INDICATION)
_INDICATION_HEADER = struct.Struct("!HH4s8sI")
_ATTR_HEADER = struct.Struct("!HH")
_txid_counter = itertools.count()


class Allocation:
    """
    The state RFC 8656 keeps per 5-tuple.

    @ivar client: the channel the client speaks on; with C{client_address}
        the 5-tuple.
    @ivar permissions: peer IP -> the timer that removes it.
    @ivar channels: channel number -> peer address.
    @ivar peer_channels: peer address -> channel number.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        client: IClientChannel,
        client_address: Address,
        relay: IRelay,
        username: str,
        lifetime: float,
        on_expire: Callable[["Allocation"], None],
    ) -> None:
        self._reactor = reactor
        self.client = client
        self.client_address = client_address
        self.relay = relay
        self.username = username
        self.permissions: dict[str, IDelayedCall] = {}
        self.channels: dict[int, Address] = {}
        self.peer_channels: dict[Address, int] = {}
        self._channel_timers: dict[int, IDelayedCall] = {}
        self._cooldown_channels: dict[int, tuple[Address, IDelayedCall]] = {}
        self._cooldown_peers: dict[Address, int] = {}
        self._on_expire = on_expire
        self._expiry: IDelayedCall = reactor.callLater(lifetime, self._expired)
        #: The Allocate transaction that made this allocation and the
        #: response it got, so a retransmission gets the same answer.
        self.allocate_transaction: bytes = b""
        self.allocate_response: bytes = b""
        self.closed = False
        self._txid_prefix = os.urandom(8)
        self._send_to_client = client.send
        relay.receiver = self.from_peer

    # -- lifetime --------------------------------------------------------------

    def refresh(self, lifetime: float) -> None:
        self._expiry.reset(lifetime)

    def expires_in(self) -> float:
        return self._expiry.getTime() - self._reactor.seconds()

    def _expired(self) -> None:
        self.log.info(
            "Allocation for {user} from {client} on relay {relay} expired",
            user=self.username,
            client=self.client_address,
            relay=self.relay.address,
        )
        self._on_expire(self)

    def close(self) -> object:
        """
        Cancel every timer and close the relay; returns what the relay's
        close returns (a Deferred for a real port).
        """
        if self.closed:
            return None
        self.closed = True
        for call in itertools.chain(
            [self._expiry],
            self.permissions.values(),
            self._channel_timers.values(),
            (call for _, call in self._cooldown_channels.values()),
        ):
            if call.active():
                call.cancel()
        self.permissions.clear()
        self.channels.clear()
        self.peer_channels.clear()
        self._channel_timers.clear()
        self._cooldown_channels.clear()
        self._cooldown_peers.clear()
        self.relay.receiver = _discard
        return self.relay.close()

    # -- permissions -----------------------------------------------------------

    def install_permission(self, host: str) -> None:
        """
        Install or refresh the permission for peer IP C{host} (300 s).
        """
        call = self.permissions.get(host)
        if call is not None and call.active():
            call.reset(PERMISSION_LIFETIME)
        else:
            self.permissions[host] = self._reactor.callLater(
                PERMISSION_LIFETIME, self.permissions.pop, host, None
            )

    # -- channels --------------------------------------------------------------

    def channel_conflict(self, channel: int, peer: Address) -> bool:
        """
        Whether binding C{channel} to C{peer} breaks RFC 8656 section 12.2:
        a channel bound (or recently bound) to another peer, or the peer
        bound (or recently bound) to another channel.
        """
        bound = self.channels.get(channel)
        if bound is None and channel in self._cooldown_channels:
            bound = self._cooldown_channels[channel][0]
        if bound is not None and bound != peer:
            return True
        other = self.peer_channels.get(peer, self._cooldown_peers.get(peer))
        return other is not None and other != channel

    def bind_channel(self, channel: int, peer: Address) -> None:
        """
        Bind or refresh C{channel} to C{peer} (600 s) and refresh the
        peer's permission, as a successful ChannelBind does.
        """
        cooled = self._cooldown_channels.pop(channel, None)
        if cooled is not None:
            cooled[1].cancel()
            self._cooldown_peers.pop(cooled[0], None)
        timer = self._channel_timers.get(channel)
        if timer is not None and timer.active():
            timer.reset(CHANNEL_LIFETIME)
        else:
            self.channels[channel] = peer
            self.peer_channels[peer] = channel
            self._channel_timers[channel] = self._reactor.callLater(
                CHANNEL_LIFETIME, self._channel_expired, channel
            )
        self.install_permission(peer[0])

    def _channel_expired(self, channel: int) -> None:
        peer = self.channels.pop(channel)
        del self.peer_channels[peer]
        del self._channel_timers[channel]
        self._cooldown_peers[peer] = channel
        self._cooldown_channels[channel] = (
            peer,
            self._reactor.callLater(CHANNEL_COOLDOWN, self._cooldown_over, channel),
        )

    def _cooldown_over(self, channel: int) -> None:
        peer, _ = self._cooldown_channels.pop(channel)
        self._cooldown_peers.pop(peer, None)

    # -- the relay hot path ------------------------------------------------------

    def from_client_channel(self, channel: int, data: bytes, length: int) -> None:
        """
        ChannelData from the client: send its payload to the bound peer.
        Unbound channels are dropped, as RFC 8656 section 12.4 says.
        """
        peer = self.channels.get(channel)
        if peer is not None:
            self.relay.send(data[4 : 4 + length], peer)

    def send_to_peer(self, data: bytes, peer: Address) -> None:
        """
        A Send indication's DATA, already checked against the permissions.
        """
        self.relay.send(data, peer)

    def from_peer(self, data: bytes, peer: Address) -> None:
        """
        A datagram a peer sent to the relay: dropped without a permission,
        else ChannelData when a channel is bound to the peer, else a Data
        indication.
        """
        if peer[0] not in self.permissions:
            return
        channel = self.peer_channels.get(peer)
        if channel is not None:
            frame = CHANNEL_DATA_HEADER.pack(channel, len(data)) + data
            if self.client.transport_name != "udp":
                frame += b"\x00" * padding(len(data))
            self._send_to_client(frame, self.client_address)
        else:
            self._send_to_client(self.data_indication(data, peer), self.client_address)

    def data_indication(self, data: bytes, peer: Address) -> bytes:
        """
        Encode a Data indication carrying C{data} from C{peer}.

        The transaction id is a per-allocation random prefix and a counter:
        unique, as indications need, without a random draw per packet.
        """
        counter = next(_txid_counter) & 0xFFFFFFFF
        txid = self._txid_prefix + counter.to_bytes(4, "big")
        peer_value = pack_xor_address(peer, txid)
        pad = padding(len(data))
        body_length = 4 + len(peer_value) + 4 + len(data) + pad
        return b"".join(
            (
                _INDICATION_HEADER.pack(
                    _DATA_INDICATION_TYPE,
                    body_length,
                    MAGIC_COOKIE_BYTES,
                    self._txid_prefix,
                    counter,
                ),
                _ATTR_HEADER.pack(Attr.XOR_PEER_ADDRESS, len(peer_value)),
                peer_value,
                _ATTR_HEADER.pack(Attr.DATA, len(data)),
                data,
                b"\x00" * pad,
            )
        )


def _discard(data: bytes, peer: Address) -> None:
    """
    The receiver of a closed allocation's relay: drops what is still queued.
    """
