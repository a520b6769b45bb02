# -*- test-case-name: tests.test_workers -*-
"""
C{twistd turn --workers N}: a supervisor process that binds, and N worker
processes that relay.

The supervisor binds every listener once per worker, as a C{SO_REUSEPORT}
group (L{txturn.app.shard.bind_group}), before twistd drops
privileges, and keeps every socket of the group open for its whole life:
the kernel then never re-hashes one worker's clients onto another when a
worker dies, and the replacement is given the dead worker's own sockets
(C{bench/reuseport.py} measured the alternatives).  It owns what the
workers share: the places the quotas count, the nonce key, and the key
that hashes user names.  It starts the workers, writes their log events
into the one log, restarts a worker that ends (at once, then backing off
if it keeps ending), gives a dead worker's places back, forwards SIGHUP,
SIGUSR2 and SIGQUIT to every worker, stops them all on SIGTERM, passes
RFC 6062 data connections between them, and serves their summed metrics.

It relays nothing itself: one worker dying never takes the supervisor,
or the other workers' clients, with it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txturn.app import descriptors
from txturn.app.assembly import xdp_program
from txturn.app.health import add_health
from txturn.app.listeners import StartupError, listener_addresses
from txturn.app.options import Options
from txturn.app.shard import bind_group
from txturn.app.signals import SignalHandlers
from txturn.app.startup import logfile, metrics_listen
from txturn.app.systemd import SystemdNotifier
from txturn.util import privileged
from txturn.util.log_level import logger
from txturn.workers import shared_places
from txturn.workers.control import (
    FetchReservation,
    GiveReservation,
    HandOff,
    QuietAMP,
    Ready,
    Scrape,
)
from txturn.workers.summed_metrics import SummedMetrics
from txturn.workers.transfers import SENT_DESCRIPTOR_GRACE
from txturn.workers.worker import (
    BOOTSTRAP_FD,
    CONTROL_FD,
    FIRST_LISTENER_FD,
    PLACES_FD,
    PRIVILEGED_FD,
)

#: Seconds workers have to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 30.0
#: A worker that ends sooner than this after starting is restarted after
#: a delay that doubles each time, up to L{MAX_BACKOFF}.
STABLE_AFTER = 10.0
MAX_BACKOFF = 30.0
#: Seconds a scrape waits for a worker's samples.
SCRAPE_TIMEOUT = 5.0


class Supervisor(service.MultiService):
    """
    Starts and keeps C{count} workers running.

    @param argv: the command line each worker parses, as this process did.
    @param listeners: (transport, host, port) of every client listener.
    @param metrics_listen: where to serve the summed C{/metrics}, if at all.
    @param generated_user: the user every worker accepts when none is
        configured (announced by the first worker).
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        argv: list[str],
        count: int,
        listeners: list[tuple[str, str, int]],
        metrics_listen: tuple[str, int] | None = None,
        generated_user: tuple[str, str] | None = None,
        executable: str = sys.executable,
        total_quota: int = 0,
        xdp: Any = None,
    ) -> None:
        super().__init__()
        #: The XDP program (C{--xdp}), loaded here; its maps are given to
        #: every worker.
        self.xdp = xdp
        self._reactor = reactor
        self._argv = argv
        self.count = count
        self._listeners = listeners
        self._metrics_listen = metrics_listen
        self._generated_user = generated_user
        self._total_quota = total_quota
        self._executable = executable
        #: index -> this worker's sockets, bound in privilegedStartService.
        self._sockets: list[dict[tuple[str, str, int], socket.socket]] = []
        self._places_fd = -1
        self.places: shared_places.SharedPlaces | None = None
        self._nonce_secret = secrets.token_bytes(32)
        self._places_key = secrets.token_bytes(16)
        #: index -> the running worker's process and control connection.
        self.workers: dict[int, _Worker] = {}
        self._backoff: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self.stopping = False
        self.draining = False
        self._stopped: defer.Deferred[None] | None = None
        self.metrics = SummedMetrics()
        self.metrics_port: Any = None
        self._announced = False

    # -- starting -----------------------------------------------------------

    def privilegedStartService(self) -> None:
        if not self._sockets:
            try:
                self._sockets = bind_group(self._listeners, self.count)
            except OSError as e:
                raise StartupError(f"cannot listen: {e.strerror}") from e
            # The workers' default total quota is their descriptor budget
            # together: the table has room for every place the quota allows.
            budget = descriptors.allocation_budget(descriptors.raise_limit()) * self.count
            rows = shared_places.rows_for(max(self._total_quota, budget))
            self._places_fd = shared_places.create(self.count, rows)
            self.places = shared_places.SharedPlaces(self._places_fd, None, self._places_key)
            if self._metrics_listen is not None:
                self._listen_metrics()
        super().privilegedStartService()

    def _listen_metrics(self) -> None:
        from twisted.web.server import Site

        from txturn.transports.sockets import listen_tcp

        assert self._metrics_listen is not None
        root = Resource()
        root.putChild(b"metrics", SummedMetricsPage(self))
        add_health(root, self.not_ready)
        site = Site(root)
        site.noisy = False
        host, port = self._metrics_listen
        self.metrics_port = listen_tcp(self._reactor, host, port, site)

    def not_ready(self) -> str | None:
        """
        Why the server should get no new clients now (C{/readyz}), or
        C{None}: ready while it runs, with its listeners bound and at
        least one worker running, and does not drain or stop.
        """
        if self.stopping or not self.running:
            return "not running"
        if self.draining:
            return "draining"
        if not self._sockets:
            return "no client listener bound"
        if not self.workers:
            return "no worker running"
        return None

    def startService(self) -> None:
        if not self._sockets:
            self.privilegedStartService()
        super().startService()
        for name, host, port in self._listeners:
            bound = self._sockets[0][(name, host, port)].getsockname()
            self.log.info(
                "TURN listening on {transport} {host}:{port} with {count} workers",
                transport=name.upper(),
                host=f"[{host}]" if ":" in host else host,
                port=bound[1],
                count=self.count,
            )
        if self.metrics_port is not None:
            bound = self.metrics_port.getHost()
            self.log.info(
                "Metrics of every worker on http://{host}:{port}/metrics",
                host=bound.host,
                port=bound.port,
            )
        for index in range(self.count):
            self._start(index)

    def port_of(self, transport: str) -> int:
        """
        The port a listener of C{transport} is bound to (for port 0).
        """
        for (name, _, _), sock in self._sockets[0].items():
            if name == transport:
                port: int = sock.getsockname()[1]
                return port
        raise KeyError(transport)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self.stopping or self.draining:
            return
        worker = _Worker(self, index)
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listeners = []
        for number, (key, sock) in enumerate(sorted(self._sockets[index].items())):
            fd = FIRST_LISTENER_FD + number
            child_fds[fd] = sock.fileno()
            listeners.append([*key, fd])
        xdp_maps = {}
        if self.xdp is not None:
            first = FIRST_LISTENER_FD + len(listeners)
            for number, (name, fd) in enumerate(sorted(self.xdp.maps.fds.items())):
                child_fds[first + number] = fd
                xdp_maps[name] = first + number
        announce = index == 0 and not self._announced
        self._announced = True
        settings = {
            "index": index,
            "count": self.count,
            "argv": self._argv,
            "listeners": listeners,
            "nonce_secret": self._nonce_secret.hex(),
            "places_key": self._places_key.hex(),
            "generated_user": self._generated_user,
            "announce": announce,
            "xdp_maps": xdp_maps,
            "xdp_mode": self.xdp.describe() if self.xdp is not None else "",
        }
        reader = privileged.installed()
        connection = reader.connection() if reader is not None else None
        if connection is not None:
            child_fds[PRIVILEGED_FD] = connection.fileno()
            settings["privileged"] = True
        description = os.memfd_create("txturn-worker", 0)
        os.write(description, json.dumps(settings).encode("utf-8"))
        child_fds[BOOTSTRAP_FD] = description
        child_fds[CONTROL_FD] = child.fileno()
        child_fds[PLACES_FD] = self._places_fd
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            worker.process = self._reactor.spawnProcess(
                worker,
                self._executable,
                [self._executable, "-m", "txturn.workers.worker"],
                env=environment,
                childFDs=child_fds,
            )
        finally:
            os.close(description)
            child.close()
            if connection is not None:
                connection.close()
        worker.pid = worker.process.pid
        worker.process.closeStdin()
        self.log.info("Worker {index} started (pid {pid})", index=index, pid=worker.pid)
        worker.started = self._reactor.seconds()
        self._reactor.adoptStreamConnection(
            parent.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: worker.control)
        )
        parent.close()
        self.workers[index] = worker
        self.metrics.alive = len(self.workers)

    # -- a worker ends ------------------------------------------------------

    def ended(self, worker: _Worker, reason: Failure) -> None:
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        self.metrics.alive = len(self.workers)
        self.metrics.worker_died(index)
        given_back = self.places.clear(index) if self.places is not None else 0
        if self.xdp is not None:
            # Its allocations are gone: so are the entries that relayed them.
            removed = self.xdp.maps.remove_owned(index)
            if removed:
                self.log.info(
                    "Worker {index}'s {count} XDP entries removed", index=index, count=removed
                )
        how = _how_it_ended(reason)
        if self.stopping or self.draining:
            self.log.info("Worker {index} (pid {pid}) {how}", index=index, pid=worker.pid, how=how)
            self._check_stopped()
            return
        if not worker.ready:
            self.log.critical(
                "Worker {index} (pid {pid}) {how} before it was ready; stopping the server",
                index=index,
                pid=worker.pid,
                how=how,
            )
            self.stopping = True
            self._reactor.callLater(0, self._reactor.stop)
            return
        lived = self._reactor.seconds() - worker.started
        delay = 0.0 if lived >= STABLE_AFTER else self._backoff.get(index, 0.0)
        self._backoff[index] = min(MAX_BACKOFF, max(1.0, delay * 2))
        self.log.error(
            "Worker {index} (pid {pid}) {how}; {places} places given back; starting another{when}",
            index=index,
            pid=worker.pid,
            how=how,
            places=given_back,
            when=f" in {delay:.0f}s" if delay else "",
        )
        self.metrics.restarts += 1
        self._restarts[index] = self._reactor.callLater(delay, self._start, index)

    def _check_stopped(self) -> None:
        if self.workers:
            return
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)
        elif self.draining and not self.stopping:
            self.log.info("Every worker has drained; stopping")
            self._reactor.stop()

    # -- signals ------------------------------------------------------------

    def forward(self, number: int) -> None:
        """
        Send signal C{number} to every worker.
        """
        for worker in list(self.workers.values()):
            try:
                worker.process.signalProcess(number)
            except (OSError, ProcessExitedAlready):
                pass  # it has ended; processEnded says so

    def reload(self, why: str) -> None:
        """
        Every ready worker reloads now; one still starting (whose handlers
        may not be installed yet, so the signal would kill it) reloads as
        soon as it is ready, since it may have read the old file.
        """
        self.log.info("{why}: reloading {count} workers", why=why, count=len(self.workers))
        number = signal.Signals[why].value
        for worker in list(self.workers.values()):
            if worker.ready:
                self._signal(worker, number)
            else:
                worker.reload_pending = number

    def _signal(self, worker: _Worker, number: int) -> None:
        try:
            worker.process.signalProcess(number)
        except (OSError, ProcessExitedAlready):
            pass  # it has ended; processEnded says so

    def drain(self) -> None:
        """
        SIGQUIT: every worker drains and ends; then the supervisor stops.
        """
        self.draining = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts = {}
        self.log.info("SIGQUIT: draining {count} workers", count=len(self.workers))
        self.forward(signal.SIGQUIT)
        self._check_stopped()

    # -- stopping -----------------------------------------------------------

    def stopService(self) -> defer.Deferred[Any]:
        self.stopping = True
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts = {}
        self._stopped = defer.Deferred()
        self.forward(signal.SIGTERM)
        kill = self._reactor.callLater(STOP_TIMEOUT, self.forward, signal.SIGKILL)
        self._check_stopped()

        def closed(result: Any) -> Any:
            if kill.active():
                kill.cancel()
            for sockets in self._sockets:
                for sock in sockets.values():
                    sock.close()
            self._sockets = []
            if self.places is not None:
                self.places.close()
                os.close(self._places_fd)
                self.places = None
            if self.metrics_port is not None:
                return self.metrics_port.stopListening()
            return result

        return self._stopped.addCallback(closed)

    # -- between workers ----------------------------------------------------

    def scrape(self) -> defer.Deferred[bytes]:
        """
        The summed metrics page, once every worker has answered (or not,
        within L{SCRAPE_TIMEOUT}: then its last samples are used).
        """
        asked = []
        for index, worker in list(self.workers.items()):
            answer = worker.control.callRemote(Scrape)
            answer.addTimeout(SCRAPE_TIMEOUT, self._reactor)
            answer.addCallback(lambda r, i=index: self.metrics.scraped(i, r["families"]))
            answer.addErrback(
                lambda f, i=index: self.log.warn(
                    "Worker {index} did not give its metrics: {error}",
                    index=i,
                    error=f.getErrorMessage(),
                )
            )
            asked.append(answer)
        done = defer.gatherResults(asked)
        return done.addCallback(lambda _: self.metrics.render(sorted(self.workers)))

    def pass_connection(
        self, worker: int, connection: int, **rest: Any
    ) -> defer.Deferred[dict[str, bool]]:
        """
        Give a data connection to worker C{worker}; C{accepted} is false
        if it is not running.
        """
        target = self.workers.get(worker)
        if target is None or not target.ready:
            os.close(connection)
            return defer.succeed({"accepted": False})
        try:
            answer = target.control.callRemote(
                HandOff, worker=worker, connection=connection, **rest
            )
        except Exception:
            # Nothing a client sent may end a worker's control connection.
            self.log.failure("Could not pass a data connection to worker {worker}", worker=worker)
            os.close(connection)
            return defer.succeed({"accepted": False})

        def done(result: Any) -> dict[str, bool]:
            os.close(connection)
            return result if isinstance(result, dict) else {"accepted": False}

        passed: defer.Deferred[dict[str, bool]] = answer.addBoth(done)
        return passed

    def fetch_reservation(
        self, worker: int, token: bytes, owner: str
    ) -> defer.Deferred[dict[str, Any]]:
        """
        The reservation C{token} of worker C{worker}, given up by it.
        """
        target = self.workers.get(worker)
        if target is None or not target.ready:
            return defer.succeed({"found": False})
        answer = target.control.callRemote(GiveReservation, token=token, owner=owner)

        def passed(result: dict[str, Any]) -> dict[str, Any]:
            descriptor = result.get("relay")
            if descriptor is not None:
                # Sent on with this answer, then closed here.
                self._reactor.callLater(SENT_DESCRIPTOR_GRACE, os.close, descriptor)
            return result

        def failed(reason: Failure) -> dict[str, Any]:
            return {"found": False}

        result: defer.Deferred[dict[str, Any]] = answer.addCallbacks(passed, failed)
        return result


