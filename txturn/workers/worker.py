# -*- test-case-name: tests.test_workers -*-
"""
One worker of C{--workers N}: C{python -m txturn.workers.worker}, started
by the supervisor (L{txturn.workers.supervisor}) and by nothing else.

The worker is the ordinary C{twistd turn} service (L{txturn.app.assembly.build_service})
given a L{Shard}: it reads the same command line and configuration file,
reloads on SIGHUP and drains on SIGQUIT like one process.  What it shares
comes from the supervisor on inherited descriptors:

 - 3: a JSON description (L{bootstrap}): its index, the argv, the
   listeners' descriptors, the keys every worker shares, the generated
   user;
 - 4: its end of the AMP connection to the supervisor
   (L{txturn.workers.control});
 - 5: the shared places (L{txturn.workers.shared_places});
 - 6 and up: its socket of each listener's C{SO_REUSEPORT} group.

Its log events go to standard output as JSON lines, which the supervisor
writes into the server's one log, marked with the worker's index.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, TextIO

from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import eventAsJSON, formatEvent, globalLogBeginner
from twisted.python.failure import Failure

from txturn.app.shard import Shard
from txturn.util.log_level import logger
from txturn.workers.control import (
    GiveReservation,
    HandOff,
    QuietAMP,
    Ready,
    Scrape,
    SessionsCall,
)
from txturn.workers.shared_places import SharedPlaces
from txturn.workers.summed_metrics import to_json
from txturn.workers.transfers import Handoff, ReservationBroker, give_reservation

#: What the supervisor's sessions API may ask a worker's LocalSessions.
SESSION_ACTIONS = frozenset({"page", "one", "end", "end_user", "status", "user_names"})

BOOTSTRAP_FD = 3
CONTROL_FD = 4
PLACES_FD = 5
#: A connection to the privileged reader (L{txturn.util.privileged}), if any.
PRIVILEGED_FD = 6
FIRST_LISTENER_FD = 7


def bootstrap(fd: int = BOOTSTRAP_FD) -> dict[str, Any]:
    """
    What the supervisor wrote for this worker, read once and closed.
    """
    with os.fdopen(fd, "rb") as f:
        f.seek(0)
        value: dict[str, Any] = json.loads(f.read())
    return value


class WorkerControl(QuietAMP):
    """
    The worker's end of its connection to the supervisor.  When the
    supervisor goes, so does the worker: nothing would restart it, sum
    its metrics or pass it data connections.
    """

    log = logger()

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self.service: Any = None

    @Scrape.responder
    def scrape(self) -> dict[str, str]:
        metrics = self.service.metrics if self.service is not None else None
        return {"families": to_json(metrics.registry) if metrics is not None else "[]"}

    @SessionsCall.responder
    def sessions_call(self, action: str, arguments: str) -> dict[str, str]:
        """
        The supervisor's sessions API asking about this worker's sessions.
        """
        sessions = getattr(self.service, "sessions", None)
        if sessions is None or action not in SESSION_ACTIONS:
            raise ValueError(f"no sessions action {action!r} here")
        result = getattr(sessions, action)(**json.loads(arguments))
        return {"result": json.dumps(result)}

    @HandOff.responder
    def handed(
        self,
        worker: int,
        connection: int,
        family: int,
        frame: bytes,
        transport: str,
        forwarded: list[str],
    ) -> dict[str, bool]:
        """
        A client's data connection, handed to this worker: adopt it into
        its listener's factory and read the ConnectionBind again.  A TLS
        connection comes as a socket pair its own worker decrypts, with
        the client's addresses.
        """
        try:
            factory = (
                self.service.stream_factory(transport, forwarded)
                if self.service is not None
                else None
            )
            if factory is None:
                return {"accepted": False}
            adopted = self._reactor.adoptStreamConnection(connection, family, factory)
        finally:
            os.close(connection)
        if adopted is None:
            return {"accepted": False}
        # Here for good: never passed on again, whatever it asks next.
        adopted.protocol.handed_in = True
        try:
            adopted.protocol.dataReceived(frame)
        except Exception:
            # Taken, and closed: a failure here must not reach AMP, whose
            # error would reach the worker that passed the connection.
            self.log.failure("A data connection handed to this worker failed")
            adopted.abortConnection()
        return {"accepted": True}

    @GiveReservation.responder
    def give(self, token: bytes, owner: str) -> dict[str, Any]:
        if self.service is None:
            return {"found": False}
        return give_reservation(self.service.server, self._reactor, token, owner)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self._reactor.running:
            self.log.warn("The supervisor has gone; stopping")
            self._reactor.stop()


def _log_to(out: TextIO) -> Any:
    def observe(event: dict[str, Any]) -> None:
        # The message rendered here, with its format specs ({duration:.0f}):
        # Twisted's JSON round trip keeps the fields but not the specs.
        frozen = dict(event)
        frozen["log_format"] = formatEvent(event).replace("{", "{{").replace("}", "}}")
        try:
            out.write(eventAsJSON(frozen) + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    return observe


def main() -> None:
    settings = bootstrap()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([_log_to(sys.stdout)], redirectStandardIO=False)

    from txturn.app.assembly import build_service
    from txturn.app.options import Options

    if settings.get("privileged"):
        from txturn.util import privileged

        privileged.install(privileged.PrivilegedReader(socket.socket(fileno=PRIVILEGED_FD)))
    options = Options()
    options.parseOptions(settings["argv"])
    if settings.get("generated_user"):
        options["credential-file-user"] = tuple(settings["generated_user"])
    index, count = settings["index"], settings["count"]
    control = WorkerControl(reactor)
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX, Factory.forProtocol(lambda: control))
    os.close(CONTROL_FD)
    listeners = {
        (name, host, port): socket.socket(fileno=fd)
        for name, host, port, fd in settings["listeners"]
    }
    shard = Shard(
        index,
        count,
        SharedPlaces(PLACES_FD, index, bytes.fromhex(settings["places_key"])),
        bytes.fromhex(settings["nonce_secret"]),
        listeners,
        Handoff(control, reactor),
        lambda adopt: ReservationBroker(control, adopt),
        xdp_maps=settings.get("xdp_maps"),
        xdp_mode=settings.get("xdp_mode", ""),
    )
    service = build_service(options, reactor, shard=shard, announce=settings.get("announce", False))
    control.service = service
    service.privilegedStartService()
    service.startService()
    for sock in listeners.values():
        sock.close()  # the reactor holds its own duplicates
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    control.callRemote(Ready)
    reactor.run()


if __name__ == "__main__":
    # Imported again through the package, so that the classes the service
    # uses are the same ones its modules name.
    from txturn.workers import worker

    worker.main()
