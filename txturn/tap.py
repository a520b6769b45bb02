# -*- test-case-name: tests.test_tap,tests.test_signals -*-
"""
C{twistd turn}: L{makeService} turns the checked option values of
L{txturn.options} into objects and calls the library constructor; the
L{Reloader} does it again on SIGHUP and hands the running service what
changed.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.logger import Logger
from twisted.python import usage

from txturn import privileged
from txturn.credential_cache import CachedCredentials
from txturn.credentials import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.files import append_private
from txturn.interfaces import host_port
from txturn.limits import ConnectionLimits
from txturn.log_level import govern_twistd_logging, set_log_level
from txturn.options import REDIS_VARIABLE, SECRET_VARIABLE, Options, group
from txturn.policy import PeerPolicy
from txturn.privileged import read_file
from txturn.server import ServerConfig
from txturn.service import (
    StartupError,
    TurnService,
    check_listeners,
    check_relay_addresses,
    listener_addresses,
)
from txturn.signals import SignalHandlers
from txturn.systemd import SystemdNotifier
from txturn.tls import TlsCredentials
from txturn.usage_records import UsageRecords
from txturn.user_db import sqlite_path

if TYPE_CHECKING:
    from txturn.workers.shard import Shard
    from txturn.workers.supervisor import Supervisor

__all__ = ["Options", "makeService", "SECRET_VARIABLE"]

_log = Logger()


def makeService(
    options: Options, reactor: Any = None, shard: Shard | None = None, announce: bool = True
) -> Any:
    """
    Build the L{TurnService} the options describe, which reloads them on
    SIGHUP and SIGUSR2 (L{txturn.signals}); with C{--workers} above 1, the
    L{Supervisor} of that many, each of which builds its L{TurnService}
    here again, with its L{Shard}.

    Called by C{twistd} (with no reactor and no shard), it first checks
    what would stop the server once started (listening ports, relay
    addresses, the log file) and exits with one line for the first
    problem, before twistd forks into the background or starts logging:
    an operator sees the reason on the terminal, never a traceback.
    """
    if reactor is None and shard is None:
        try:
            _preflight(options)
        except StartupError as e:
            raise SystemExit(f"twistd turn: {e}") from None
        _keep_root_reader(options)
        govern_twistd_logging()
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    set_log_level(options["log-level"])
    if shard is None:
        for warning in options["config-warnings"]:
            _log.warn("{problem}", problem=warning)
    if shard is None:
        _summarize(options)
        if options["workers"] > 1:
            return _supervisor(options, reactor, _credentials(options, Backends())[1])
    # The databases are opened once; a reload keeps them.
    backends = Backends.open(options, reactor)
    credentials, generated = _credentials(options, backends)
    # A worker's metrics are served, summed, by its supervisor.
    metrics_listen = _metrics_listen(options) if shard is None else None
    turn = TurnService(
        reactor,
        credentials,
        [(host, options["port"]) for host in options["listen"]],
        options["relay-ip"],
        min_port=options["min-port"],
        max_port=options["max-port"],
        policy=_policy(options),
        config=_config(options),
        announce=generated if announce else None,
        tls=_tls(options),
        tls_port=options["tls-port"],
        transports=options["transports"],
        external_ips=options["external-map"],
        tcp_buffer=options["tcp-buffer"],
        max_tcp_buffer=options["max-tcp-buffer"],
        metrics_listen=metrics_listen,
        metrics=shard is not None and options["prometheus"],
        shard=shard,
        fast_path=not options["no-fast-path"],
        limits=ConnectionLimits(
            max_connections=options["max-connections"],
            max_unallocated_per_source=options["max-connections-per-ip"],
            handshake_timeout=options["handshake-timeout"],
            idle_timeout=options["idle-timeout"],
            frame_timeout=options["frame-timeout"],
            dtls_max_sessions=options["max-dtls-sessions"],
            dtls_max_sessions_per_source=options["max-dtls-sessions-per-ip"],
        ),
    )
    backends.join(turn, options, reactor)
    records = None
    path = options["usage-file"]
    if path is not None or backends.usage_stream is not None:
        records = UsageRecords(
            (lambda: append_private(path)) if path is not None else None,
            options["realm"],
            time.time,
            also=[backends.usage_stream] if backends.usage_stream is not None else [],
        )
        turn.server.add_observer(records)

    systemd = SystemdNotifier()

    def drain() -> None:
        # A second SIGQUIT (an impatient operator, or one signal reaching
        # a worker twice) changes nothing: one drain, one stop.
        if turn.server.draining:
            return
        systemd.status("Draining")
        turn.drain(options["drain-timeout"]).addCallback(lambda _: reactor.stop())

    SignalHandlers(
        reactor, Reloader(turn, options, records, backends), drain, logfile=_logfile(options)
    ).setServiceParent(turn)  # type: ignore[no-untyped-call]
    if shard is None:
        # Last: READY=1 only once the signal handlers are in place, or a
        # reload or drain sent right after it would kill the process.
        systemd.setServiceParent(turn)  # type: ignore[no-untyped-call]
    return turn


def _supervisor(options: Options, reactor: Any, generated: tuple[str, str] | None) -> Supervisor:
    """
    The supervisor of C{--workers N}, which reloads and drains its workers
    on the same signals.  Imported here only: one process needs neither
    AMP nor C{twisted.web}.
    """
    from txturn.workers.supervisor import Supervisor

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
        metrics_listen=_metrics_listen(options),
        generated_user=generated,
        total_quota=options["total-quota"],
    )
    systemd = SystemdNotifier()

    def drain() -> None:
        systemd.status("Draining")
        supervisor.drain()

    handlers = SignalHandlers(reactor, supervisor.reload, drain, logfile=_logfile(options))
    handlers.setServiceParent(supervisor)  # type: ignore[no-untyped-call]
    # Last: READY=1 only once the signal handlers are in place.
    systemd.setServiceParent(supervisor)  # type: ignore[no-untyped-call]
    return supervisor


def _preflight(options: Options) -> None:
    """
    What would stop a server that twistd is about to start, as a
    L{StartupError}: a listening port taken, a relay address this host
    does not have, a log file that cannot be written.
    """
    check_relay_addresses(options["relay-ip"])
    listeners = listener_addresses(
        [(host, options["port"]) for host in options["listen"]],
        options["transports"],
        options["cert"] is not None,
        options["tls-port"],
    )
    metrics = _metrics_listen(options)
    if metrics is not None:
        listeners.append(("metrics", *metrics))
    check_listeners(listeners)
    logfile = _logfile(options)
    if logfile:
        try:
            open(logfile, "a").close()
        except OSError as e:
            raise StartupError(f"cannot write the log file {logfile}: {e.strerror}") from None


def _logfile(options: Options) -> str | None:
    """
    The file twistd logs to, if it logs to one.
    """
    parent = options.parent
    logfile = parent.get("logfile") if isinstance(parent, usage.Options) else None
    return str(logfile) if logfile and logfile != "-" else None


def _keep_root_reader(options: Options) -> None:
    """
    Started as root to drop privileges (C{proc-user}, C{--uid}): fork the
    helper that reads, as root, the files the configuration names, so a
    reload after the drop still reads a root-only configuration file or
    key, and that removes the pidfile afterwards (L{txturn.privileged}).
    """
    parent = options.parent
    if os.getuid() != 0 or not isinstance(parent, usage.Options) or parent.get("uid") is None:
        return
    if privileged.installed() is not None:
        return
    named = [options[name] for name in _ROOT_READABLE if options.get(name)]
    if options["user-db"] and sqlite_path(options["user-db"]) is None:
        named.append(options["user-db"])
    pidfile = os.path.abspath(parent["pidfile"]) if parent.get("pidfile") else None
    privileged.install(privileged.PrivilegedReader.start(named, pidfile))


#: The options naming files a reload reads again, which may be root's alone.
_ROOT_READABLE = (
    "config",
    "cert",
    "key",
    "ca-file",
    "static-auth-secret-file",
    "credential-file",
)


def _metrics_listen(options: Options) -> tuple[str, int] | None:
    """
    Where C{--prometheus} serves C{/metrics}, if it does.
    """
    if not options["prometheus"]:
        return None
    return options["prometheus-address"], options["prometheus-port"]


def _summarize(options: Options) -> None:
    """
    The effective configuration in a few lines, and a warning for each
    setting that weakens the server.
    """
    modes = []
    users = len(_users(options))
    if users:
        modes.append(f"{users} static user(s)")
    if options["user-db-sqlite"] is not None:
        modes.append(f"users in SQLite {options['user-db-sqlite']}")
    if options["redis-address"] is not None:
        modes.append("users in Redis")
    if options["static-auth-secret"]:
        modes.append(f"REST API with {len(options['static-auth-secret'])} secret(s)")
    _log.info(
        "Realm {realm}; authentication: {modes}{external}",
        realm=options["realm"],
        modes=", ".join(modes) or "one generated user",
        external="".join(
            f"; relay {k} advertised as {v}" for k, v in options["external-map"].items()
        ),
    )
    address = options["redis-address"]
    if address is not None:
        _log.info(
            "Fleet: Redis at {redis} (per-user quota across the fleet, revocations{stream})",
            redis=str(address),
            stream=f", usage to stream {options['usage-stream']}"
            if options["usage-stream"]
            else "",
        )
    if options["alternate-server"]:
        _log.info(
            "Redirects: Allocates go to {servers} {when}",
            servers=", ".join(host_port(a) for a in options["alternate-server"]),
            when=f"once {options['alternate-server-load']} allocations are held"
            if options["alternate-server-load"]
            else "always",
        )
    _log.info(
        "Peers: every non-public range refused{loopback}{allowed}{denied}",
        loopback=", loopback allowed" if options["allow-loopback-peers"] else "",
        allowed="".join(f", {n} allowed" for n in options["allowed-peer-ip"]),
        denied="".join(f", {n} denied" for n in options["denied-peer-ip"]),
    )
    _warn_weakening(options)


def _warn_weakening(options: Options) -> None:
    """
    A warning for each setting that weakens the server.
    """
    if options["allow-loopback-peers"]:
        _log.warn("--allow-loopback-peers: relays can reach this host's loopback services")
    for network in options["allowed-peer-ip"]:
        if not network.is_global:
            _log.warn(
                "--allowed-peer-ip {network}: relays can reach this non-public range",
                network=str(network),
            )
    argv = options.get("argv", [])
    exposed = [
        name
        for name in ("--static-auth-secret", "--user", "-u")
        if any(a == name or a.startswith(name + "=") for a in argv)
    ]
    address = options["redis-address"]
    if address is not None and address.password and any(a.startswith("--redis") for a in argv):
        exposed.append("--redis (with a password)")
    if exposed:
        _log.warn(
            "{options} on the command line: visible to every local user in ps; use "
            "--static-auth-secret-file, --user-db, {variable}, {redis} or a -c file",
            options=", ".join(exposed),
            variable=SECRET_VARIABLE,
            redis=REDIS_VARIABLE,
        )


class Backends:
    """
    The databases a server process keeps for its life (C{--user-db
    sqlite://}, C{--redis}): their credential sources, opened once and
    kept across reloads, and the services that close them.
    """

    def __init__(self) -> None:
        self.sources: list[Any] = []
        self.link: Any = None
        self.pool: Any = None
        self.usage_stream: Any = None

    @classmethod
    def open(cls, options: Options, reactor: Any) -> "Backends":
        backends = cls()
        realm, ttl = options["realm"], options["user-cache-ttl"]
        path = options["user-db-sqlite"]
        if path is not None:
            from txturn.user_db import SqliteCredentials, open_pool

            pool = open_pool(path, reactor)
            sqlite = SqliteCredentials(pool, realm)
            backends.sources.append(CachedCredentials(reactor, sqlite, ttl=ttl))
            backends.pool = pool
        address = options["redis-address"]
        if address is not None:
            from txturn.redis_link import RedisLink
            from txturn.redis_users import RedisCredentials

            backends.link = RedisLink(reactor, address)
            redis = RedisCredentials(backends.link, realm)
            backends.sources.append(CachedCredentials(reactor, redis, ttl=ttl))
            if options["usage-stream"] is not None:
                from txturn.redis_usage import RedisUsageStream

                backends.usage_stream = RedisUsageStream(backends.link, options["usage-stream"])
        return backends

    def join(self, turn: TurnService, options: Options, reactor: Any) -> None:
        """
        Start and stop with C{turn}; with C{--redis}, share its quotas and
        hear revocations.
        """
        if self.pool is not None:
            from txturn.user_db import PoolService, RevocationReader

            PoolService(self.pool).setServiceParent(turn)  # type: ignore[no-untyped-call]
            if self.link is None:
                # Without Redis, revocations come from the database itself;
                # it stops before the pool closes (children stop in reverse).
                reader = RevocationReader(reactor, self.pool, turn.server)
                reader.setServiceParent(turn)  # type: ignore[no-untyped-call]
        if self.link is not None:
            from txturn.redis_fleet import RedisFleet

            fleet = RedisFleet(reactor, self.link, turn.server, ttl=options["redis-ttl"])
            fleet.setServiceParent(turn)  # type: ignore[no-untyped-call]


def _credentials(
    options: Options, backends: Backends
) -> tuple[CredentialChain, tuple[str, str] | None]:
    """
    The configured credential sources; with none, a generated user and
    its (name, password) to announce.
    """
    realm = options["realm"]
    sources: list[Any] = list(backends.sources)
    lines: list[str] = [f"{n}:{p}" for n, p in options["user"]]
    lines += list(options.get("user-db-lines", []))
    if lines:
        sources.append(StaticCredentials.from_lines(realm, lines))
    if options["static-auth-secret"]:
        sources.append(RestApiCredentials(options["static-auth-secret"]))
    # A database of users counts even where it is not opened (in the
    # supervisor of --workers N, which authenticates nobody).
    if sources or options["user-db-sqlite"] is not None or options["redis-address"] is not None:
        return CredentialChain(sources), None
    username, password = _generated_user(options)
    return CredentialChain([StaticCredentials(realm, {username: password})]), (username, password)


def _generated_user(options: Options) -> tuple[str, str]:
    """
    The generated user: kept in --credential-file when given (read back
    on later starts, so a pasted snippet keeps working), else new.
    """
    kept: tuple[str, str] | None = options["credential-file-user"]
    if kept is not None:
        return kept
    path = options["credential-file"]
    _, username, password = StaticCredentials.generate(options["realm"])
    if path is not None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            f.write(f"{username}:{password}\n")
    return username, password


def _policy(options: Options) -> PeerPolicy:
    return PeerPolicy(
        allow_loopback=options["allow-loopback-peers"],
        allowed=options["allowed-peer-ip"],
        denied=options["denied-peer-ip"],
        nat64_prefixes=options["nat64-prefix"],
    )


def _config(options: Options) -> ServerConfig:
    return ServerConfig(
        realm=options["realm"],
        software=options["software"],
        max_lifetime=options["max-allocate-lifetime"],
        nonce_lifetime=options["stale-nonce"],
        udp_relay=not options["no-udp-relay"],
        tcp_relay=not options["no-tcp-relay"],
        tcp_connect_timeout=options["tcp-connect-timeout"],
        user_quota=options["user-quota"],
        total_quota=options["total-quota"],
        max_permissions=options["max-permissions"],
        max_channels=options["max-channels"],
        max_pending_connections=options["max-pending-connections"],
        max_bps=options["max-bps"],
        challenge_rate=options["challenge-rate"],
        challenge_burst=10 * options["challenge-rate"],
        alternate_servers=tuple(options["alternate-server"]),
        alternate_load=options["alternate-server-load"],
        server_name=options["server-name"],
    )


def _tls(options: Options) -> TlsCredentials | None:
    if options["cert"] is None:
        return None
    return TlsCredentials(options["cert"], options["key"] or options["cert"], options["ca-file"])


#: Options a reload cannot change: they are bound sockets or shape them.
_NEEDS_RESTART = (
    "realm",
    "no-fast-path",
    "port",
    "tls-port",
    "listen",
    "relay-ip",
    "external-ip",
    "min-port",
    "max-port",
    "transports",
    "tcp-buffer",
    "max-tcp-buffer",
    "prometheus",
    "prometheus-port",
    "prometheus-address",
    "workers",
    "redis",
    "usage-stream",
    "user-cache-ttl",
    "redis-ttl",
    "challenge-rate",
    "stale-nonce",
    # The limits a connection or DTLS session is admitted under.
    *group("Connections before they allocate"),
)


#: Options a reload applies, compared to say what changed.
_RELOADED = (
    "alternate-server",
    "alternate-server-load",
    "server-name",
    "software",
    "max-allocate-lifetime",
    "no-udp-relay",
    "no-tcp-relay",
    "tcp-connect-timeout",
    "user-quota",
    "total-quota",
    "max-permissions",
    "max-channels",
    "max-pending-connections",
    "max-bps",
    "allow-loopback-peers",
    "allowed-peer-ip",
    "denied-peer-ip",
    "nat64-prefix",
    "log-level",
)


def _differences(old: Options, new: Options) -> list[str]:
    """
    What a reload changed, for the log; secrets are counted, not shown.
    """
    found = []
    for name in _RELOADED:
        if old.get(name) != new.get(name):
            found.append(f"--{name} {_shown(old.get(name))} -> {_shown(new.get(name))}")
    users = [_users(o) for o in (old, new)]
    if users[0] != users[1]:
        added = sorted(users[1].keys() - users[0].keys())
        removed = sorted(users[0].keys() - users[1].keys())
        changed = sorted(n for n in users[0].keys() & users[1].keys() if users[0][n] != users[1][n])
        for label, names in (("added", added), ("removed", removed), ("new password", changed)):
            if names:
                found.append(f"users {label}: {', '.join(names)}")
    if old["static-auth-secret"] != new["static-auth-secret"]:
        found.append(
            f"REST secrets: {len(old['static-auth-secret'])} -> {len(new['static-auth-secret'])}"
        )
    serials = [_serial(o) for o in (old, new)]
    if serials[0] != serials[1]:
        found.append(f"certificate serial {serials[0]} -> {serials[1]}")
    return found


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _users(options: Options) -> dict[str, str]:
    """
    Name -> password (or key) of every static user.
    """
    lines = [f"{n}:{p}" for n, p in options["user"]] + list(options.get("user-db-lines", []))
    users = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, secret = line.partition(":")
            users[name] = secret
    return users


def _serial(options: Options) -> str | None:
    if options["cert"] is None:
        return None
    try:
        pem = read_file(options["cert"])
        return format(x509.load_pem_x509_certificate(pem).serial_number, "x")
    except (OSError, ValueError):
        return "unreadable"


class Reloader:
    """
    Reads the command line and configuration file again and gives the
    running service what changed; a bad file keeps the running settings.
    """

    def __init__(
        self,
        service: TurnService,
        options: Options,
        records: UsageRecords | None = None,
        backends: Backends | None = None,
    ) -> None:
        self._service = service
        self._options = options
        self._records = records
        self._backends = backends if backends is not None else Backends()

    def __call__(self, why: str) -> None:
        if self._records is not None:
            self._records.reopen()
        try:
            new = Options()
            new.parseOptions(self._options["argv"])
        except usage.UsageError as e:
            _log.error(
                "{why}: reload failed, keeping the running settings: {error}",
                why=why,
                error=str(e),
            )
            return
        old, self._options = self._options, new
        ignored = [name for name in _NEEDS_RESTART if old.get(name) != new.get(name)]
        if old.get("user-db-sqlite") != new.get("user-db-sqlite"):
            # A database is opened once; a text file is read again.
            ignored.append("user-db")
        # The realm is in every key and nonce the server has handed out.
        new["realm"] = old["realm"]
        set_log_level(new["log-level"])
        # Only what is new: a warning already given at start-up or at an
        # earlier reload is not repeated at every SIGHUP.
        for warning in new["config-warnings"]:
            if warning not in old["config-warnings"]:
                _log.warn("{problem}", problem=warning)
        credentials, generated = _credentials(new, self._backends)
        changed = self._service.reload(
            # A generated user stays the one announced at startup.
            credentials=credentials if generated is None else None,
            policy=_policy(new),
            config=_config(new),
            tls=_tls(new),
        )
        _log.info("{why}: reloaded {changed}", why=why, changed=", ".join(changed) or "nothing")
        differences = _differences(old, new)
        if differences:
            _log.info("{why}: {differences}", why=why, differences="; ".join(differences))
        if ignored:
            _log.warn(
                "{why}: {options} changed, which takes a restart",
                why=why,
                options=", ".join(f"--{name}" for name in ignored),
            )
