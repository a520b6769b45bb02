# -*- test-case-name: tests.test_server -*-
"""
The small interfaces between the sans-io TURN core and the sockets.

The core (L{txturn.core.server.TurnServer}) never sees a transport: it answers
clients through an L{IClientChannel} and reaches peers through an
L{IRelay} that an L{IRelayAllocator} opened for it.  Tests provide fakes of
all three (L{txturn.testing}); the service provides the real ones.
"""

from __future__ import annotations

from typing import Any, Callable

from zope.interface import Attribute, Interface

Address = tuple[str, int]


def host_port(address: Address) -> str:
    """
    An address as logs show it: C{host:port}, C{[v6]:port}.
    """
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


PeerReceiver = Callable[[bytes, Address], None]
IcmpReceiver = Callable[[Address, int, int, int], None]


class IClientChannel(Interface):
    """
    One listening socket (UDP) or connection (TCP/TLS) that clients speak
    TURN on; with the client's address it is the allocation's 5-tuple.
    """

    transport_name = Attribute("'udp', 'tcp', 'tls' or 'dtls', for logs and events.")
    local_address = Attribute("The (host, port) the client sent to.")
    stream = Attribute(
        "Whether this is a TCP or TLS connection: ChannelData to it is "
        "padded to 4 bytes, and it provides IStreamClientChannel."
    )
    forwarding_handle = Attribute(
        "The descriptor the fast path (L{txturn.core.forwarding.IForwarding})"
        " knows this channel by, or None where it does not read it (streams,"
        " IPv6, no compiled fast path)."
    )

    def send(data: bytes, address: Address) -> None:
        """
        Send one STUN message or ChannelData frame to the client at
        C{address}.  Must not raise: a lost datagram is the network's.
        """


class IStreamClientChannel(IClientChannel):
    """
    A TCP or TLS connection, which RFC 6062 can turn into a client data
    connection.
    """

    def attach(peer: "IPeerConnection") -> None:
        """
        From now on carry raw bytes to and from C{peer} (after a
        successful ConnectionBind).
        """

    def hand_off(worker: int, frame: bytes) -> bool:
        """
        Give this connection, and the ConnectionBind C{frame} read from
        it, to worker C{worker} of C{--workers N}, which holds the peer
        connection the request names; from now on that worker answers on
        it.  C{False} if the connection cannot be handed off (then the
        caller answers the request here).
        """


class IConnectionHandoff(Interface):
    """
    Passes a client's TCP connection to another worker of C{--workers N}
    (L{txturn.workers.transfers}).
    """

    def hand_off(worker: int, channel: Any, frame: bytes) -> bool:
        """
        Give the client connection C{channel} (a stream protocol), with
        the C{frame} already read from it, to worker C{worker}, which
        answers C{frame} on it; C{False} if it cannot be given.
        """


class IReservationBroker(Interface):
    """
    Fetches an EVEN-PORT reservation another worker of C{--workers N}
    holds (L{txturn.workers.transfers}).
    """

    def fetch(worker: int, token: bytes, owner: str) -> Any:
        """
        A Deferred firing with the relay C{owner} reserved under C{token}
        on worker C{worker}, now this worker's, or with C{None} if there
        is no such reservation.  Never fails.
        """


class IRelay(Interface):
    """
    One relayed transport address: a socket the server sends to peers from.
    """

    address = Attribute("The (host, port) the relay socket is bound to.")
    advertised = Attribute(
        "The (host, port) clients are told (XOR-RELAYED-ADDRESS): the bound"
        " address, or its public side behind a 1:1 NAT (--external-ip)."
    )
    receiver = Attribute(
        "A callable (data, peer_address) given every datagram from a peer; set by the core."
    )
    icmp_receiver = Attribute(
        "A callable (peer_address, icmp_type, icmp_code, info) given every"
        " ICMP error the OS reports for datagrams sent to peers; set by the core."
    )
    forwarding_handle = Attribute(
        "The descriptor the fast path knows this relay by, or None where it does not read it."
    )

    def send(data: bytes, address: Address) -> None:
        """
        Send C{data} to a peer.  Must not raise.
        """

    def set_dont_fragment(enabled: bool) -> None:
        """
        Set (or clear) the DF bit on packets to peers, where the OS can.
        """

    def close() -> object:
        """
        Stop listening; returns a Deferred (or None) that fires when the
        port is released.
        """


class IHandOverRelay(IRelay):
    """
    A relay whose socket can move to another worker of C{--workers N}
    (an EVEN-PORT reservation redeemed there).
    """

    def hand_over() -> int:
        """
        A duplicate of the relay's socket, for another worker; the relay
        is closed here (its port stays bound by the duplicate).
        """


class IRelayAllocator(Interface):
    """
    Opens relay sockets from the configured addresses and port range.
    """

    families = Attribute("The STUN address families (1, 2) relays can have.")

    def open(family: int, even: bool, reserve_next: bool) -> tuple[IRelay, IRelay | None]:
        """
        Open a relay of C{family}.  With C{even}, its port is even; with
        C{reserve_next}, the next port up is opened too and returned as
        the second item, for a later RESERVATION-TOKEN.

        @raise RelayUnavailable: if the family has no relay
            address or the port range is exhausted.
        """


class RelayUnavailable(Exception):
    """
    No relay could be opened: C{family_unsupported} says whether the server
    has no address of that family (440) or the port range is used up (508).
    """

    def __init__(self, message: str, family_unsupported: bool = False) -> None:
        super().__init__(message)
        self.family_unsupported = family_unsupported


class IPeerConnection(Interface):
    """
    A peer data connection of a TCP allocation (RFC 6062): a TCP
    connection between a relayed transport address and a peer.

    Until it is attached to a client data connection it buffers what the
    peer sends, up to a limit past which it closes itself.
    """

    peer_address = Attribute("The peer's (host, port).")
    on_lost = Attribute("A callable (connection) called once when it closes; set by the core.")

    def attach(client: object) -> None:
        """
        Join this connection to a client data connection's transport:
        flush what was buffered to it, then relay both ways with
        end-to-end flow control.
        """

    def write(data: bytes) -> None:
        """
        Send bytes from the client data connection to the peer.
        """

    def close() -> None:
        """
        Close the connection to the peer.
        """


class ITcpRelay(Interface):
    """
    A TCP relayed transport address: a listening socket, and outgoing
    connections made from the same address and port.
    """

    address = Attribute("The (host, port) the relay is bound to.")
    advertised = Attribute("The (host, port) clients are told.")
    on_connection = Attribute(
        "A callable (IPeerConnection) given every connection a peer opens; set by the core."
    )

    def connect(peer: Address) -> object:
        """
        Open a peer data connection to C{peer} from the relayed address;
        returns a Deferred firing with an L{IPeerConnection}, or failing.
        Cancelling the Deferred abandons the attempt.
        """

    def close() -> object:
        """
        Stop listening and close every data connection of this relay.
        """


class ITcpRelayAllocator(Interface):
    """
    Opens TCP relays in the configured addresses and port range.
    """

    families = Attribute("The STUN address families TCP relays can have.")

    def open_tcp(family: int) -> ITcpRelay:
        """
        @raise RelayUnavailable: as L{IRelayAllocator.open}.
        """
