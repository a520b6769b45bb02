# -*- test-case-name: tests.test_workers -*-
"""
What one worker passes to another, through the supervisor, when a
client's 5-tuple reached the wrong one for what it asks:

 - L{Handoff}: a RFC 6062 ConnectionBind arrives on a new TCP connection,
   which the kernel gave to any worker; the CONNECTION-ID says which
   worker holds the peer connection, and the client's connection (its
   descriptor, with C{SCM_RIGHTS}) goes there with the request;
 - L{ReservationBroker}: an Allocate redeems an EVEN-PORT reservation
   another worker holds (the RTCP allocation of an RTP/RTCP pair comes
   from another client port); the token says which worker, and the
   reserved relay's socket comes here.

Both move a descriptor, never a byte of relayed data: once moved, the
connection or relay is this worker's like any other.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txturn.interfaces import IConnectionHandoff, IRelay, IReservationBroker
from txturn.log_level import logger
from txturn.workers.control import FetchReservation, HandOff

#: Seconds a descriptor sent in an AMP answer is kept open: the answer is
#: written (and the descriptor sent with it) on the next write the
#: reactor makes, well within this, and no answer to an answer comes.
SENT_DESCRIPTOR_GRACE = 10.0


@implementer(IConnectionHandoff)
class Handoff:
    """
    Gives a TCP client connection to another worker, through the
    supervisor.
    """

    log = logger()

    def __init__(self, control: Any) -> None:
        self._control = control

    def hand_off(self, worker: int, transport: Any, transport_name: str, frame: bytes) -> bool:
        if transport_name != "tcp":
            # A TLS session lives in this process's memory.
            return False
        handle = transport.getHandle()
        descriptor = os.dup(handle.fileno())
        transport.stopReading()
        # Close this process's copy without shutdown(2), which would end
        # the connection for the worker it now belongs to.  (A documented
        # attribute of Twisted's TCP connection, there for adopted
        # sockets.)
        transport._shouldShutdown = False
        transport.loseConnection()
        answer = self._control.callRemote(
            HandOff, worker=worker, connection=descriptor, family=int(handle.family), frame=frame
        )

        def done(result: Any) -> None:
            os.close(descriptor)
            if not isinstance(result, dict) or not result.get("accepted"):
                self.log.info(
                    "A data connection for worker {worker} was not taken (it is restarting)",
                    worker=worker,
                )

        answer.addBoth(done)
        return True


@implementer(IReservationBroker)
class ReservationBroker:
    """
    Fetches reservations other workers hold, as relays of this worker's.

    @param adopt: makes a relay of a bound socket's descriptor
        (L{txturn.udp_relay.UdpRelayAllocator.adopt}).
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


def give_reservation(server: Any, reactor: Any, token: bytes, owner: str) -> dict[str, Any]:
    """
    The answer of the worker holding C{token} to L{GiveReservation}: the
    relay's socket, the reservation gone from here.
    """
    relay = server.reservations.take(token, owner)
    if relay is None:
        return {"found": False}
    descriptor = relay.hand_over()
    reactor.callLater(SENT_DESCRIPTOR_GRACE, os.close, descriptor)
    return {"found": True, "relay": descriptor}
