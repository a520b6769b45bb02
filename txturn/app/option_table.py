# -*- test-case-name: tests.test_option_table -*-
"""
Every option of C{twistd turn}, once: L{OPTIONS}, a table of
L{OptionSpec}.  Everything else about an option is derived from its row:

 - the command line (L{txturn.app.options.Options}: Twisted's
   C{optParameters} and C{optFlags}, with each row's C{coerce} in
   Twisted's coerce column, and an C{opt_} method for each repeatable
   option and each coturn spelling);
 - C{--help}, grouped as coturn's man page is (L{GROUPS});
 - the configuration file: which keys are ours and under which coturn
   names (L{txturn.app.config_file});
 - what SIGHUP does with it (L{Reload}, L{txturn.app.reload}): applied,
   or reported as needing a restart;
 - the configuration reference and the man page (C{doc/_ext}).

A test (C{tests/test_option_table}) fails when an option the parser
knows has no row, and changes each option in turn to check that a
reload applies or reports it.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Callable

from twisted.python import usage

from txturn import __version__
from txturn.auth.credentials import REST_HMACS
from txturn.core.peer_policy import parse_range
from txturn.util.log_level import LEVELS


class Reload(enum.Enum):
    """
    What SIGHUP (and SIGUSR2) does with a changed option.
    """

    #: The running server takes the new value.
    APPLIED = "applied on reload"
    #: Bound sockets, processes, or state handed out (keys, nonces) depend
    #: on it: a reload logs that it changed and takes a restart.
    RESTART = "takes a restart"
    #: Not a setting (--help, --version).
    NOT_A_SETTING = "not a setting"


#: The groups of --help and of the configuration reference, in the order a
#: reader of coturn's man page expects them.
GROUPS = (
    "Listening",
    "TLS and DTLS",
    "Relays",
    "Authentication",
    "Peers",
    "Quotas and limits",
    "Connections before they allocate",
    "Identity",
    "Redirection",
    "Fleet",
    "Processes",
    "Draining",
    "Metrics and usage",
    "Sessions API",
    "Configuration and logging",
    "",
)


Coerce = Callable[[str, str], Any]


@dataclass(frozen=True)
class OptionSpec:
    """
    One option.

    @ivar name: the long name, C{--name} on the command line and C{name}
        in a configuration file.
    @ivar group: its heading in L{GROUPS}.
    @ivar reload: what a reload does when it changed.
    @ivar help: one or two sentences for --help and the reference.
    @ivar metavar: what --help calls its value; C{None} for a flag.
    @ivar default: the default as it would be written, or C{None}.
    @ivar short: the one-letter spelling, if any.
    @ivar coerce: C{(name, text) -> value}, raising L{usage.UsageError}
        with a one-line reason; C{None} keeps the text.
    @ivar repeatable: whether each use adds a value (a list).
    @ivar coturn: coturn's name for it, when coturn has the option
        (the same name or another); accepted in files and on the command
        line.
    @ivar example: a valid value other than the default (for flags,
        C{None}), with which the tests change the option.
    @ivar secret: shown as a count, never as a value, in the log.
    """

    name: str
    group: str
    reload: Reload
    help: str
    metavar: str | None = None
    default: str | None = None
    short: str | None = None
    coerce: Coerce | None = None
    repeatable: bool = False
    coturn: str | None = None
    example: str | None = None
    secret: bool = False

    @property
    def flag(self) -> bool:
        return self.metavar is None

    def parse(self, text: str) -> Any:
        """
        The value of C{text} given for this option.
        """
        return self.coerce(self.name, text) if self.coerce is not None else text

    def initial(self) -> Any:
        """
        The value before any argument: the parsed default, an empty list
        for a repeatable option, 0 for a flag.
        """
        if self.repeatable:
            return []
        if self.flag:
            return 0
        return None if self.default is None else self.parse(self.default)


# -- kinds of value: Twisted's coerce column, with a one-line reason --------


def port(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise usage.UsageError(f"--{name} must be 0-65535, not {value}")
    return value


def address(name: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise usage.UsageError(f"--{name} must be an IP address, not {text!r}") from None


def seconds(minimum: float = 0.0, why: str = "") -> Coerce:
    """
    A positive number of seconds, at least C{minimum} when given.
    """

    def coerce(name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds") from None
        if value <= 0:
            raise usage.UsageError(f"--{name} must be positive")
        if value < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum:g}{why}")
        return value

    return coerce


def count(minimum: int, auto: bool = False) -> Coerce:
    """
    A whole number of at least C{minimum}; with C{auto}, also C{auto}
    (C{None}: the server works it out).
    """

    def coerce(name: str, text: str) -> int | None:
        if auto and text == "auto":
            return None
        try:
            value = int(text)
        except ValueError:
            alternative = " or auto" if auto else ""
            raise usage.UsageError(f"--{name} must be a whole number{alternative}") from None
        if value < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum}")
        return value

    return coerce


def workers(name: str, text: str) -> int:
    """
    C{--workers}: a count, or C{auto} for the CPUs this process may use.
    """
    if text == "auto":
        return len(os.sched_getaffinity(0))
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError("--workers must be a whole number or auto") from None
    if not 1 <= value <= 256:
        raise usage.UsageError("--workers must be 1-256 or auto")
    return value


def log_level(name: str, text: str) -> Any:
    if text not in LEVELS:
        raise usage.UsageError(
            f"--log-level must be one of {', '.join(sorted(LEVELS))}, not {text!r}"
        )
    return LEVELS[text]


def peer_range(name: str, text: str) -> list[Any]:
    try:
        return parse_range(text)
    except ValueError as e:
        raise usage.UsageError(f"--{name}: {e}") from None


def nat64_prefix(name: str, text: str) -> ipaddress.IPv6Network:
    try:
        prefix = ipaddress.IPv6Network(text.strip())
    except ValueError:
        raise usage.UsageError(f"--nat64-prefix must be an IPv6 prefix, not {text!r}") from None
    if prefix.prefixlen not in (32, 40, 48, 56, 64, 96):
        raise usage.UsageError("--nat64-prefix length must be 32, 40, 48, 56, 64 or 96")
    return prefix


def host_and_port(name: str, text: str) -> tuple[str, int]:
    host, sep, number = text.rpartition(":")
    if not sep:
        raise usage.UsageError(f"--{name} must be HOST:PORT, not {text!r}")
    return address(name, host), port(name, number)


def user(name: str, text: str) -> tuple[str, str]:
    username, sep, password = text.partition(":")
    if not sep or not username or not password:
        raise usage.UsageError(f"--user must be NAME:PASSWORD, not {text!r}")
    return username, password


def external_ip(name: str, text: str) -> tuple[str, str | None]:
    public, _, private = text.partition("/")
    return address(name, public), address(name, private) if private else None


def one_of(*choices: str) -> Callable[[str, str], str]:
    def coerce(name: str, text: str) -> str:
        if text not in choices:
            raise usage.UsageError(f"--{name} must be one of {', '.join(choices)}, not {text!r}")
        return text

    return coerce


def interface_names(name: str, text: str) -> list[str]:
    """
    Network interface names, separated by commas.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(len(n) > 15 or "/" in n or " " in n for n in names):
        raise usage.UsageError(
            f"--{name} takes interface names separated by commas, such as eth0,eth1"
        )
    return names