class _Worker(ProcessProtocol):
    """
    One running worker: its process, its control connection, its output.
    """

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.process: Any = None
        self.pid: int | None = None
        self.started = 0.0
        self.ready = False
        #: A reload signal that arrived before the worker was ready.
        self.reload_pending: int | None = None
        self.control = _SupervisorControl(self)
        self._lines = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._lines.get(childFD, b"") + data
        *lines, self._lines[childFD] = buffered.split(b"\n")
        for line in lines:
            if childFD == 1:
                self._relog(line)
            elif line.strip():
                self.supervisor.log.error(
                    "Worker {index}: {line}",
                    index=self.index,
                    line=line.decode("utf-8", "replace"),
                )

    def _relog(self, line: bytes) -> None:
        """
        A worker's log event into the server's log, marked with its index.
        """
        try:
            event = eventFromJSON(line.decode("utf-8"))
        except ValueError:
            return
        event["worker"] = self.index
        # What a text log shows in brackets: the worker, then what it
        # would show for one process.
        level = event.get("log_level")
        event["log_system"] = (
            f"worker {self.index} {event.get('log_namespace', '-')}"
            f"#{getattr(level, 'name', 'info')}"
        )
        globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        if self.control.transport is not None:
            self.control.transport.loseConnection()
        self.supervisor.ended(self, reason)


