# -*- test-case-name: tests.test_tap,tests.test_config_file,tests.test_option_table -*-
"""
The options of C{twistd turn}: the command line and a coturn-style
configuration file (L{txturn.app.config_file}) read into checked values, with
one-line errors.  Every option is a row of L{txturn.app.option_table};
this module makes Twisted's parser and C{--help} from the rows, and checks
what involves more than one option.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
import textwrap
from functools import partial
from typing import Any, Callable, Sequence

from twisted.python import usage

from txturn import __version__
from txturn.app.config_file import ACCEPTED, ConfigFileError, read_config
from txturn.app.host_addresses import default_listen_addresses, default_relay_addresses
from txturn.app.option_table import GROUPS, OPTIONS, OptionSpec, in_group
from txturn.auth.credentials import CredentialError, StaticCredentials
from txturn.auth.user_db import UserDbError, check_database, sqlite_path
from txturn.fleet.address import parse_redis_url
from txturn.sessions import MIN_TOKEN_LENGTH
from txturn.transports.tls import TlsConfigurationError, TlsCredentials
from txturn.util.files import append_private
from txturn.util.log_level import LEVELS
from txturn.util.privileged import read_file, read_text

#: Where a REST API secret can come from without appearing in ps.
SECRET_VARIABLE = "TXTURN_STATIC_AUTH_SECRET"

#: Where the sessions API's token may come from instead of a file.
ADMIN_TOKEN_VARIABLE = "TXTURN_ADMIN_TOKEN"
#: Where --redis is read from when not given, so its password stays out of ps.
REDIS_VARIABLE = "TXTURN_REDIS_URL"

#: Fewest characters of a key of C{--nonce-key-file}.
MIN_NONCE_KEY = 16
#: Keys of a configuration file that are twistd's options.
_TWISTD_KEYS = frozenset(["pidfile", "logfile", "uid", "gid"])
#: coturn's flags that are no-ops for txturn, accepted on the command line.
_COTURN_FLAGS = ("lt-cred-mech", "use-auth-secret", "fingerprint")


def _parameters() -> list[list[Any]]:
    """
    Twisted's C{optParameters}, coerce column included, for every option
    that takes one value.
    """
    return [
        [spec.name, spec.short, spec.default, spec.help, partial(spec.parse)]
        for spec in OPTIONS
        if not spec.flag and not spec.repeatable
    ]


def _flags() -> list[list[Any]]:
    return [
        [spec.name, spec.short, spec.help]
        for spec in OPTIONS
        if spec.flag and spec.name not in ("help", "version")
    ]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs a TURN/STUN server (RFC 8656, RFC 8489) on UDP, TCP, TLS and DTLS. With no "
        "credential options it generates one user and logs it with a "
        "ready-to-paste WebRTC iceServers snippet; it never relays anonymously."
    )

    optParameters: list[list[Any]] = _parameters()
    optFlags: list[list[Any]] = _flags()

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for spec in OPTIONS:
            if spec.name not in ("help", "version"):
                self[spec.name] = spec.initial()
        #: What --user-db and --redis name, once checked.
        self["user-db-sqlite"] = None
        self["user-db-tables"] = ()
        self["redis-address"] = None
        #: FILE:LINE warnings about the configuration file, for the log.
        self["config-warnings"] = []

    def opt_version(self) -> None:
        """
        Print txturn's version and exit.
        """
        import twisted

        sys.stdout.write(f"txturn {__version__} (Twisted {twisted.__version__})\n")
        raise SystemExit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        The configuration file (C{-c}/C{--config}) first, then the command
        line, which overrides the file's single-valued options and adds to
        its repeatable ones.  Under twistd an error is one line on stderr
        and exit status 2, not the whole help.
        """
        argv = list(sys.argv[1:] if options is None else options)
        #: What a reload parses again.
        self["argv"] = argv
        try:
            path = _config_path(argv)
            file_arguments: list[str] = []
            if path is not None:
                file_arguments = self._read_config(path)
            super().parseOptions(file_arguments + argv)  # type: ignore[no-untyped-call]
        except (usage.UsageError, ConfigFileError) as e:
            if not isinstance(self.parent, usage.Options):
                if isinstance(e, ConfigFileError):
                    raise usage.UsageError(str(e)) from None
                raise
            sys.stderr.write(f"twistd turn: {e}\n")
            raise SystemExit(2) from None

    def _read_config(self, path: str) -> list[str]:
        """
        The file's options as arguments, each checked on its own first so
        that a bad one is reported as FILE:LINE; keys that belong to twistd
        (pidfile, log-file, proc-user, proc-group) are kept for
        L{_twistd_options}.
        """
        entries, warnings = read_config(path)
        self["config-warnings"] += warnings
        arguments: list[str] = []
        self["config-twistd"] = {}
        known = self._known_options()
        for entry in entries:
            if entry.key in _TWISTD_KEYS:
                if entry.value is None:
                    raise ConfigFileError(f"{entry.origin}: {entry.key} needs a value")
                self["config-twistd"][entry.key] = (entry.value, entry.origin)
                continue
            if entry.key not in known:
                self["config-warnings"].append(f"{entry.origin}: unknown option {entry.key}")
                continue
            try:
                _Probe().parseOptions([entry.argument()])
            except usage.UsageError as e:
                raise ConfigFileError(f"{entry.origin}: {e}") from None
            arguments.append(entry.argument())
        return arguments

    def _known_options(self) -> set[str]:
        names = {spec.name for spec in OPTIONS} | {spec.coturn for spec in OPTIONS if spec.coturn}
        return names - {"config", "help", "version"}

    def _twistd_options(self) -> None:
        """
        pidfile, log-file, proc-user and proc-group from the configuration
        file become twistd's --pidfile, --logfile, --uid and --gid, unless
        twistd's own command line set them.
        """
        parent = self.parent
        settings: dict[str, tuple[str, str]] = self.get("config-twistd", {})
        if not settings or not isinstance(parent, usage.Options):
            return
        for key, (value, origin) in settings.items():
            if key == "pidfile" and parent.get("pidfile") in (None, "twistd.pid"):
                parent["pidfile"] = os.path.abspath(value)
            elif key == "logfile" and parent.get("logfile") is None:
                parent["logfile"] = value
            elif key in ("uid", "gid") and parent.get(key) is None:
                parent[key] = _user_or_group(key, value, origin)

    def getUsage(self, width: int | None = None) -> str:
        """
        Grouped help, like coturn's man page, from the option table.
        """
        lines = [
            f"Usage: twistd [twistd options] turn {self.synopsis}",
            "",
            textwrap.fill(self.longdesc, 78),
            "",
        ]
        for title in GROUPS:
            if title:
                lines.append(f"{title}:")
            for spec in in_group(title):
                lines.append(help_line(spec))
            lines.append("")
        spellings = [f"--{s.coturn}" for s in OPTIONS if s.coturn and s.coturn != s.name]
        spellings += [f"--{name}" for name in _COTURN_FLAGS] + ["-v", "-V"]
        lines.append(
            textwrap.fill(
                f"coturn's spellings work too: {', '.join(spellings)}; and -c reads a "
                "turnserver.conf.",
                78,
            )
        )
        return "\n".join(lines)

    def postOptions(self) -> None:
        if not 0 < self["min-port"] <= self["max-port"]:
            raise usage.UsageError("--min-port must be 1-65535 and not above --max-port")
        if (self["max-port"] - self["min-port"] + 1) // self["workers"] < 2:
            raise usage.UsageError(
                f"--min-port to --max-port is too small a range for {self['workers']} workers"
            )
        if self["Verbose"]:
            self["log-level"] = LEVELS["debug"]
        self._secrets()
        self._admin_token()
        self._twistd_options()
        if self["no-udp-relay"] and self["no-tcp-relay"]:
            raise usage.UsageError("--no-udp-relay and --no-tcp-relay leave nothing to relay")
        if not self["listen"]:
            self["listen"] = default_listen_addresses()
        if self["user-db"] is not None:
            self._read_user_db()
        self._redis()
        self._nonce_keys()
        if self["no-software"]:
            self["software"] = None
        self._transports()
        self._check_credential_file()
        self._check_usage_file()
        if not self["relay-ip"]:
            self["relay-ip"] = default_relay_addresses(self["listen"])
        self["external-map"] = self._external_map()

    def _check_usage_file(self) -> None:
        if self["usage-file"] is not None:
            try:
                append_private(self["usage-file"]).close()
            except OSError as e:
                raise usage.UsageError(
                    f"cannot write --usage-file {self['usage-file']}: {e.strerror}"
                ) from None

    def _check_credential_file(self) -> None:
        self["credential-file-user"] = read_credential_file(self["credential-file"])

    def _secrets(self) -> None:
        """
        REST secrets from --static-auth-secret, the file of
        --static-auth-secret-file and TXTURN_STATIC_AUTH_SECRET, in that
        order.
        """
        path = self["static-auth-secret-file"]
        if path is not None:
            self["static-auth-secret"] += secret_lines("static-auth-secret-file", path)
        environment = os.environ.get(SECRET_VARIABLE)
        if environment:
            self["static-auth-secret"].append(environment)

    def _nonce_keys(self) -> None:
        """
        The nonce keys of C{--nonce-key-file}, first the signing one.
        """
        self["nonce-keys"] = None
        path = self["nonce-key-file"]
        if path is None:
            return
        if self["redis"] is not None:
            raise usage.UsageError(
                "--nonce-key-file is for servers without --redis, which share their nonce keys"
            )
        keys = secret_lines("nonce-key-file", path)
        if any(len(key) < MIN_NONCE_KEY for key in keys):
            raise usage.UsageError(
                f"--nonce-key-file {path}: every key needs {MIN_NONCE_KEY} characters or more"
            )
        self["nonce-keys"] = [key.encode("utf-8") for key in keys]

    def _admin_token(self) -> None:
        """
        The sessions API's bearer token, from C{--admin-token-file} or
        TXTURN_ADMIN_TOKEN (never argv, which every local user can read).
        """
        self["admin-token"] = None
        if self["admin-port"] is None:
            return
        path = self["admin-token-file"]
        token = ""
        if path is not None:
            try:
                lines = read_text(path).splitlines()
                token = lines[0].strip() if lines else ""
            except OSError as e:
                raise usage.UsageError(
                    f"cannot read --admin-token-file {path}: {e.strerror}"
                ) from None
        else:
            token = os.environ.get(ADMIN_TOKEN_VARIABLE, "").strip()
        if not token:
            raise usage.UsageError(
                f"--admin-port needs a token: --admin-token-file FILE or {ADMIN_TOKEN_VARIABLE}"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise usage.UsageError(
                f"the sessions API token must be at least {MIN_TOKEN_LENGTH} characters"
            )
        self["admin-token"] = token.encode("utf-8")

    def _read_user_db(self) -> None:
        path = sqlite_path(self["user-db"])
        if path is not None:
            self._sqlite_user_db(path)
            return
        path = self["user-db"]
        try:
            data = read_file(path)
        except OSError as e:
            raise usage.UsageError(f"cannot read --user-db {path}: {e.strerror}") from e
        if data.startswith(b"SQLite format 3"):
            # coturn's userdb (or ours, named without sqlite://).
            self._sqlite_user_db(path)
            return
        try:
            self["user-db-lines"] = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise usage.UsageError(f"--user-db {path} is not UTF-8 text") from None
        try:
            StaticCredentials.from_lines(self["realm"], self["user-db-lines"])
        except CredentialError as e:
            raise usage.UsageError(f"--user-db {self['user-db']}: {e}") from e

    def _sqlite_user_db(self, path: str) -> None:
        try:
            self["user-db-tables"] = check_database(path)
        except UserDbError as e:
            raise usage.UsageError(f"--user-db: {e}") from None
        self["user-db-sqlite"] = path

    def _redis(self) -> None:
        if self["redis"] is None and os.environ.get(REDIS_VARIABLE):
            # Kept out of ps, like the REST secret: the URL may hold a password.
            self["redis"] = os.environ[REDIS_VARIABLE]
        if self["redis"] is not None:
            try:
                self["redis-address"] = address = parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}") from None
            if address.ca_file is not None and not os.access(address.ca_file, os.R_OK):
                raise usage.UsageError(f"--redis: cannot read ssl_ca_certs {address.ca_file}")
        elif self["usage-stream"] is not None:
            raise usage.UsageError("--usage-stream needs --redis")

    def _transports(self) -> None:
        """
        The client transports left on, and the certificate TLS and DTLS
        need, checked now so a bad file stops startup with its name.
        """
        self["transports"] = {t for t in ("udp", "tcp", "tls", "dtls") if not self[f"no-{t}"]}
        if not self["transports"]:
            raise usage.UsageError(
                "--no-udp, --no-tcp, --no-tls and --no-dtls leave nothing to serve"
            )
        if self["key"] is not None and self["cert"] is None:
            raise usage.UsageError("--key needs --cert")
        if self["cert"] is not None:
            try:
                TlsCredentials(self["cert"], self["key"] or self["cert"], self["ca-file"])
            except TlsConfigurationError as e:
                raise usage.UsageError(str(e)) from None

    def _external_map(self) -> dict[str, str]:
        """
        --external-ip pairs as relay address -> public address.  A PUBLIC
        without PRIVATE stands for the only relay address of its family.
        """
        mapping: dict[str, str] = {}
        for public, private in self["external-ip"]:
            if private is None:
                same = [r for r in self["relay-ip"] if (":" in r) == (":" in public)]
                if len(same) != 1:
                    raise usage.UsageError(
                        f"--external-ip {public} without /PRIVATE needs exactly one relay "
                        "address of its family; name the private one"
                    )
                private = same[0]
            if private not in self["relay-ip"]:
                raise usage.UsageError(f"--external-ip: {private} is not a relay address")
            if private in mapping:
                raise usage.UsageError(f"--external-ip: {private} is mapped twice")
            mapping[private] = public
        return mapping


