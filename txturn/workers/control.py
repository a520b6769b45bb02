# -*- test-case-name: tests.test_workers -*-
"""
What the supervisor and its workers say to each other, over one AMP
connection per worker on a Unix socket pair.

 - L{Scrape}: the supervisor asks a worker for its metrics, to sum them
   into the one C{/metrics} page (L{txturn.workers.summed_metrics}).
 - L{Ready}: a worker has started and listens.
 - L{FetchReservation}: a worker asks for an EVEN-PORT reservation
   another worker holds; the supervisor asks that one to
   L{GiveReservation}, and the relay's socket comes back the same way.
 - L{SessionsCall}: the supervisor's sessions API asks a worker about its
   sessions (L{txturn.sessions.backend.LocalSessions}), in JSON.
 - L{HandOff}: a worker gives a client's TCP connection (its descriptor,
   with C{SCM_RIGHTS}) and the ConnectionBind read from it to the
   supervisor for another worker, which passes it on: the RFC 6062 data
   connection reaches the worker holding the peer connection.

Signals, not messages, carry reload, drain and stop: they are what an
operator already sends one process.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure


class QuietAMP(amp.AMP):
    """
    AMP without its log lines for every connection made and lost: the
    supervisor says when a worker starts and ends, once.
    """

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class Scrape(amp.Command):
    """
    The worker's metrics as JSON (L{txturn.workers.summed_metrics.to_json}).
    """

    arguments = []
    response = [(b"families", amp.Unicode())]


class SessionsCall(amp.Command):
    """
    One question of the sessions API to a worker: C{action} is a method
    of L{txturn.sessions.backend.LocalSessions} (page, one, end,
    end_user, status), C{arguments} and C{result} JSON.  A page is asked
    for with C{max_bytes}, so every answer fits an AMP value.
    """

    arguments = [(b"action", amp.Unicode()), (b"arguments", amp.Unicode())]
    response = [(b"result", amp.Unicode())]


class HandOff(amp.Command):
    """
    A client's TCP connection for worker C{worker}, with the ConnectionBind
    C{frame} already read from it.  C{accepted} is whether that worker
    took it (it is restarting, or refused the connection, otherwise).
    """

    arguments = [
        (b"worker", amp.Integer()),
        (b"connection", amp.Descriptor()),
        (b"family", amp.Integer()),
        (b"frame", amp.String()),
        (b"transport", amp.Unicode()),
        # For a connection forwarded over a socket pair (TLS): the
        # client's host and port and the server's, else empty.
        (b"forwarded", amp.ListOf(amp.Unicode())),
    ]
    response = [(b"accepted", amp.Boolean())]


class Ready(amp.Command):
    """
    The worker is listening: from now on, if it ends, the supervisor
    starts another; a worker that ends before it is ready stops the
    server instead, with the worker's error, since its replacement would
    fail the same way.
    """

    arguments = []
    response = []


class FetchReservation(amp.Command):
    """
    The reservation C{owner} holds under C{token} on worker C{worker}: its
    relay's socket, if C{found}.
    """

    arguments = [
        (b"worker", amp.Integer()),
        (b"token", amp.String()),
        (b"owner", amp.Unicode()),
    ]
    response = [(b"found", amp.Boolean()), (b"relay", amp.Descriptor(optional=True))]


class GiveReservation(amp.Command):
    """
    The supervisor, to the worker holding C{token}: give it up.
    """

    arguments = [(b"token", amp.String()), (b"owner", amp.Unicode())]
    response = [(b"found", amp.Boolean()), (b"relay", amp.Descriptor(optional=True))]