class _SupervisorControl(QuietAMP):
    def __init__(self, worker: _Worker) -> None:
        super().__init__()
        self._worker = worker

    @Ready.responder
    def ready(self) -> dict[str, Any]:
        worker = self._worker
        worker.ready = True
        if worker.reload_pending is not None:
            number, worker.reload_pending = worker.reload_pending, None
            worker.supervisor._signal(worker, number)
        return {}

    @FetchReservation.responder
    def fetch_reservation(
        self, worker: int, token: bytes, owner: str
    ) -> defer.Deferred[dict[str, Any]]:
        return self._worker.supervisor.fetch_reservation(worker, token, owner)

    @HandOff.responder
    def hand_off(
        self, worker: int, connection: int, **rest: Any
    ) -> defer.Deferred[dict[str, bool]]:
        return self._worker.supervisor.pass_connection(worker, connection, **rest)


class SummedMetricsPage(Resource):
    """
    C{/metrics} of every worker, summed.
    """

    isLeaf = True

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self._supervisor = supervisor

    def render_GET(self, request: Request) -> Any:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(page: bytes) -> None:
            if not gone:
                request.write(page)
                request.finish()

        self._supervisor.scrape().addCallback(write)
        return NOT_DONE_YET


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    number = getattr(value, "signal", None)
    if number:
        return f"was killed by {signal.Signals(number).name}"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code}"


