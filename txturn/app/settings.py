# -*- test-case-name: tests.test_tap -*-
"""
What option values stand for: the credential sources (and the databases
behind them, kept across reloads), the peer policy, the core's
configuration, TLS credentials, connection limits and the usage file.
Built at start-up (L{txturn.app.assembly}) and again on each reload
(L{txturn.app.reload}).
"""

from __future__ import annotations

import os
from typing import IO, Any, Callable

from txturn.app.options import Options
from txturn.app.service import TurnService
from txturn.auth.cache import CachedCredentials
from txturn.auth.credentials import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.core.peer_policy import PeerPolicy
from txturn.core.server import ServerConfig
from txturn.transports.admission import ConnectionLimits
from txturn.transports.tls import TlsCredentials
from txturn.util.files import append_private


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
        #: The fleet's per-user quota, given to the core (with C{--redis}).
        self.ledger: Any = None

    @classmethod
    def open(cls, options: Options, reactor: Any) -> "Backends":
        backends = cls()
        realm, ttl = options["realm"], options["user-cache-ttl"]
        path = options["user-db-sqlite"]
        if path is not None:
            from txturn.auth.user_db import SqliteCredentials, open_pool

            pool = open_pool(path, reactor)
            sqlite = SqliteCredentials(pool, realm)
            backends.sources.append(CachedCredentials(reactor, sqlite, ttl=ttl))
            backends.pool = pool
        address = options["redis-address"]
        if address is not None:
            from txturn.fleet.link import RedisLink
            from txturn.fleet.sharing import RedisQuotaLedger
            from txturn.fleet.users import RedisCredentials

            backends.link = RedisLink(reactor, address)
            backends.ledger = RedisQuotaLedger(backends.link, ttl=options["redis-ttl"])
            redis = RedisCredentials(backends.link, realm)
            backends.sources.append(CachedCredentials(reactor, redis, ttl=ttl))
            if options["usage-stream"] is not None:
                from txturn.fleet.usage import RedisUsageStream

                backends.usage_stream = RedisUsageStream(backends.link, options["usage-stream"])
        return backends

    def join(self, turn: TurnService, options: Options, reactor: Any) -> None:
        """
        Start and stop with C{turn}; with C{--redis}, share its quotas and
        hear revocations.
        """
        if self.pool is not None:
            from txturn.auth.user_db import PoolService, RevocationReader

            PoolService(self.pool).setServiceParent(turn)  # type: ignore[no-untyped-call]
            if self.link is None:
                # Without Redis, revocations come from the database itself;
                # it stops before the pool closes (children stop in reverse).
                reader = RevocationReader(reactor, self.pool, turn.server)
                reader.setServiceParent(turn)  # type: ignore[no-untyped-call]
        if self.link is not None:
            from txturn.fleet.sharing import RedisFleet

            fleet = RedisFleet(reactor, self.link, turn.server, self.ledger)
            fleet.setServiceParent(turn)  # type: ignore[no-untyped-call]
            link = self.link

            def redis_down() -> str | None:
                if link.up:
                    return None
                return (
                    f"Redis at {link.address} unreachable: quotas per server, keys from the cache"
                )

            turn.add_degradation(redis_down)


def credentials_for(
    options: Options, backends: Backends
) -> tuple[CredentialChain, tuple[str, str] | None]:
    """
    The configured credential sources; with none, a generated user and
    its (name, password) to announce.
    """
    realm = options["realm"]
    sources: list[Any] = list(backends.sources)
    lines = user_lines(options)
    if lines:
        sources.append(StaticCredentials.from_lines(realm, lines))
    if options["static-auth-secret"]:
        sources.append(
            RestApiCredentials(options["static-auth-secret"], hmac_name=options["rest-api-hmac"])
        )
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


def peer_policy_for(options: Options) -> PeerPolicy:
    return PeerPolicy(
        allow_loopback=options["allow-loopback-peers"],
        allowed=options["allowed-peer-ip"],
        denied=options["denied-peer-ip"],
        nat64_prefixes=options["nat64-prefix"],
    )


def server_config_for(options: Options) -> ServerConfig:
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


def apply_nonce_keys(turn: TurnService, options: Options) -> None:
    """
    Sign and check nonces with C{--nonce-key-file}'s keys, where given
    (with C{--redis} the fleet's keys come from Redis instead).
    """
    keys = options["nonce-keys"]
    if keys:
        turn.server.nonces.use_keys(keys[0], keys[1:])


def tls_for(options: Options) -> TlsCredentials | None:
    if options["cert"] is None:
        return None
    return TlsCredentials(options["cert"], options["key"] or options["cert"], options["ca-file"])


def connection_limits_for(options: Options) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=options["max-connections"],
        max_unallocated_per_source=options["max-connections-per-ip"],
        handshake_timeout=options["handshake-timeout"],
        idle_timeout=options["idle-timeout"],
        frame_timeout=options["frame-timeout"],
        dtls_max_sessions=options["max-dtls-sessions"],
        dtls_max_sessions_per_source=options["max-dtls-sessions-per-ip"],
    )


def usage_opener(options: Options) -> Callable[[], IO[str]] | None:
    """
    What opens C{--usage-file} for appending (mode 0640), if it is set.
    """
    path = options["usage-file"]
    if path is None:
        return None
    return lambda: append_private(path)


def user_lines(options: Options) -> list[str]:
    """
    The static users as C{name:password} lines: C{--user}, then the lines
    of a C{--user-db} text file.
    """
    return [f"{n}:{p}" for n, p in options["user"]] + list(options.get("user-db-lines", []))


def static_users(options: Options) -> dict[str, str]:
    """
    Name -> password (or key) of every static user.
    """
    lines = user_lines(options)
    users = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, secret = line.partition(":")
            users[name] = secret
    return users