def not_empty(name: str, text: str) -> str:
    if not text:
        raise usage.UsageError(f"--{name} must not be empty")
    return text


# -- the table ----------------------------------------------------------------------

_A, _R, _N = Reload.APPLIED, Reload.RESTART, Reload.NOT_A_SETTING
_LISTEN, _TLS, _RELAYS, _AUTH = "Listening", "TLS and DTLS", "Relays", "Authentication"
_PEERS, _QUOTAS, _CONNS = "Peers", "Quotas and limits", "Connections before they allocate"

OPTIONS: tuple[OptionSpec, ...] = (
    # Listening
    OptionSpec(
        "port",
        _LISTEN,
        _R,
        "UDP and TCP port for STUN and TURN.",
        metavar="N",
        default="3478",
        short="p",
        coerce=port,
        coturn="listening-port",
        example="3479",
    ),
    OptionSpec(
        "tls-port",
        _LISTEN,
        _R,
        "TLS and DTLS port (443 works too).",
        metavar="N",
        default="5349",
        coerce=port,
        coturn="tls-listening-port",
        example="5350",
    ),
    OptionSpec(
        "listen",
        _LISTEN,
        _R,
        "Address to listen on (repeatable; default all IPv4 and IPv6).",
        metavar="ADDR",
        short="L",
        coerce=address,
        repeatable=True,
        coturn="listening-ip",
        example="127.0.0.1",
    ),
    OptionSpec("no-udp", _LISTEN, _R, "Do not serve TURN over UDP.", coturn="no-udp"),
    OptionSpec("no-tcp", _LISTEN, _R, "Do not serve TURN over TCP.", coturn="no-tcp"),
    OptionSpec("no-tls", _LISTEN, _R, "Do not serve TURN over TLS.", coturn="no-tls"),
    OptionSpec("no-dtls", _LISTEN, _R, "Do not serve TURN over DTLS.", coturn="no-dtls"),
    # TLS and DTLS: a reload reads the files again (certificate renewal).
    OptionSpec(
        "cert",
        _TLS,
        _A,
        "PEM certificate (and chain) for TLS and DTLS.",
        metavar="FILE",
        coturn="cert",
    ),
    OptionSpec(
        "key",
        _TLS,
        _A,
        "PEM private key [default: the --cert file].",
        metavar="FILE",
        coturn="pkey",
    ),
    OptionSpec(
        "ca-file",
        _TLS,
        _A,
        "PEM file of further chain certificates to send.",
        metavar="FILE",
        coturn="CA-file",
    ),
    # Relays
    OptionSpec(
        "relay-ip",
        _RELAYS,
        _R,
        "Address relays are opened on (repeatable; default the listening ones).",
        metavar="ADDR",
        coerce=address,
        repeatable=True,
        coturn="relay-ip",
        example="127.0.0.1",
    ),
    OptionSpec(
        "external-ip",
        _RELAYS,
        _R,
        "PUBLIC[/PRIVATE]: advertise PUBLIC for the relay address PRIVATE behind a "
        "1:1 NAT (repeatable, one per relay address).",
        metavar="PUB[/PRIV]",
        coerce=external_ip,
        repeatable=True,
        coturn="external-ip",
        example="203.0.113.5/127.0.0.1",
    ),
    OptionSpec(
        "min-port",
        _RELAYS,
        _R,
        "Lowest relay port.",
        metavar="N",
        default="49152",
        coerce=port,
        coturn="min-port",
        example="50000",
    ),
    OptionSpec(
        "max-port",
        _RELAYS,
        _R,
        "Highest relay port.",
        metavar="N",
        default="65535",
        coerce=port,
        coturn="max-port",
        example="60000",
    ),
    OptionSpec(
        "max-allocate-lifetime",
        _RELAYS,
        _A,
        "Longest allocation lifetime, seconds.",
        metavar="SECONDS",
        default="3600",
        coerce=seconds(),
        coturn="max-allocate-lifetime",
        example="1800",
    ),
    OptionSpec("no-udp-relay", _RELAYS, _A, "Refuse UDP relays (403).", coturn="no-udp-relay"),
    OptionSpec(
        "no-tcp-relay", _RELAYS, _A, "Refuse TCP relays, RFC 6062 (442).", coturn="no-tcp-relay"
    ),
    OptionSpec(
        "tcp-connect-timeout",
        _RELAYS,
        _A,
        "Seconds a TCP Connect may take (at least 30).",
        metavar="SECONDS",
        default="30",
        coerce=seconds(30, " (RFC 6062)"),
        example="45",
    ),
    OptionSpec(
        "tcp-buffer",
        _RELAYS,
        _R,
        "Bytes a TCP peer may send before the client binds.",
        metavar="BYTES",
        default="65536",
        coerce=count(1),
        example="1024",
    ),
    # Authentication
    OptionSpec(
        "realm",
        _AUTH,
        _R,
        "Realm for long-term credentials.",
        metavar="REALM",
        default="txturn",
        short="r",
        coerce=not_empty,
        coturn="realm",
        example="example.org",
    ),
    OptionSpec(
        "user",
        _AUTH,
        _A,
        "A user as NAME:PASSWORD (repeatable).",
        metavar="NAME:PASSWORD",
        short="u",
        coerce=user,
        repeatable=True,
        coturn="user",
        example="bob:builder",
        secret=True,
    ),
    OptionSpec(
        "user-db",
        _AUTH,
        _A,
        "File of name:password or name:0x<md5 key> lines, or an SQLite database of "
        "users (sqlite:///path; kept by txturn-admin, read without a restart); a "
        "reload reads a file again, and a new database takes a restart.",
        metavar="FILE|sqlite:///PATH",
        short="b",
        coturn="userdb",
    ),
    OptionSpec(
        "user-cache-ttl",
        _AUTH,
        _R,
        "Seconds the keys of a user from an SQLite or Redis database are kept.",
        metavar="SECONDS",
        default="10",
        coerce=seconds(),
        example="20",
    ),
    OptionSpec(
        "static-auth-secret",
        _AUTH,
        _A,
        "Secret for TURN REST API ephemeral credentials (expiry:user); repeatable, so "
        "a secret can be rotated with overlap.  The environment variable "
        "TXTURN_STATIC_AUTH_SECRET works too, and keeps it out of ps.",
        metavar="SECRET",
        coerce=not_empty,
        repeatable=True,
        coturn="static-auth-secret",
        example="rotated",
        secret=True,
    ),
    OptionSpec(
        "rest-api-hmac",
        _AUTH,
        _A,
        "HMAC of TURN REST API passwords: sha1 (coturn's), sha256, sha384 or sha512 "
        "(as Kamailio's auth_ephemeral sha_algorithm); the credentials' issuer must "
        "use the same.",
        metavar="ALGORITHM",
        default="sha1",
        coerce=one_of(*REST_HMACS),
        example="sha256",
    ),
    OptionSpec(
        "static-auth-secret-file",
        _AUTH,
        _A,
        "File of TURN REST API secrets, one per line (kept out of ps).",
        metavar="FILE",
    ),
    OptionSpec(
        "credential-file",
        _AUTH,
        _R,
        "With no users: keep the generated user in FILE (mode 0600) across restarts.",
        metavar="FILE",
    ),
    OptionSpec(
        "nonce-key-file",
        _AUTH,
        _A,
        "File of the nonce keys servers without --redis share, one per line (at least "
        "16 characters): the first signs, every one is taken, so a client keeps its "
        "nonce after a redirect. Rotate by adding the new key on every server, then "
        "moving it first; read again on SIGHUP.",
        metavar="FILE",
    ),
    OptionSpec(
        "stale-nonce",
        _AUTH,
        _R,
        "Seconds a nonce stays valid.",
        metavar="SECONDS",
        default="600",
        coerce=seconds(),
        coturn="stale-nonce",
        example="300",
    ),
    # Peers
    OptionSpec(
        "allowed-peer-ip",
        _PEERS,
        _A,
        "CIDR or A-B range relays may reach despite the default refusal of private, "
        "loopback, link-local... ranges (repeatable).",
        metavar="RANGE",
        coerce=peer_range,
        repeatable=True,
        coturn="allowed-peer-ip",
        example="10.0.0.0/8",
    ),
    OptionSpec(
        "proxy-protocol-from",
        _LISTEN,
        _R,
        "CIDR or A-B range of load balancers whose TCP and TLS connections start with "
        "a PROXY protocol header, v1 or v2 (before TLS), and whose UDP datagrams each "
        "start with a v2 header; the client it names is who it is from (repeatable).  A "
        "header from anyone else is refused, and so is their traffic without one.",
        metavar="RANGE",
        coerce=peer_range,
        repeatable=True,
        example="10.0.0.0/8",
    ),
    OptionSpec(
        "denied-peer-ip",
        _PEERS,
        _A,
        "CIDR or A-B range relays never reach; wins over everything (repeatable).",
        metavar="RANGE",
        coerce=peer_range,
        repeatable=True,
        coturn="denied-peer-ip",
        example="198.51.100.0/24",
    ),
    OptionSpec(
        "nat64-prefix",
        _PEERS,
        _A,
        "Your network's NAT64 prefix (/32-/96): the IPv4 peer in it is what the peer "
        "policy judges; 64:ff9b::/96 and 64:ff9b:1::/48 always are (repeatable).",
        metavar="PREFIX",
        coerce=nat64_prefix,
        repeatable=True,
        example="2001:db8::/96",
    ),
    OptionSpec(
        "allow-loopback-peers",
        _PEERS,
        _A,
        "Let relays reach loopback peers (testing).",
        coturn="allow-loopback-peers",
    ),
    # Quotas and limits
    OptionSpec(
        "user-quota",
        _QUOTAS,
        _A,
        "Concurrent allocations (and EVEN-PORT reservations) per user, 0 for no limit "
        "(486); auto: half of what the server can hold.",
        metavar="N|auto",
        default="auto",
        coerce=count(0, auto=True),
        coturn="user-quota",
        example="10",
    ),
    OptionSpec(
        "total-quota",
        _QUOTAS,
        _A,
        "Allocations in all; 0 for what the descriptors allow (508).",
        metavar="N",
        default="0",
        coerce=count(0),
        coturn="total-quota",
        example="100",
    ),
    OptionSpec(
        "max-permissions",
        _QUOTAS,
        _A,
        "Permissions per allocation, 0 for no limit (508).",
        metavar="N",
        default="128",
        coerce=count(0),
        example="64",
    ),
    OptionSpec(
        "max-channels",
        _QUOTAS,
        _A,
        "Channels per allocation, 0 for no limit (508).",
        metavar="N",
        default="128",
        coerce=count(0),
        example="64",
    ),
    OptionSpec(
        "max-pending-connections",
        _QUOTAS,
        _A,
        "Unbound RFC 6062 connections and Connects per allocation, 0 for no limit.",
        metavar="N",
        default="32",
        coerce=count(0),
        example="16",
    ),
    OptionSpec(
        "max-bps",
        _QUOTAS,
        _A,
        "Relayed bytes/s per allocation, both ways; 0 for none.",
        metavar="BYTES",
        default="0",
        coerce=count(0),
        coturn="max-bps",
        example="100000",
    ),
    OptionSpec(
        "max-tcp-buffer",
        _QUOTAS,
        _R,
        "Bytes held for a slow TCP/TLS client before dropping.",
        metavar="BYTES",
        default="65536",
        coerce=count(1),
        example="1024",
    ),
    OptionSpec(
        "challenge-rate",
        _QUOTAS,
        _R,
        "401, 438 and unsigned 300 answers per second to one address (burst: 10 s worth).",
        metavar="N",
        default="100",
        coerce=count(1),
        example="50",
    ),
    # Connections before they allocate: what a connection is admitted under.
    OptionSpec(
        "max-connections",
        _CONNS,
        _R,
        "TCP/TLS connections in all; 0 for a quarter of the descriptor limit.",
        metavar="N",
        default="0",
        coerce=count(0),
        example="100",
    ),
    OptionSpec(
        "max-connections-per-ip",
        _CONNS,
        _R,
        "TCP/TLS connections from one address holding no allocation; 0 for no limit.",
        metavar="N",
        default="256",
        coerce=count(0),
        example="10",
    ),
    OptionSpec(
        "handshake-timeout",
        _CONNS,
        _R,
        "Seconds a TLS or DTLS handshake may take.",
        metavar="SECONDS",
        default="10",
        coerce=seconds(),
        example="5",
    ),
    OptionSpec(
        "idle-timeout",
        _CONNS,
        _R,
        "Seconds a connection or DTLS session may hold no allocation.",
        metavar="SECONDS",
        default="60",
        coerce=seconds(),
        example="30",
    ),
    OptionSpec(
        "frame-timeout",
        _CONNS,
        _R,
        "Seconds a TCP/TLS client may take to finish a frame.",
        metavar="SECONDS",
        default="10",
        coerce=seconds(),
        example="5",
    ),
    OptionSpec(
        "max-dtls-sessions",
        _CONNS,
        _R,
        "DTLS sessions in all.",
        metavar="N",
        default="2000",
        coerce=count(1),
        example="100",
    ),
    OptionSpec(
        "max-dtls-sessions-per-ip",
        _CONNS,
        _R,
        "DTLS sessions from one address.",
        metavar="N",
        default="100",
        coerce=count(1),
        example="10",
    ),
    # Identity
    OptionSpec(
        "software",
        "Identity",
        _A,
        "SOFTWARE attribute sent.",
        metavar="NAME",
        default=f"txturn {__version__}",
        example="relay",
    ),
    OptionSpec(
        "no-software", "Identity", _A, "Send no SOFTWARE attribute.", coturn="no-software-attribute"
    ),
    OptionSpec(
        "server-name",
        "Identity",
        _A,
        "This fleet's host name, sent as ALTERNATE-DOMAIN over TLS.",
        metavar="NAME",
        coturn="server-name",
        example="turn.example.org",
    ),
    # Redirection
    OptionSpec(
        "alternate-server",
        "Redirection",
        _A,
        "HOST:PORT (IPv6 as [ADDR]:PORT) another server of the fleet: Allocates are "
        "redirected to these in turn (300 Try Alternate), always or past "
        "--alternate-server-load, and while draining (repeatable).",
        metavar="HOST:PORT",
        coerce=host_and_port,
        repeatable=True,
        coturn="alternate-server",
        example="192.0.2.7:3478",
    ),
    OptionSpec(
        "alternate-server-load",
        "Redirection",
        _A,
        "Redirect to --alternate-server only from this many allocations; 0: always.",
        metavar="N",
        default="0",
        coerce=count(0),
        example="100",
    ),
    # Fleet
    OptionSpec(
        "redis",
        "Fleet",
        _R,
        "redis://[[user]:password@]host[:port][/db] (rediss:// for TLS) a fleet "
        "shares: users, per-user quotas across servers, revocations (txturn-admin) "
        "[default: $TXTURN_REDIS_URL].",
        metavar="URL",
        secret=True,
    ),
    OptionSpec(
        "redis-ttl",
        "Fleet",
        _R,
        "Seconds a server that stopped answering still counts in --redis quotas.",
        metavar="SECONDS",
        default="30",
        coerce=seconds(),
        example="60",
    ),
    OptionSpec(
        "usage-stream",
        "Fleet",
        _R,
        "Also add each usage record to this Redis stream (with --redis).",
        metavar="KEY",
    ),
    # Processes
    OptionSpec(
        "workers",
        "Processes",
        _R,
        "Worker processes relaying, one per core: N, or auto for every usable CPU.",
        metavar="N|auto",
        default="1",
        coerce=workers,
        coturn="relay-threads",
        example="2",
    ),
    OptionSpec(
        "no-fast-path",
        "Processes",
        _R,
        "Relay UDP in Python only, not through the compiled fast path (used when built).",
    ),
    OptionSpec(
        "xdp",
        "Processes",
        _R,
        "Relay the ChannelData of established UDP channels in the kernel, by an XDP "
        "program on these interfaces (needs CAP_BPF and CAP_NET_ADMIN, or root; without "
        "them, one line and the compiled fast path).",
        metavar="IFACE[,IFACE]",
        coerce=interface_names,
        example="eth0",
    ),
    # Draining: read when SIGQUIT comes, so a reload before it counts.
    OptionSpec(
        "drain-timeout",
        "Draining",
        _A,
        "On SIGQUIT, seconds to wait for allocations to end before stopping.",
        metavar="SECONDS",
        default="3600",
        coerce=seconds(),
        example="60",
    ),
    # Metrics and usage
    OptionSpec(
        "prometheus",
        "Metrics and usage",
        _R,
        "Serve live metrics at http://ADDRESS:PORT/metrics.",
        coturn="prometheus",
    ),
    OptionSpec(
        "prometheus-port",
        "Metrics and usage",
        _R,
        "Port of the --prometheus metrics endpoint.",
        metavar="N",
        default="9641",
        coerce=port,
        coturn="prometheus-port",
        example="9642",
    ),
    OptionSpec(
        "prometheus-address",
        "Metrics and usage",
        _R,
        "Address of the --prometheus endpoint; relays can never reach it.",
        metavar="ADDR",
        default="127.0.0.1",
        coerce=address,
        coturn="prometheus-address",
        example="127.0.0.2",
    ),
    # A reload reopens the file (logrotate), at its new path if it changed.
    OptionSpec(
        "usage-file",
        "Metrics and usage",
        _A,
        "Append a JSON usage record per ended allocation to FILE.",
        metavar="FILE",
    ),
    # The sessions API
    OptionSpec(
        "admin-port",
        "Sessions API",
        _R,
        "Serve the sessions API (list, show and end allocations, start a drain) at "
        "http://ADDRESS:PORT/api/v1/; needs --admin-token-file or TXTURN_ADMIN_TOKEN.",
        metavar="N",
        coerce=port,
        example="9642",
    ),
    OptionSpec(
        "admin-address",
        "Sessions API",
        _R,
        "Address of the sessions API; relays can never reach it.",
        metavar="ADDR",
        default="127.0.0.1",
        coerce=address,
        example="127.0.0.2",
    ),
    OptionSpec(
        "admin-token-file",
        "Sessions API",
        _R,
        "File whose first line is the sessions API's bearer token (at least 16 "
        "characters; TXTURN_ADMIN_TOKEN works too; never on the command line).",
        metavar="FILE",
    ),
    # Configuration and logging: the file is read again at every reload.
    OptionSpec(
        "config",
        "Configuration and logging",
        _A,
        "coturn-style configuration file (turnserver.conf syntax), read again on SIGHUP.",
        metavar="FILE",
        short="c",
    ),
    OptionSpec(
        "log-level",
        "Configuration and logging",
        _A,
        "Least severe txturn events logged: debug, info, warn, error.",
        metavar="LEVEL",
        default="info",
        coerce=log_level,
        example="debug",
    ),
    OptionSpec(
        "verbose",
        "Configuration and logging",
        _A,
        "Log at info level (the default; coturn's verbose).",
        short="v",
        coturn="verbose",
    ),
    OptionSpec(
        "Verbose",
        "Configuration and logging",
        _A,
        "Log at debug level (coturn's Verbose).",
        short="V",
        coturn="Verbose",
    ),
    OptionSpec("help", "", _N, "Show this help and exit."),
    OptionSpec("version", "", _N, "Show txturn's version and exit."),
)

BY_NAME: dict[str, OptionSpec] = {spec.name: spec for spec in OPTIONS}

#: coturn's name -> ours, for coturn's options that txturn has.
COTURN_NAMES: dict[str, str] = {
    spec.coturn: spec.name for spec in OPTIONS if spec.coturn is not None
}


def in_group(title: str) -> list[OptionSpec]:
    """
    The options listed under C{title}, in table order.
    """
    return [spec for spec in OPTIONS if spec.group == title]