def supervise(options: Options, reactor: Any, generated: tuple[str, str] | None) -> Supervisor:
    """
    The supervisor of C{--workers N} that C{twistd turn} runs, which
    reloads and drains its workers on the same signals.
    """
    # twistd's path checked the relay addresses already (_preflight), and
    # each worker checks them again as it binds.
    supervisor = Supervisor(
        reactor,
        options["argv"],
        options["workers"],
        listener_addresses(
            [(host, options["port"]) for host in options["listen"]],
            options["transports"],
            options["cert"] is not None,
            options["tls-port"],
        ),
        metrics_listen=metrics_listen(options),
        generated_user=generated,
        total_quota=options["total-quota"],
        xdp=xdp_program(options),
    )
    if supervisor.xdp is not None:
        from txturn.fastpath.xdp import XdpService

        XdpService(supervisor.xdp).setServiceParent(supervisor)
    systemd = SystemdNotifier()

    def drain() -> None:
        systemd.status("Draining")
        supervisor.drain()

    handlers = SignalHandlers(reactor, supervisor.reload, drain, logfile=logfile(options))
    handlers.setServiceParent(supervisor)
    if options["admin-port"] is not None:
        from txturn.sessions.service import sessions_services
        from txturn.workers.sessions import WorkerSessions

        fleet = None
        if options["redis-address"] is not None:
            # The supervisor is the fleet's node for its workers: a link
            # of its own, since the workers hold theirs.
            from txturn.fleet.link import RedisLink
            from txturn.fleet.sharing import DESCRIPTION

            link = RedisLink(reactor, options["redis-address"])
            name = f"{DESCRIPTION}, {options['workers']} workers"
            fleet = (link, secrets.token_hex(8), name, True)
        address = (options["admin-address"], options["admin-port"])
        local = WorkerSessions(reactor, supervisor)
        for service in sessions_services(reactor, local, address, options["admin-token"], fleet):
            service.setServiceParent(supervisor)
    # Last: READY=1 only once the signal handlers are in place.
    systemd.setServiceParent(supervisor)
    return supervisor
