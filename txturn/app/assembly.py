# -*- test-case-name: tests.test_tap -*-
"""
One server process from its options: the objects the option values
stand for (credential sources, peer policy, core configuration, TLS,
connection limits), and the L{TurnService} built from them with its
databases, usage records, signal handlers and systemd notifier
(L{build_service}).  C{--workers N} builds one of these in each worker
(L{txturn.workers.worker}).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from txturn.app.options import Options
from txturn.app.reload import Reloader
from txturn.app.service import TurnService
from txturn.app.settings import (
    Backends,
    apply_nonce_keys,
    connection_limits_for,
    credentials_for,
    peer_policy_for,
    server_config_for,
    tls_for,
    usage_opener,
)
from txturn.app.signals import SignalHandlers
from txturn.app.startup import logfile, metrics_listen
from txturn.app.systemd import SystemdNotifier
from txturn.observers.usage import UsageRecords
from txturn.util.log_level import logger

if TYPE_CHECKING:
    from txturn.app.shard import Shard

_log = logger("txturn.tap")


def build_service(
    options: Options, reactor: Any, shard: Shard | None = None, announce: bool = True
) -> TurnService:
    """
    The L{TurnService} the options describe, which reloads them on SIGHUP
    and SIGUSR2 (L{txturn.app.reload}) and drains on SIGQUIT; with
    C{shard}, as one worker of C{--workers N}.
    """
    # The databases are opened once; a reload keeps them.
    backends = Backends.open(options, reactor)
    credentials, generated = credentials_for(options, backends)
    xdp = xdp_program(options) if shard is None else None
    xdp_maps, xdp_mode = (xdp.maps, xdp.describe()) if xdp is not None else (None, "")
    if shard is not None and shard.xdp_maps:
        from txturn.fastpath.xdp import XdpMaps

        # The supervisor's program: each worker writes its own entries.
        xdp_maps, xdp_mode = XdpMaps(dict(shard.xdp_maps)), shard.xdp_mode
    turn = TurnService(
        reactor,
        credentials,
        [(host, options["port"]) for host in options["listen"]],
        options["relay-ip"],
        min_port=options["min-port"],
        max_port=options["max-port"],
        policy=peer_policy_for(options),
        config=server_config_for(options),
        announce=generated if announce else None,
        tls=tls_for(options),
        tls_port=options["tls-port"],
        transports=options["transports"],
        external_ips=options["external-map"],
        tcp_buffer=options["tcp-buffer"],
        max_tcp_buffer=options["max-tcp-buffer"],
        # A worker's metrics are served, summed, by its supervisor.
        metrics_listen=metrics_listen(options) if shard is None else None,
        metrics=shard is not None and options["prometheus"],
        shard=shard,
        fast_path=not options["no-fast-path"],
        limits=connection_limits_for(options),
        ledger=backends.ledger,
        also_own=[options["admin-address"]] if options["admin-port"] is not None else [],
        proxy_from=options["proxy-protocol-from"],
        xdp=xdp_maps,
        xdp_mode=xdp_mode,
    )
    if xdp is not None:
        from txturn.fastpath.xdp import XdpService

        # A child: children stop after the allocations are deleted, so
        # the program goes once every one has taken its counters.
        XdpService(xdp).setServiceParent(turn)  # type: ignore[no-untyped-call]
    backends.join(turn, options, reactor)
    apply_nonce_keys(turn, options)
    records = None
    opener = usage_opener(options)
    if opener is not None or backends.usage_stream is not None:
        records = UsageRecords(
            opener,
            options["realm"],
            time.time,
            also=[backends.usage_stream] if backends.usage_stream is not None else [],
        )
        turn.server.add_observer(records)
    reloader = Reloader(turn, options, records, backends)
    systemd = SystemdNotifier()

    def drain() -> None:
        # A second SIGQUIT (an impatient operator, or one signal reaching
        # a worker twice) changes nothing: one drain, one stop.
        if turn.server.draining:
            return
        systemd.status("Draining")
        # What the last reload read: --drain-timeout is applied on reload.
        timeout = reloader.options["drain-timeout"]
        turn.drain(timeout).addCallback(lambda _: reactor.stop())

    handlers = SignalHandlers(reactor, reloader, drain, logfile=logfile(options))
    handlers.setServiceParent(turn)  # type: ignore[no-untyped-call]
    if options["admin-port"] is not None:
        _sessions_api(turn, options, reactor, drain, shard, backends)
    if shard is None:
        # Last: READY=1 only once the signal handlers are in place, or a
        # reload or drain sent right after it would kill the process.
        systemd.setServiceParent(turn)  # type: ignore[no-untyped-call]
    return turn


def xdp_program(options: Options) -> Any:
    """
    The XDP program of C{--xdp}, loaded and attached; or, where it cannot
    run (no capabilities, no kernel support, not built), one line saying
    why, and the server relays in user space.
    """
    if not options["xdp"]:
        return None
    from txturn.fastpath.xdp import XdpProgram, XdpUnavailable

    try:
        program = XdpProgram(options["xdp"])
    except XdpUnavailable as e:
        _log.warn("--xdp: {why}; relaying in user space", why=str(e))
        return None
    off = program.not_forwarding()
    if off:
        _log.warn(
            "--xdp: the kernel looks routes up for XDP only on interfaces that forward; "
            "until {sysctls} are 1, channels arriving there are relayed in user space",
            sysctls=", ".join(off),
        )
    return program


def _sessions_api(
    turn: TurnService,
    options: Options,
    reactor: Any,
    drain: Callable[[], None],
    shard: Shard | None,
    backends: Backends,
) -> None:
    """
    The sessions API's view of this server; and, in one process, its
    listener (under C{--workers} the supervisor listens and asks each
    worker's view), answering for the fleet with C{--redis}.
    """
    from txturn.sessions.backend import LocalSessions

    local = LocalSessions(
        reactor,
        turn.server,
        drain,
        degraded=turn.degraded,
        fleet="Redis" if backends.link is not None else "none (one server)",
        worker=shard.index if shard is not None else None,
    )
    local.setServiceParent(turn)  # type: ignore[no-untyped-call]
    turn.sessions = local
    if shard is None:
        from txturn.fleet.sharing import DESCRIPTION
        from txturn.sessions.service import sessions_services

        fleet = None
        if backends.link is not None:
            fleet = (backends.link, backends.ledger.id, DESCRIPTION, False)
        address = (options["admin-address"], options["admin-port"])
        for service in sessions_services(reactor, local, address, options["admin-token"], fleet):
            service.setServiceParent(turn)  # type: ignore[no-untyped-call]
