# -*- test-case-name: tests.test_tap,tests.test_option_table -*-
"""
SIGHUP (and SIGUSR2): read the command line and configuration file
again and give the running service what changed.

What happens to each option is its row's L{Reload} class in
L{txturn.app.option_table}: an option that is applied reaches the
running server (and the log says from what to what; secrets are
counted, not shown); one that takes a restart is named in a warning.
No option changes silently.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cryptography import x509
from twisted.python import usage

from txturn.app.option_table import OPTIONS, OptionSpec, Reload
from txturn.app.options import Options
from txturn.app.service import TurnService
from txturn.app.settings import (
    Backends,
    apply_nonce_keys,
    credentials_for,
    peer_policy_for,
    server_config_for,
    static_users,
    tls_for,
    usage_opener,
)
from txturn.observers.usage import UsageRecords
from txturn.util.log_level import logger, set_log_level
from txturn.util.privileged import read_file

#: The namespace of everything twistd turn itself says.
_log = logger("txturn.tap")


class Reloader:
    """
    Reads the options again and gives the running service what changed;
    a bad file keeps the running settings.

    @ivar options: the options in effect: what the last successful
        reload read (the drain reads C{--drain-timeout} here when SIGQUIT
        comes).
    """

    def __init__(
        self,
        service: TurnService,
        options: Options,
        records: UsageRecords | None = None,
        backends: Backends | None = None,
        parse: Callable[[list[str]], Options] | None = None,
    ) -> None:
        self._service = service
        self.options = options
        self.records = records
        self._backends = backends if backends is not None else Backends()
        self._parse = parse if parse is not None else _parse

    def __call__(self, why: str) -> None:
        try:
            new = self._parse(self.options["argv"])
        except usage.UsageError as e:
            if self.records is not None:
                self.records.reopen()
            _log.error(
                "{why}: reload failed, keeping the running settings: {error}",
                why=why,
                error=str(e),
            )
            return
        old, self.options = self.options, new
        applied, restart = changes(old, new)
        # The realm is in every key and nonce the server has handed out.
        new["realm"] = old["realm"]
        set_log_level(new["log-level"])
        # Only what is new: a warning already given at start-up or at an
        # earlier reload is not repeated at every SIGHUP.
        for warning in new["config-warnings"]:
            if warning not in old["config-warnings"]:
                _log.warn("{problem}", problem=warning)
        self._usage_file(old, new)
        credentials, generated = credentials_for(new, self._backends)
        changed = self._service.reload(
            # A generated user stays the one announced at startup.
            credentials=credentials if generated is None else None,
            policy=peer_policy_for(new),
            config=server_config_for(new),
            tls=tls_for(new),
        )
        apply_nonce_keys(self._service, new)
        _log.info("{why}: reloaded {changed}", why=why, changed=", ".join(changed) or "nothing")
        if applied:
            _log.info("{why}: {differences}", why=why, differences="; ".join(applied))
        if restart:
            _log.warn(
                "{why}: {options} changed, which takes a restart",
                why=why,
                options=", ".join(f"--{name}" for name in restart),
            )

    def _usage_file(self, old: Options, new: Options) -> None:
        """
        Reopen the usage file (after logrotate moved it), at its new path
        if C{--usage-file} changed; start writing one if it is new.
        """
        opener = usage_opener(new)
        if self.records is None:
            if opener is not None:
                self.records = UsageRecords(opener, new["realm"], time.time)
                self._service.server.add_observer(self.records)
            return
        if old["usage-file"] != new["usage-file"]:
            self.records.move_to(opener)
        else:
            self.records.reopen()


def _parse(argv: list[str]) -> Options:
    options = Options()
    options.parseOptions(argv)
    return options


def changes(old: Options, new: Options) -> tuple[list[str], list[str]]:
    """
    What a reload changed: the options applied (each as it would be
    logged), and the names of those that take a restart.
    """
    applied: list[str] = []
    restart: list[str] = []
    for spec in OPTIONS:
        if spec.reload is Reload.NOT_A_SETTING or old.get(spec.name) == new.get(spec.name):
            continue
        if spec.reload is Reload.RESTART or _new_database(spec, old, new):
            restart.append(spec.name)
        elif spec.name not in _DESCRIBED_BY_NAME:
            applied.append(_described(spec, old, new))
    applied += _user_changes(old, new)
    serials = [_serial(o) for o in (old, new)]
    if serials[0] != serials[1]:
        applied.append(f"certificate serial {serials[0]} -> {serials[1]}")
    return applied, restart


#: Options whose change is described by the users it adds, removes or
#: gives a new password (L{_user_changes}), never by their values.
_DESCRIBED_BY_NAME = ("user",)


def _new_database(spec: OptionSpec, old: Options, new: Options) -> bool:
    """
    Whether C{--user-db} now names another database: a database is opened
    once (a text file is read again at each reload).
    """
    return spec.name == "user-db" and old.get("user-db-sqlite") != new.get("user-db-sqlite")


def _described(spec: OptionSpec, old: Options, new: Options) -> str:
    before, after = old.get(spec.name), new.get(spec.name)
    if spec.secret:
        return f"--{spec.name}: {_count(before)} -> {_count(after)} value(s)"
    return f"--{spec.name} {_shown(before)} -> {_shown(after)}"


def _count(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    return 0 if value is None else 1


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _user_changes(old: Options, new: Options) -> list[str]:
    """
    Static users added, removed or given a new password (by name only),
    from --user and the lines of a --user-db file.
    """
    users = [static_users(o) for o in (old, new)]
    if users[0] == users[1]:
        return []
    added = sorted(users[1].keys() - users[0].keys())
    removed = sorted(users[0].keys() - users[1].keys())
    changed = sorted(n for n in users[0].keys() & users[1].keys() if users[0][n] != users[1][n])
    return [
        f"users {label}: {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("new password", changed))
        if names
    ]


def _serial(options: Options) -> str | None:
    if options["cert"] is None:
        return None
    try:
        pem = read_file(options["cert"])
        return format(x509.load_pem_x509_certificate(pem).serial_number, "x")
    except (OSError, ValueError):
        return "unreadable"
