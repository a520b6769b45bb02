# -*- test-case-name: tests.test_workers -*-
"""
What one worker passes to another, through the supervisor, when a
client's 5-tuple reached the wrong one for what it asks:

 - L{Handoff}: a RFC 6062 ConnectionBind arrives on a new TCP connection,
   which the kernel gave to any worker; the CONNECTION-ID says which
   worker holds the peer connection, and the client's connection (its
   descriptor, with C{SCM_RIGHTS}) goes there with the request; a TLS
   session cannot leave its process, so a TLS connection stays, and
   one end of a socket pair goes instead, the two joined by a L{Splice};
 - L{ReservationBroker}: an Allocate redeems an EVEN-PORT reservation
   another worker holds (the RTCP allocation of an RTP/RTCP pair comes
   from another client port); the token says which worker, and the
   reserved relay's socket comes here.

Both move a descriptor; only a TLS data connection's bytes pass through
the worker that decrypts them.  Once moved, the connection or relay is
the other worker's like any other.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from zope.interface import implementer

from txturn.core.interfaces import IConnectionHandoff, IHandOverRelay, IRelay, IReservationBroker
from txturn.core.server import TurnServer
from txturn.transports.joined import JoinedConnection
from txturn.util.log_level import logger
from txturn.workers.control import FetchReservation, HandOff

#: The most bytes a hand-off carries (the ConnectionBind and what the
#: client sent right behind it): one AMP value.  A larger one would make
#: C{callRemote} fail after the descriptor was queued on the control
#: connection, ending it, and with it the worker; a real ConnectionBind
#: is a few hundred bytes.
MAX_HANDOFF_FRAME = amp.MAX_VALUE_LENGTH

#: Seconds a descriptor sent in an AMP answer is kept open: the answer is
#: written (and the descriptor sent with it) on the next write the
#: reactor makes, well within this, and no answer to an answer comes.
SENT_DESCRIPTOR_GRACE = 10.0


@implementer(IConnectionHandoff)
class Handoff:
    """
    Gives a client connection to another worker, through the supervisor:
    a TCP connection's descriptor itself, a TLS connection's bytes
    through a splice.
    """

    log = logger()

    def __init__(self, control: Any, reactor: Any) -> None:
        self._control = control
        self._reactor = reactor

    def hand_off(self, worker: int, channel: Any, frame: bytes) -> bool:
        """
        Give C{channel} to worker C{worker}, or C{False} (the caller then
        answers here) if C{frame} cannot travel in one AMP value or the
        control connection refuses it: nothing is let go of here until
        the supervisor has been asked, and what was opened for it is
        closed if asking fails.
        """
        if len(frame) > MAX_HANDOFF_FRAME:
            self.log.info(
                "Not passing a {size}-byte ConnectionBind to worker {worker}: more than "
                "{limit} bytes",
                size=len(frame),
                worker=worker,
                limit=MAX_HANDOFF_FRAME,
            )
            return False
        pair: tuple[socket.socket, socket.socket] | None = None
        if channel.transport_name == "tcp":
            family = channel.transport.getHandle().family
            descriptor, forwarded = os.dup(channel.transport.getHandle().fileno()), []
        else:
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            descriptor, family = pair[1].fileno(), socket.AF_UNIX
            (peer_host, peer_port), (local_host, local_port) = (
                channel.peer_address,
                channel.local_address,
            )
            forwarded = [peer_host, str(peer_port), local_host, str(local_port)]
        try:
            answer = self._control.callRemote(
                HandOff,
                worker=worker,
                connection=descriptor,
                family=int(family),
                frame=frame,
                transport=channel.transport_name,
                forwarded=forwarded,
            )
        except Exception:
            self.log.failure("Could not pass a data connection to worker {worker}", worker=worker)
            if pair is None:
                os.close(descriptor)
            else:
                pair[0].close()
                pair[1].close()
            return False
        if pair is None:
            self._release(channel)
        else:
            descriptor = pair[1].detach()
            self._splice(channel, pair[0])
        answer.addBoth(self._done, worker, descriptor)
        return True

    @staticmethod
    def _release(channel: Any) -> None:
        """
        Forget a TCP connection whose descriptor another worker now has.
        """
        transport = channel.transport
        transport.stopReading()
        # Close this process's copy without shutdown(2), which would end
        # the connection for the worker it now belongs to.  (A documented
        # attribute of Twisted's TCP connection, there for adopted
        # sockets.)
        transport._shouldShutdown = False
        transport.loseConnection()

    def _splice(self, channel: Any, here: socket.socket) -> None:
        """
        A TLS session cannot leave this process: the other worker got the
        other end of the socket pair C{here} belongs to, with the
        client's addresses, and this connection becomes a splice to
        C{here}, decrypting here what the client sends and encrypting
        what the other worker answers, like a client data connection
        joined to its peer.
        """
        splice = Splice(channel.peer_address)
        self._reactor.adoptStreamConnection(
            here.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: splice)
        )
        here.close()
        channel.attach(splice)

    def _done(self, result: Any, worker: int, descriptor: int) -> None:
        os.close(descriptor)
        if not isinstance(result, dict) or not result.get("accepted"):
            self.log.info(
                "A data connection for worker {worker} was not taken (it is restarting)",
                worker=worker,
            )


class Splice(JoinedConnection):
    """
    This worker's end of a socket pair to the worker that took a TLS
    client's data connection: the client connection is attached to it as
    to a peer, so bytes flow both ways, each side the other's producer.
    """


@implementer(IReservationBroker)
class ReservationBroker:
    """
    Fetches reservations other workers hold, as relays of this worker's.

    @param adopt: makes a relay of a bound socket's descriptor
        (L{txturn.transports.udp_relay.UdpRelayAllocator.adopt}).
    """

    log = logger()

    def __init__(self, control: Any, adopt: Any) -> None:
        self._control = control
        self._adopt = adopt

    def fetch(self, worker: int, token: bytes, owner: str) -> defer.Deferred[IRelay | None]:
        answer = self._control.callRemote(FetchReservation, worker=worker, token=token, owner=owner)

        def received(result: dict[str, Any]) -> IRelay | None:
            descriptor = result.get("relay")
            if not result.get("found") or descriptor is None:
                return None
            try:
                relay: IRelay = self._adopt(descriptor)
                return relay
            finally:
                os.close(descriptor)

        def failed(reason: Any) -> None:
            self.log.warn(
                "Could not fetch a reservation from worker {worker}: {error}",
                worker=worker,
                error=reason.getErrorMessage(),
            )
            return None

        d: defer.Deferred[IRelay | None] = answer.addCallback(received)
        return d.addErrback(failed)


def give_reservation(server: TurnServer, reactor: Any, token: bytes, owner: str) -> dict[str, Any]:
    """
    The answer of the worker holding C{token} to L{GiveReservation}: the
    relay's socket, the reservation gone from here.
    """
    relay = server.take_reservation(token, owner)
    if relay is None:
        return {"found": False}
    descriptor = IHandOverRelay(relay).hand_over()
    reactor.callLater(SENT_DESCRIPTOR_GRACE, os.close, descriptor)
    return {"found": True, "relay": descriptor}
