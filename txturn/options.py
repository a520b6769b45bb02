# -*- test-case-name: tests.test_tap,tests.test_config_file -*-
"""
The options of C{twistd turn}: the command line and a coturn-style
configuration file (L{txturn.config_file}) read into checked values, with
one-line errors; L{txturn.tap} turns them into objects.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import sys
import textwrap
from typing import Any, Sequence

from twisted.python import usage

from txturn import __version__
from txturn.config_file import ConfigFileError, read_config
from txturn.credentials import CredentialError, StaticCredentials
from txturn.files import append_private
from txturn.host_addresses import default_listen_addresses, default_relay_addresses
from txturn.log_level import LEVELS
from txturn.policy import parse_range
from txturn.privileged import read_file, read_text
from txturn.redis_address import parse_redis_url
from txturn.tls import TlsConfigurationError, TlsCredentials
from txturn.user_db import UserDbError, check_database, sqlite_path

#: Where a REST API secret can come from without appearing in ps.
SECRET_VARIABLE = "TXTURN_STATIC_AUTH_SECRET"
#: Where --redis is read from when not given, so its password stays out of ps.
REDIS_VARIABLE = "TXTURN_REDIS_URL"
#: Keys of a configuration file that are twistd's options.
_TWISTD_KEYS = frozenset(["pidfile", "logfile", "uid", "gid"])

#: Option groups for --help, in the order a reader of coturn's man page
#: expects them.
_GROUPS: list[tuple[str, list[str]]] = [
    ("Listening", ["port", "tls-port", "listen", "no-udp", "no-tcp", "no-tls", "no-dtls"]),
    ("TLS and DTLS", ["cert", "key", "ca-file"]),
    (
        "Relays",
        [
            "relay-ip",
            "external-ip",
            "min-port",
            "max-port",
            "max-allocate-lifetime",
            "no-udp-relay",
            "no-tcp-relay",
            "tcp-connect-timeout",
            "tcp-buffer",
        ],
    ),
    (
        "Authentication",
        [
            "realm",
            "user",
            "user-db",
            "user-cache-ttl",
            "static-auth-secret",
            "static-auth-secret-file",
            "credential-file",
            "stale-nonce",
        ],
    ),
    ("Peers", ["allowed-peer-ip", "denied-peer-ip", "nat64-prefix", "allow-loopback-peers"]),
    (
        "Quotas and limits",
        [
            "user-quota",
            "total-quota",
            "max-permissions",
            "max-channels",
            "max-pending-connections",
            "max-bps",
            "max-tcp-buffer",
            "challenge-rate",
        ],
    ),
    (
        "Connections before they allocate",
        [
            "max-connections",
            "max-connections-per-ip",
            "handshake-timeout",
            "idle-timeout",
            "frame-timeout",
            "max-dtls-sessions",
            "max-dtls-sessions-per-ip",
        ],
    ),
    ("Identity", ["software", "no-software", "server-name"]),
    ("Redirection", ["alternate-server", "alternate-server-load"]),
    ("Fleet", ["redis", "redis-ttl", "usage-stream"]),
    ("Processes", ["workers", "no-fast-path"]),
    ("Draining", ["drain-timeout"]),
    ("Metrics and usage", ["prometheus", "prometheus-port", "prometheus-address", "usage-file"]),
    ("Configuration and logging", ["config", "log-level", "verbose", "Verbose"]),
    ("", ["help", "version"]),
]


def group(title: str) -> list[str]:
    """
    The options --help lists under C{title}.
    """
    return next(names for heading, names in _GROUPS if heading == title)


#: What --help calls each option's value.
_METAVARS = {
    "port": "N",
    "tls-port": "N",
    "min-port": "N",
    "max-port": "N",
    "realm": "REALM",
    "user-db": "FILE|sqlite:///PATH",
    "user-cache-ttl": "SECONDS",
    "redis": "URL",
    "redis-ttl": "SECONDS",
    "usage-stream": "KEY",
    "static-auth-secret-file": "FILE",
    "config": "FILE",
    "log-level": "LEVEL",
    "usage-file": "FILE",
    "credential-file": "FILE",
    "max-allocate-lifetime": "SECONDS",
    "stale-nonce": "SECONDS",
    "tcp-connect-timeout": "SECONDS",
    "drain-timeout": "SECONDS",
    "workers": "N|auto",
    "software": "NAME",
    "cert": "FILE",
    "key": "FILE",
    "ca-file": "FILE",
    "tcp-buffer": "BYTES",
    "max-tcp-buffer": "BYTES",
    "max-bps": "BYTES",
    "user-quota": "N|auto",
    "total-quota": "N",
    "max-permissions": "N",
    "max-channels": "N",
    "max-pending-connections": "N",
    "challenge-rate": "N",
    "max-connections": "N",
    "max-connections-per-ip": "N",
    "handshake-timeout": "SECONDS",
    "idle-timeout": "SECONDS",
    "frame-timeout": "SECONDS",
    "max-dtls-sessions": "N",
    "max-dtls-sessions-per-ip": "N",
}


#: Options that are a number of seconds, positive.
_SECONDS = (
    "drain-timeout",
    "user-cache-ttl",
    "redis-ttl",
    "max-allocate-lifetime",
    "stale-nonce",
    "tcp-connect-timeout",
    "handshake-timeout",
    "idle-timeout",
    "frame-timeout",
)
#: Options that are a whole number, with their minimum.
_COUNTS = (
    ("tcp-buffer", 1),
    ("max-tcp-buffer", 1),
    ("total-quota", 0),
    ("max-permissions", 0),
    ("max-channels", 0),
    ("max-pending-connections", 0),
    ("max-bps", 0),
    ("challenge-rate", 1),
    ("max-connections", 0),
    ("max-connections-per-ip", 0),
    ("max-dtls-sessions", 1),
    ("max-dtls-sessions-per-ip", 1),
    ("alternate-server-load", 0),
)


def _port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"--{name} must be 0-65535, not {port}")
    return port


def _address(value: str, name: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise usage.UsageError(f"--{name} must be an IP address, not {value!r}") from None


def _range(value: str, name: str) -> list[Any]:
    try:
        return parse_range(value)
    except ValueError as e:
        raise usage.UsageError(f"--{name}: {e}") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs a TURN/STUN server (RFC 8656, RFC 8489) on UDP, TCP, TLS and DTLS. With no "
        "credential options it generates one user and logs it with a "
        "ready-to-paste WebRTC iceServers snippet; it never relays anonymously."
    )

    optParameters: list[list[Any]] = [
        ["port", "p", "3478", "UDP and TCP port for STUN and TURN."],
        ["tls-port", None, "5349", "TLS and DTLS port (443 works too)."],
        ["cert", None, None, "PEM certificate (and chain) for TLS and DTLS."],
        ["key", None, None, "PEM private key [default: the --cert file]."],
        ["ca-file", None, None, "PEM file of further chain certificates to send."],
        ["min-port", None, "49152", "Lowest relay port."],
        ["max-port", None, "65535", "Highest relay port."],
        ["realm", "r", "txturn", "Realm for long-term credentials."],
        [
            "user-db",
            "b",
            None,
            "File of name:password or name:0x<md5 key> lines, or an SQLite database of "
            "users (sqlite:///path; kept by txturn-admin, read without a restart).",
        ],
        [
            "user-cache-ttl",
            None,
            "10",
            "Seconds the keys of a user from an SQLite or Redis database are kept.",
        ],
        [
            "redis",
            None,
            None,
            "redis://[[user]:password@]host[:port][/db] (rediss:// for TLS) a fleet shares: "
            "users, per-user quotas across servers, revocations (txturn-admin) "
            "[default: $TXTURN_REDIS_URL].",
        ],
        [
            "redis-ttl",
            None,
            "30",
            "Seconds a server that stopped answering still counts in --redis quotas.",
        ],
        [
            "usage-stream",
            None,
            None,
            "Also add each usage record to this Redis stream (with --redis).",
        ],
        [
            "static-auth-secret-file",
            None,
            None,
            "File of TURN REST API secrets, one per line (kept out of ps).",
        ],
        ["config", "c", None, "coturn-style configuration file (turnserver.conf syntax)."],
        [
            "credential-file",
            None,
            None,
            "With no users: keep the generated user in FILE (mode 0600) across restarts.",
        ],
        [
            "usage-file",
            None,
            None,
            "Append a JSON usage record per ended allocation to FILE.",
        ],
        ["prometheus-port", None, "9641", "Port of the --prometheus metrics endpoint."],
        [
            "prometheus-address",
            None,
            "127.0.0.1",
            "Address of the --prometheus endpoint; relays can never reach it.",
        ],
        ["log-level", None, "info", "Least severe txturn events logged: debug, info, warn, error."],
        ["max-allocate-lifetime", None, "3600", "Longest allocation lifetime, seconds."],
        ["tcp-connect-timeout", None, "30", "Seconds a TCP Connect may take (at least 30)."],
        ["tcp-buffer", None, "65536", "Bytes a TCP peer may send before the client binds."],
        [
            "user-quota",
            None,
            "auto",
            "Concurrent allocations (and EVEN-PORT reservations) per user, 0 for no limit "
            "(486); auto: half of what the server can hold.",
        ],
        ["total-quota", None, "0", "Allocations in all; 0 for what the descriptors allow (508)."],
        ["max-permissions", None, "128", "Permissions per allocation, 0 for no limit (508)."],
        ["max-channels", None, "128", "Channels per allocation, 0 for no limit (508)."],
        [
            "max-pending-connections",
            None,
            "32",
            "Unbound RFC 6062 connections and Connects per allocation, 0 for no limit.",
        ],
        ["max-bps", None, "0", "Relayed bytes/s per allocation, both ways; 0 for none."],
        ["max-tcp-buffer", None, "65536", "Bytes held for a slow TCP/TLS client before dropping."],
        [
            "challenge-rate",
            None,
            "100",
            "401/438 answers per second to one address (burst: 10 s worth).",
        ],
        [
            "max-connections",
            None,
            "0",
            "TCP/TLS connections in all; 0 for a quarter of the descriptor limit.",
        ],
        [
            "max-connections-per-ip",
            None,
            "256",
            "TCP/TLS connections from one address holding no allocation; 0 for no limit.",
        ],
        ["handshake-timeout", None, "10", "Seconds a TLS or DTLS handshake may take."],
        [
            "idle-timeout",
            None,
            "60",
            "Seconds a connection or DTLS session may hold no allocation.",
        ],
        ["frame-timeout", None, "10", "Seconds a TCP/TLS client may take to finish a frame."],
        [
            "drain-timeout",
            None,
            "3600",
            "On SIGQUIT, seconds to wait for allocations to end before stopping.",
        ],
        [
            "workers",
            None,
            "1",
            "Worker processes relaying, one per core: N, or auto for every usable CPU.",
        ],
        ["max-dtls-sessions", None, "2000", "DTLS sessions in all."],
        ["max-dtls-sessions-per-ip", None, "100", "DTLS sessions from one address."],
        ["stale-nonce", None, "600", "Seconds a nonce stays valid."],
        ["software", None, f"txturn {__version__}", "SOFTWARE attribute sent."],
        [
            "alternate-server-load",
            None,
            "0",
            "Redirect to --alternate-server only from this many allocations; 0: always.",
        ],
        ["server-name", None, None, "This fleet's host name, sent as ALTERNATE-DOMAIN over TLS."],
    ]
    optFlags: list[list[Any]] = [
        ["allow-loopback-peers", None, "Let relays reach loopback peers (testing)."],
        ["verbose", "v", "Log at info level (the default; coturn's verbose)."],
        ["prometheus", None, "Serve live metrics at http://ADDRESS:PORT/metrics."],
        ["Verbose", "V", "Log at debug level (coturn's Verbose)."],
        ["no-software", None, "Send no SOFTWARE attribute."],
        ["no-udp", None, "Do not serve TURN over UDP."],
        ["no-tcp", None, "Do not serve TURN over TCP."],
        ["no-tls", None, "Do not serve TURN over TLS."],
        ["no-dtls", None, "Do not serve TURN over DTLS."],
        ["no-udp-relay", None, "Refuse UDP relays (403)."],
        ["no-tcp-relay", None, "Refuse TCP relays, RFC 6062 (442)."],
        [
            "no-fast-path",
            None,
            "Relay UDP in Python only, not through the compiled fast path (used when built).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["relay-ip"] = []
        self["user"] = []
        self["external-ip"] = []
        self["allowed-peer-ip"] = []
        self["denied-peer-ip"] = []
        self["nat64-prefix"] = []
        self["static-auth-secret"] = []
        self["alternate-server"] = []
        #: What --user-db and --redis name, once checked.
        self["user-db-sqlite"] = None
        self["user-db-tables"] = ()
        self["redis-address"] = None
        #: FILE:LINE warnings about the configuration file, for the log.
        self["config-warnings"] = []

    def opt_listen(self, value: str) -> None:
        """
        Address to listen on (repeatable; default all IPv4 and IPv6).
        """
        self["listen"].append(_address(value, "listen"))

    def opt_relay_ip(self, value: str) -> None:
        """
        Address relays are opened on (repeatable; default the listening ones).
        """
        self["relay-ip"].append(_address(value, "relay-ip"))

    def opt_user(self, value: str) -> None:
        """
        A user as NAME:PASSWORD (repeatable).
        """
        name, sep, password = value.partition(":")
        if not sep or not name or not password:
            raise usage.UsageError(f"--user must be NAME:PASSWORD, not {value!r}")
        self["user"].append((name, password))

    def opt_external_ip(self, value: str) -> None:
        """
        PUBLIC[/PRIVATE]: advertise PUBLIC for the relay address PRIVATE
        behind a 1:1 NAT (repeatable, one per relay address).
        """
        public, _, private = value.partition("/")
        self["external-ip"].append(
            (_address(public, "external-ip"), _address(private, "external-ip") if private else None)
        )

    def opt_allowed_peer_ip(self, value: str) -> None:
        """
        CIDR or A-B range relays may reach despite the default refusal of
        private, loopback, link-local... ranges (repeatable).
        """
        self["allowed-peer-ip"] += _range(value, "allowed-peer-ip")

    def opt_denied_peer_ip(self, value: str) -> None:
        """
        CIDR or A-B range relays never reach; wins over everything (repeatable).
        """
        self["denied-peer-ip"] += _range(value, "denied-peer-ip")

    def opt_nat64_prefix(self, value: str) -> None:
        """
        Your network's NAT64 prefix (/32-/96): the IPv4 peer in it is what
        the peer policy judges; 64:ff9b::/96 and 64:ff9b:1::/48 always are
        (repeatable).
        """
        try:
            prefix = ipaddress.IPv6Network(value.strip())
        except ValueError:
            raise usage.UsageError(
                f"--nat64-prefix must be an IPv6 prefix, not {value!r}"
            ) from None
        if prefix.prefixlen not in (32, 40, 48, 56, 64, 96):
            raise usage.UsageError("--nat64-prefix length must be 32, 40, 48, 56, 64 or 96")
        self["nat64-prefix"].append(prefix)

    def opt_alternate_server(self, value: str) -> None:
        """
        HOST:PORT (IPv6 as [ADDR]:PORT) another server of the fleet:
        Allocates are redirected to these in turn (300 Try Alternate),
        always or past --alternate-server-load, and while draining
        (repeatable).
        """
        host, sep, port = value.rpartition(":")
        if not sep:
            raise usage.UsageError(f"--alternate-server must be HOST:PORT, not {value!r}")
        self["alternate-server"].append(
            (_address(host, "alternate-server"), _port(port, "alternate-server"))
        )

    def opt_static_auth_secret(self, value: str) -> None:
        """
        Secret for TURN REST API ephemeral credentials (expiry:user);
        repeatable, so a secret can be rotated with overlap.  The
        environment variable TXTURN_STATIC_AUTH_SECRET works too, and keeps
        it out of ps.
        """
        if not value:
            raise usage.UsageError("--static-auth-secret must not be empty")
        self["static-auth-secret"].append(value)

    opt_L = opt_listen
    opt_u = opt_user

    # coturn's spellings of our options (config_file.ALIASES maps them in
    # files).

    def opt_listening_port(self, value: str) -> None:
        """
        coturn's name for --port.
        """
        self["port"] = value

    def opt_tls_listening_port(self, value: str) -> None:
        """
        coturn's name for --tls-port.
        """
        self["tls-port"] = value

    def opt_listening_ip(self, value: str) -> None:
        """
        coturn's name for --listen.
        """
        self.opt_listen(value)

    def opt_pkey(self, value: str) -> None:
        """
        coturn's name for --key.
        """
        self["key"] = value

    def opt_userdb(self, value: str) -> None:
        """
        coturn's name for --user-db (for txturn a text file of
        name:password lines, not coturn's SQLite database).
        """
        self["user-db"] = value

    def opt_no_software_attribute(self) -> None:
        """
        coturn's name for --no-software.
        """
        self["no-software"] = True

    def opt_version(self) -> None:
        """
        Print txturn's version and exit.
        """
        import twisted

        sys.stdout.write(f"txturn {__version__} (Twisted {twisted.__version__})\n")
        raise SystemExit(0)

    def opt_lt_cred_mech(self) -> None:
        """
        Accepted for coturn: long-term credentials are always on.
        """

    def opt_use_auth_secret(self) -> None:
        """
        Accepted for coturn: --static-auth-secret turns REST credentials on.
        """

    def opt_fingerprint(self) -> None:
        """
        Accepted for coturn: txturn always adds FINGERPRINT.
        """

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
        names = {p[0] for p in self.optParameters} | {f[0] for f in self.optFlags}
        names |= {name[4:].replace("_", "-") for name in dir(self) if name.startswith("opt_")}
        return names - {"config"}

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
        Grouped help, like coturn's man page, from the same option tables.
        """
        docs: dict[str, tuple[str | None, str, str | None]] = {}
        for long, short, default, doc in self.optParameters:
            metavar = _METAVARS.get(long, "VALUE")
            docs[long] = (
                short,
                f"{long}={metavar}",
                f"{doc} [default: {default}]" if default else doc,
            )
        for long, short, doc in self.optFlags:
            docs[long] = (short, long, doc)
        docs["listen"] = ("L", "listen=ADDR", self.opt_listen.__doc__)
        docs["relay-ip"] = (None, "relay-ip=ADDR", self.opt_relay_ip.__doc__)
        docs["user"] = ("u", "user=NAME:PASSWORD", self.opt_user.__doc__)
        docs["external-ip"] = (None, "external-ip=PUB[/PRIV]", self.opt_external_ip.__doc__)
        docs["allowed-peer-ip"] = (None, "allowed-peer-ip=RANGE", self.opt_allowed_peer_ip.__doc__)
        docs["denied-peer-ip"] = (None, "denied-peer-ip=RANGE", self.opt_denied_peer_ip.__doc__)
        docs["nat64-prefix"] = (None, "nat64-prefix=PREFIX", self.opt_nat64_prefix.__doc__)
        docs["alternate-server"] = (
            None,
            "alternate-server=HOST:PORT",
            self.opt_alternate_server.__doc__,
        )
        docs["static-auth-secret"] = (
            None,
            "static-auth-secret=SECRET",
            self.opt_static_auth_secret.__doc__,
        )
        docs["help"] = (None, "help", "Show this help and exit.")
        docs["version"] = (None, "version", "Show txturn's version and exit.")
        lines = [
            f"Usage: twistd [twistd options] turn {self.synopsis}",
            "",
            textwrap.fill(self.longdesc, 78),
            "",
        ]
        for title, names in _GROUPS:
            if title:
                lines.append(f"{title}:")
            for name in names:
                short, spelling, doc = docs[name]
                flag = f"-{short}, " if short else "    "
                text = " ".join((doc or "").split())
                head = f"  {flag}--{spelling:<32} "
                lines.append(
                    textwrap.fill(text, 100, initial_indent=head, subsequent_indent=" " * len(head))
                )
            lines.append("")
        lines.append(
            textwrap.fill(
                "coturn's spellings work too: --listening-port, --tls-listening-port, "
                "--listening-ip, --pkey, --userdb, --no-software-attribute, --lt-cred-mech, "
                "--use-auth-secret, --fingerprint, -v, -V; and -c reads a turnserver.conf.",
                78,
            )
        )
        return "\n".join(lines)

    def postOptions(self) -> None:
        self._numbers()
        if not 0 < self["min-port"] <= self["max-port"]:
            raise usage.UsageError("--min-port must be 1-65535 and not above --max-port")
        self["workers"] = _workers(self["workers"])
        if (self["max-port"] - self["min-port"] + 1) // self["workers"] < 2:
            raise usage.UsageError(
                f"--min-port to --max-port is too small a range for {self['workers']} workers"
            )
        self._log_level()
        self._secrets()
        self._twistd_options()
        if self["no-udp-relay"] and self["no-tcp-relay"]:
            raise usage.UsageError("--no-udp-relay and --no-tcp-relay leave nothing to relay")
        if not self["realm"]:
            raise usage.UsageError("--realm must not be empty")
        if not self["listen"]:
            self["listen"] = default_listen_addresses()
        if self["user-db"] is not None:
            self._read_user_db()
        self._redis()
        if self["no-software"]:
            self["software"] = None
        self._transports()
        self._check_credential_file()
        if self["usage-file"] is not None:
            try:
                append_private(self["usage-file"]).close()
            except OSError as e:
                raise usage.UsageError(
                    f"cannot write --usage-file {self['usage-file']}: {e.strerror}"
                ) from None
        if not self["relay-ip"]:
            self["relay-ip"] = default_relay_addresses(self["listen"])
        self["external-map"] = self._external_map()

    def _numbers(self) -> None:
        """
        Ports, seconds and counts, each checked against its range.
        """
        self["port"] = _port(self["port"], "port")
        self["tls-port"] = _port(self["tls-port"], "tls-port")
        self["prometheus-port"] = _port(self["prometheus-port"], "prometheus-port")
        self["prometheus-address"] = _address(self["prometheus-address"], "prometheus-address")
        self["min-port"] = _port(self["min-port"], "min-port")
        self["max-port"] = _port(self["max-port"], "max-port")
        for name in _SECONDS:
            try:
                self[name] = float(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a number of seconds") from None
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["tcp-connect-timeout"] < 30:
            raise usage.UsageError("--tcp-connect-timeout must be at least 30 (RFC 6062)")
        if self["user-quota"] == "auto":
            self["user-quota"] = None
        else:
            self._count("user-quota", 0, " or auto")
        for name, minimum in _COUNTS:
            self._count(name, minimum)

    def _count(self, name: str, minimum: int, alternative: str = "") -> None:
        try:
            self[name] = int(self[name])
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number{alternative}") from None
        if self[name] < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum}")

    def _check_credential_file(self) -> None:
        self["credential-file-user"] = read_credential_file(self["credential-file"])

    def _log_level(self) -> None:
        name = "debug" if self["Verbose"] else self["log-level"]
        if name not in LEVELS:
            raise usage.UsageError(
                f"--log-level must be one of {', '.join(sorted(LEVELS))}, not {name!r}"
            )
        self["log-level"] = LEVELS[name]

    def _secrets(self) -> None:
        """
        REST secrets from --static-auth-secret, the file of
        --static-auth-secret-file and TXTURN_STATIC_AUTH_SECRET, in that
        order.
        """
        path = self["static-auth-secret-file"]
        if path is not None:
            try:
                lines = [line.strip() for line in read_text(path).splitlines()]
            except OSError as e:
                raise usage.UsageError(
                    f"cannot read --static-auth-secret-file {path}: {e.strerror}"
                ) from None
            found = [line for line in lines if line and not line.startswith("#")]
            if not found:
                raise usage.UsageError(f"--static-auth-secret-file {path} holds no secret")
            self["static-auth-secret"] += found
        environment = os.environ.get(SECRET_VARIABLE)
        if environment:
            self["static-auth-secret"].append(environment)

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
    Options that check one argument of a configuration file on its own.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        usage.Options.parseOptions(self, options)  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        self._numbers()
        self._log_level()


def _workers(value: Any) -> int:
    """
    C{--workers}: a count, or C{auto} for the CPUs this process may use.
    """
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        count = int(value)
    except ValueError:
        raise usage.UsageError("--workers must be a whole number or auto") from None
    if not 1 <= count <= 256:
        raise usage.UsageError("--workers must be 1-256 or auto")
    return count


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
