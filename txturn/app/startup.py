# -*- test-case-name: tests.test_tap -*-
"""
Before a server starts: what would stop it (L{preflight}, one line
rather than a traceback), the root-owned reader kept for reloads after a
privilege drop, and the summary of the configuration, with a warning for
each setting that weakens the server (L{summarize}).
"""

from __future__ import annotations

import os

from twisted.python import usage

from txturn.app.listeners import (
    StartupError,
    check_listeners,
    check_relay_addresses,
    listener_addresses,
)
from txturn.app.options import REDIS_VARIABLE, SECRET_VARIABLE, Options
from txturn.app.settings import static_users
from txturn.auth.user_db import sqlite_path
from txturn.core.interfaces import host_port
from txturn.util import privileged
from txturn.util.log_level import logger

_log = logger("txturn.tap")


def preflight(options: Options) -> None:
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
    metrics = metrics_listen(options)
    if metrics is not None:
        listeners.append(("metrics", *metrics))
    check_listeners(listeners)
    path = logfile(options)
    if path:
        try:
            open(path, "a").close()
        except OSError as e:
            raise StartupError(f"cannot write the log file {path}: {e.strerror}") from None


def logfile(options: Options) -> str | None:
    """
    The file twistd logs to, if it logs to one.
    """
    parent = options.parent
    logfile = parent.get("logfile") if isinstance(parent, usage.Options) else None
    return str(logfile) if logfile and logfile != "-" else None


def keep_root_reader(options: Options) -> None:
    """
    Started as root to drop privileges (C{proc-user}, C{--uid}): fork the
    helper that reads, as root, the files the configuration names, so a
    reload after the drop still reads a root-only configuration file or
    key, and that removes the pidfile afterwards (L{txturn.util.privileged}).
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


def metrics_listen(options: Options) -> tuple[str, int] | None:
    """
    Where C{--prometheus} serves C{/metrics}, if it does.
    """
    if not options["prometheus"]:
        return None
    return options["prometheus-address"], options["prometheus-port"]


def summarize(options: Options) -> None:
    """
    The effective configuration in a few lines, and a warning for each
    setting that weakens the server.
    """
    modes = []
    users = len(static_users(options))
    if users:
        modes.append(f"{users} static user(s)")
    if options["user-db-sqlite"] is not None:
        modes.append(f"users in SQLite {options['user-db-sqlite']}")
    if options["redis-address"] is not None:
        modes.append("users in Redis")
    if options["static-auth-secret"]:
        modes.append(
            f"REST API with {len(options['static-auth-secret'])} secret(s), "
            f"HMAC-{options['rest-api-hmac'].upper()}"
        )
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
    warn_weakening(options)


def warn_weakening(options: Options) -> None:
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
