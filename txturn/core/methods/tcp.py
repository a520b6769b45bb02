# -*- test-case-name: tests.test_tcp_allocation -*-
"""
TCP allocations (RFC 6062): Connect, ConnectionBind and the
ConnectionAttempt a peer's connection earns, next to the peer data
connections they create (L{PeerConnections}).

The allocation itself (a TCP relay, its lifetime, its permissions) is the
core's, like any other; this module holds what only TCP allocations do.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from txturn.core.allocation import Allocation
from txturn.core.counters import Counter
from txturn.core.events import DataConnectionOpened
from txturn.core.interfaces import IPeerConnection, IStreamClientChannel, host_port
from txturn.core.methods.peers import PeerRequests
from txturn.core.request import Request
from txturn.util.log_level import logger
from txturn.wire.stun import Attr, Class, Message, Method, encode

if TYPE_CHECKING:
    from txturn.core.state import CoreState


class TcpAllocations:
    """
    The RFC 6062 methods of one state.
    """

    log = logger()

    def __init__(self, state: "CoreState", peer_requests: PeerRequests) -> None:
        self._state = state
        #: The one check of a peer address that every path shares.
        self._peer_requests = peer_requests
        self.peer_connections = state.peer_connections

    def peer_connected(self, allocation: Allocation, connection: IPeerConnection) -> None:
        """
        A peer opened a connection to a TCP relay (RFC 6062 section 5.3):
        closed at once without a permission (or against policy), else
        announced to the client with a ConnectionAttempt indication.
        """
        state = self._state
        peer = connection.peer_address
        if (
            allocation.closed
            or peer[0] not in allocation.permissions
            or not state.policy.allows_peer(peer[0], peer[1])
            or not allocation.policy.allows(peer[0])
        ):
            if not allocation.closed:
                state.count(Counter.REFUSED_PEER)
            connection.close()
            return
        if self._too_many_pending(allocation):
            connection.close()
            return
        connection_id = self.peer_connections.add(allocation, connection)
        indication = Message(Method.CONNECTION_ATTEMPT, Class.INDICATION, secrets.token_bytes(12))
        indication.add(Attr.XOR_PEER_ADDRESS, peer)
        indication.add(Attr.CONNECTION_ID, connection_id)
        allocation.client.send(encode(indication, add_fingerprint=True), allocation.client_address)

    def _too_many_pending(self, allocation: Allocation) -> bool:
        limit = self._state.config.max_pending_connections
        if limit and self.peer_connections.unbound_count(allocation) >= limit:
            self._state.count(Counter.MAX_PENDING_CONNECTIONS)
            return True
        return False

    def connect(self, request: Request) -> None:
        """
        RFC 6062 section 5.2: open a connection from the relayed address to
        a peer, concurrently with others, within the connect timeout.
        """
        state = self._state
        allocation = state.allocation_for(request)
        if allocation is None:
            return
        if not allocation.tcp:
            return request.fail(400, "Connect needs a TCP allocation")
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if peer is None:
            return request.fail(400, "Missing XOR-PEER-ADDRESS")
        code = self._peer_requests.peer_error(allocation, peer)
        if code is not None:
            return request.fail(code)
        if peer in self.peer_connections.peers_of(allocation):
            return request.fail(446)
        if self._too_many_pending(allocation):
            return request.fail(508)
        relay: Any = allocation.relay_for(peer[0])
        connecting = self.peer_connections.connecting.setdefault(allocation, set())
        connecting.add(peer)
        attempt = relay.connect(peer)
        attempt.addTimeout(state.config.tcp_connect_timeout, state.reactor)

        def connected(connection: IPeerConnection) -> None:
            connecting.discard(peer)
            if allocation.closed:
                connection.close()
                return
            connection_id = self.peer_connections.add(allocation, connection)
            request.succeed((Attr.CONNECTION_ID, connection_id))

        def failed(reason: Any) -> None:
            connecting.discard(peer)
            self.log.info(
                "Connect from {relay} to {peer} failed: {reason}",
                relay=host_port(relay.address),
                peer=host_port(peer),
                reason=reason.getErrorMessage(),
            )
            if not allocation.closed:
                request.fail(447)

        attempt.addCallbacks(connected, failed)

    def connection_bind(self, request: Request) -> None:
        """
        RFC 6062 section 5.4: turn this new connection into the client data
        connection of a pending peer data connection.
        """
        state = self._state
        if not request.client.stream:
            return request.fail(400, "ConnectionBind needs a TCP or TLS connection")
        if state.has_allocation(request.client):
            return request.fail(400, "A control connection cannot be a data connection")
        connection_id = request.get(Attr.CONNECTION_ID)
        if connection_id is not None:
            owner = self.peer_connections.owner(connection_id)
            if owner != self.peer_connections.worker and IStreamClientChannel(
                request.client
            ).hand_off(owner, request.message.raw):
                state.count(Counter.HANDED_OFF)
                return
        entry = self.peer_connections.pending(connection_id)
        if entry is None:
            return request.fail(400, "Missing or unknown CONNECTION-ID")
        if entry.allocation.username != request.username:
            return request.fail(441)
        self.peer_connections.claim(entry.connection_id)
        request.succeed()
        IStreamClientChannel(request.client).attach(entry.connection)
        state.emit(
            DataConnectionOpened(
                entry.allocation.id, entry.connection_id, entry.connection.peer_address
            )
        )