def help_line(spec: OptionSpec) -> str:
    """
    One option in C{--help}: its spellings, its help, its default.
    """
    flag = f"-{spec.short}, " if spec.short else "    "
    spelling = spec.name if spec.flag else f"{spec.name}={spec.metavar}"
    text = spec.help if spec.default is None else f"{spec.help} [default: {spec.default}]"
    head = f"  {flag}--{spelling:<32} "
    return textwrap.fill(text, 100, initial_indent=head, subsequent_indent=" " * len(head))


def _setter(spec: OptionSpec) -> Callable[..., None]:
    """
    The C{opt_} method of a repeatable option (each use adds a value) or of
    a coturn spelling of a flag or a single-valued option.
    """
    if spec.flag:

        def flag(self: Options) -> None:
            self[spec.name] = 1

        flag.__doc__ = spec.help
        return flag

    def add(self: Options, value: str) -> None:
        parsed = spec.parse(value)
        if not spec.repeatable:
            self[spec.name] = parsed
        elif isinstance(parsed, list):
            self[spec.name] += parsed
        else:
            self[spec.name].append(parsed)

    add.__doc__ = spec.help
    return add


def _ignored(self: Options) -> None:
    """
    Accepted for coturn: what txturn always does.
    """


def _derive_handlers() -> None:
    """
    The C{opt_} methods Twisted dispatches to: one per repeatable option
    (and its short spelling), one per coturn spelling of ours, and coturn's
    flags that need nothing.
    """
    for spec in OPTIONS:
        names = []
        if spec.repeatable:
            names += [spec.name] + ([spec.short] if spec.short else [])
        if spec.coturn is not None and spec.coturn != spec.name:
            names.append(spec.coturn)
        for name in names:
            setattr(Options, "opt_" + name.replace("-", "_"), _setter(spec))
    for name in _COTURN_FLAGS:
        assert name in ACCEPTED, name
        setattr(Options, "opt_" + name.replace("-", "_"), _ignored)


