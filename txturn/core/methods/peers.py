# -*- test-case-name: tests.test_server -*-
"""
What a client asks about its peers (RFC 8656 sections 9-12):
CreatePermission, ChannelBind and the Send indication, and the one check
of a peer address that every path to a peer shares (RFC 6062's Connect
included), so that no path can be more generous than another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from txturn.core.allocation import Allocation
from txturn.core.counters import Counter
from txturn.core.interfaces import Address, IClientChannel, host_port
from txturn.core.request import Request
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle
from txturn.wire.stun import Attr, Message

if TYPE_CHECKING:
    from txturn.core.state import CoreState

CHANNEL_MIN = 0x4000
#: RFC 8656 narrowed channels to 0x4FFF, but RFC 5766 clients (coturn's
#: turnutils_uclient among them) pick numbers up to 0x7FFF, and coturn
#: accepts them; so do we.
CHANNEL_MAX = 0x7FFF


class PeerRequests:
    """
    The peer-facing methods of one state.
    """

    log = logger()

    def __init__(self, state: "CoreState") -> None:
        self._state = state
        self._refusals = LogThrottle(state.reactor)

    def peer_error(
        self, allocation: Allocation, peer: Address, port_matters: bool = True
    ) -> int | None:
        """
        The error code a peer address earns on any path, or C{None}.
        CreatePermission ignores the port (a permission is per IP).
        """
        if allocation.relay_for(peer[0]) is None:
            return 443
        policy = self._state.policy
        allowed = policy.allows_peer(peer[0], peer[1]) if port_matters else policy.allows(peer[0])
        # The credential's own ranges narrow the server's policy, never
        # widen it: a peer must pass both.
        if not allowed or not allocation.policy.allows(peer[0]):
            self._state.count(Counter.REFUSED_PEER)
            reason = (
                policy.explain(peer[0], peer[1])
                if not allowed
                else "outside the credential's peer ranges"
            )
            # A client can ask for refused peers at will, each address a new
            # reason: one line a minute in all, with the count of the rest.
            self._refusals.emit(
                "refused peer",
                self.log.info,
                "Refused peer {peer} for {user}: {reason}",
                peer=host_port(peer),
                user=allocation.username,
                reason=reason,
            )
            return 403
        return None

    def create_permission(self, request: Request) -> None:
        allocation = self._state.allocation_for(request)
        if allocation is None:
            return
        peers = request.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            return request.fail(400, "Missing XOR-PEER-ADDRESS")
        for peer in peers:
            code = self.peer_error(allocation, peer, port_matters=False)
            if code is not None:
                return request.fail(code)
        if self._too_many_permissions(allocation, {peer[0] for peer in peers}):
            return request.fail(508)
        for peer in peers:
            allocation.install_permission(peer[0])
        request.succeed()

    def channel_bind(self, request: Request) -> None:
        allocation = self._state.allocation_for(request)
        if allocation is None:
            return
        if allocation.tcp:
            return request.fail(400, "Channels need a UDP allocation")
        channel = request.get(Attr.CHANNEL_NUMBER)
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if channel is None or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            return request.fail(400, "Missing or invalid CHANNEL-NUMBER")
        if peer is None:
            return request.fail(400, "Missing XOR-PEER-ADDRESS")
        code = self.peer_error(allocation, peer)
        if code is not None:
            return request.fail(code)
        if allocation.channel_conflict(channel, peer):
            return request.fail(400, "Channel or peer already bound")
        if self._too_many_permissions(allocation, {peer[0]}) or self._too_many_channels(
            allocation, channel
        ):
            return request.fail(508)
        relay = allocation.relay_for(peer[0])
        assert relay is not None  # peer_error checked the family
        allocation.bind_channel(channel, peer, relay)
        request.succeed()

    def send_indication(self, client: IClientChannel, address: Address, message: Message) -> None:
        """
        A Send indication: relayed when well formed and permitted, else
        silently dropped, as indications get no answer.
        """
        if message.unknown_required():
            return
        peer = message.get(Attr.XOR_PEER_ADDRESS)
        data = message.get(Attr.DATA)
        if peer is not None and data is not None:
            self.relay_send(client, address, peer, data)

    def relay_send(
        self, client: IClientChannel, address: Address, peer: Address, data: bytes
    ) -> None:
        """
        Relay the DATA of a Send indication to C{peer}, if permitted: what
        L{send_indication} decoded, or what
        L{txturn.wire.stun.send_indication_parts} found without decoding.
        """
        state = self._state
        allocation = state.table.get(client, address)
        if allocation is None or allocation.tcp or peer[0] not in allocation.permissions:
            return
        relay = allocation.relay_for(peer[0])
        if relay is None:
            return
        policy = allocation.policy
        if not state.policy.allows_peer(peer[0], peer[1]) or (
            policy.peers is not None and not policy.allows(peer[0])
        ):
            allocation.drop(Counter.REFUSED_PEER)
            return
        if allocation.bandwidth is not None and not allocation.bandwidth.take(len(data)):
            allocation.drop(Counter.DROPPED_BANDWIDTH)
            return
        relay.send(data, peer)
        allocation.to_peers_packets += 1
        allocation.to_peers_bytes += len(data)
        allocation.sent_to(relay, peer)

    def _too_many_permissions(self, allocation: Allocation, hosts: set[str]) -> bool:
        limit = self._state.config.max_permissions
        if not limit:
            return False
        new = hosts - allocation.permissions.keys()
        if len(allocation.permissions) + len(new) > limit:
            self._state.count(Counter.MAX_PERMISSIONS)
            return True
        return False

    def _too_many_channels(self, allocation: Allocation, channel: int) -> bool:
        limit = self._state.config.max_channels
        if limit and channel not in allocation.channels and len(allocation.channels) >= limit:
            self._state.count(Counter.MAX_CHANNELS)
            return True
        return False