_derive_handlers()


def secret_lines(option: str, path: str) -> list[str]:
    """
    The lines of a file of secrets (C{#} comments and blank lines left
    out), or one line on why it cannot be used.
    """
    try:
        lines = [line.strip() for line in read_text(path).splitlines()]
    except OSError as e:
        raise usage.UsageError(f"cannot read --{option} {path}: {e.strerror}") from None
    found = [line for line in lines if line and not line.startswith("#")]
    if not found:
        raise usage.UsageError(f"--{option} {path} holds no secret")
    return found


def read_credential_file(path: str | None) -> tuple[str, str] | None:
    """
    The (name, password) a --credential-file keeps, or C{None} when there
    is none yet.

    @raise usage.UsageError: if it cannot be read or is malformed.
    """
    if path is None or not os.path.exists(path):
        return None
    try:
        name, sep, password = read_text(path).strip().partition(":")
    except OSError as e:
        raise usage.UsageError(f"cannot read --credential-file {path}: {e.strerror}") from None
    if not (name and sep and password):
        raise usage.UsageError(f"--credential-file {path}: expected name:password")
    return name, password


class _Probe(Options):
    """
    Options that check one argument of a configuration file on its own:
    its row's coerce checks the value as it is parsed.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        usage.Options.parseOptions(self, options)  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        pass


def _config_path(argv: list[str]) -> str | None:
    """
    The configuration file named on the command line, if any.
    """
    for i, argument in enumerate(argv):
        if argument in ("-c", "--config"):
            if i + 1 >= len(argv):
                raise usage.UsageError(f"{argument} needs a FILE")
            return argv[i + 1]
        if argument.startswith("--config="):
            return argument.partition("=")[2]
        if argument.startswith("-c") and len(argument) > 2:
            return argument[2:]
    return None


def _user_or_group(key: str, value: str, origin: str) -> int:
    """
    A user or group name or number from the file, as twistd's --uid and
    --gid want it.
    """
    if value.isdigit():
        return int(value)
    try:
        if key == "uid":
            return pwd.getpwnam(value).pw_uid
        return grp.getgrnam(value).gr_gid
    except KeyError:
        kind = "user" if key == "uid" else "group"
        raise usage.UsageError(f"{origin}: no {kind} named {value!r}") from None
