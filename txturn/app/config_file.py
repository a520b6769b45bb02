# -*- test-case-name: tests.test_config_file -*-
"""
coturn's C{turnserver.conf}, read into the command-line arguments of
C{twistd turn}, so that a coturn user's file starts txturn as it is.

The syntax is coturn's: one option per line as C{key=value}, C{key value}
or a bare C{key} (a flag), C{#} starting a comment line, a value in double
quotes losing them.  Each key is one of:

 - ours, under coturn's name or our own (L{ALIASES}, from the option
   table, maps coturn's names);
 - one we know from coturn and accept without effect (L{ACCEPTED}: what
   txturn always does, like C{fingerprint});
 - one we know from coturn and do not implement (L{NOT_IMPLEMENTED}): a
   warning naming the file and line;
 - one nobody knows: a warning too.

A bad value is an error naming the file and line, raised before the
server starts (L{ConfigFileError}).
"""

from __future__ import annotations

from dataclasses import dataclass

from txturn.app.option_table import BY_NAME, COTURN_NAMES, OPTIONS, Reload
from txturn.util.privileged import read_text

#: coturn's keys for twistd's own options: where it logs, whom it runs as.
TWISTD_NAMES: dict[str, str] = {"log-file": "logfile", "proc-user": "uid", "proc-group": "gid"}

#: coturn's name -> ours, for every key coturn and txturn share, from the
#: option table (L{txturn.app.option_table.OptionSpec.coturn}).
ALIASES: dict[str, str] = {**COTURN_NAMES, **TWISTD_NAMES}


def coturn_name(option: str) -> str | None:
    """
    coturn's name for one of our options, if coturn has it.
    """
    spec = BY_NAME.get(option)
    return spec.coturn if spec is not None else None


#: coturn's keys that need nothing from us: what txturn always does.
ACCEPTED: dict[str, str] = {
    "lt-cred-mech": "long-term credentials are always on",
    "fingerprint": "txturn always adds FINGERPRINT",
    "use-auth-secret": "static-auth-secret is enough",
    "no-stdout-log": "twistd logs to --logfile or stdout",
    "simple-log": "twistd keeps one log file",
    "software-attribute": "SOFTWARE is sent unless no-software",
    "dtls": "DTLS is on unless no-dtls",
    "no-multicast-peers": "multicast peers are always refused",
    "check-origin-consistency": "ORIGIN is not used",
    "no-cli": "txturn has no telnet CLI",
    "no-rfc5780": "txturn does not do RFC 5780",
    "rfc5766-channel-numbers": "channels up to 0x7FFF are accepted",
    "no-tlsv1": "TLS 1.2 is the minimum",
    "no-tlsv1_1": "TLS 1.2 is the minimum",
    "keep-address-family": "RFC 6156 behaviour is the default",
    "secure-stun": "Binding needs no credentials, as RFC 8489 allows",
    "daemon": "twistd runs as a daemon without -n",
}

#: coturn's keys that we know and do not implement.
NOT_IMPLEMENTED = frozenset(
    [
        "alt-listening-port",
        "alt-tls-listening-port",
        "tcp-proxy-port",
        "listening-device",
        "relay-device",
        "sock-buf-size",
        "no-auth",
        "db",
        "psql-userdb",
        "sql-userdb",
        "mysql-userdb",
        "mongo-userdb",
        "redis-userdb",
        "redis-statsdb",
        "prometheus-path",
        "prometheus-username-labels",
        "prometheus-tls",
        "prometheus-cert",
        "prometheus-key",
        "no-auth-pings",
        "no-dynamic-ip-list",
        "no-dynamic-realms",
        "oauth",
        "bps-capacity",
        "channel-lifetime",
        "permission-lifetime",
        "stun-only",
        "no-stun",
        "raw-public-keys",
        "pkey-pwd",
        "syslog",
        "syslog-facility",
        "log-min-level",
        "new-log-timestamp",
        "new-log-timestamp-format",
        "aux-server",
        "udp-self-balance",
        "tls-alternate-server",
        "tcp-alternate-server",
        "udp-alternate-server",
        "rest-api-separator",
        "max-allocate-timeout",
        "drain-min-allocations",
        "cipher-list",
        "dh-file",
        "mobility",
        "cli",
        "cli-ip",
        "cli-port",
        "cli-password",
        "cli-max-output-sessions",
        "web-admin",
        "web-admin-ip",
        "web-admin-port",
        "web-admin-listen-on-workers",
        "server-relay",
        "ec-curve-name",
        "dh566",
        "dh1066",
        "tlsv1",
        "secret-key-file",
        "allocation-default-address-family",
        "acme-redirect",
        "log-binding",
        "rfc5780",
        "stun-backward-compatibility",
        "rfc3489-compatibility",
        "response-origin-only-with-rfc5780",
        "respond-http-unsupported",
        "drop-invalid-packets",
        "drop-invalid-packets-log",
        "udp-recvmmsg",
        "udp-recvmmsg-log",
        "udp-sendmmsg-log",
        "udp-gso",
        "include-reason-string",
        "multiplex-peer",
        "multiplex-peer-port",
        "multiplex-peer-max-peers",
        "cpus",
        "unauthorized-ratelimit",
        "unauthorized-ratelimit-rps",
        "stateless-nonce",
        "stateless-nonce-secret",
        "no-tlsv1_2",
    ]
)

#: coturn keys whose value is optional: bare, they keep our default.
OPTIONAL_VALUE = frozenset(["stale-nonce"])

#: Keys the file may not set: they would name another file or are
#: meaningless in one.
FORBIDDEN = frozenset(
    ["config"] + [spec.name for spec in OPTIONS if spec.reload is Reload.NOT_A_SETTING]
)


class ConfigFileError(ValueError):
    """
    A configuration file that cannot be used; the message is one line,
    C{FILE:LINE: reason} (or C{FILE: reason}).
    """


@dataclass(frozen=True)
class Entry:
    """
    One option from the file, under our name, with where it came from.
    """

    key: str
    value: str | None
    origin: str

    def argument(self) -> str:
        """
        The option as a command-line argument.
        """
        if self.value is None:
            return f"--{self.key}"
        return f"--{self.key}={self.value}"


def read_config(path: str) -> tuple[list[Entry], list[str]]:
    """
    The options C{path} sets, in order, and the warnings it deserves
    (each C{FILE:LINE: ...}).

    @raise ConfigFileError: if the file cannot be read or names an
        option it may not set.
    """
    try:
        text = read_text(path)
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a text file") from None
    entries: list[Entry] = []
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        origin = f"{path}:{number}"
        key, value = _split(line)
        if key in FORBIDDEN:
            raise ConfigFileError(f"{origin}: {key} cannot be set in a configuration file")
        if line.endswith(";"):
            warnings.append(f"{origin}: the line ends with a semicolon, which is kept")
        entry = _entry(key, value, origin, warnings)
        if entry is not None:
            entries.append(entry)
    return entries, warnings


def _entry(key: str, value: str | None, origin: str, warnings: list[str]) -> Entry | None:
    """
    The option a line sets under our name, or C{None} for one to skip
    (with a warning where it deserves one).
    """
    if key in ACCEPTED or (key in OPTIONAL_VALUE and value is None):
        return None
    if key == "log-file" and value in ("stdout", "-"):
        return None  # twistd -n logs to standard output anyway
    if key == "log-file" and value == "syslog":
        warnings.append(f"{origin}: log-file=syslog: use twistd --syslog")
        return None
    if key == "relay-threads" and value == "0":
        # coturn: relay in the listener's thread, one process for us.
        return Entry("workers", "1", origin)
    if key in NOT_IMPLEMENTED:
        warnings.append(f"{origin}: {key} is a coturn option txturn does not implement")
        return None
    return Entry(ALIASES.get(key, key), value, origin)


def _split(line: str) -> tuple[str, str | None]:
    """
    C{key=value}, C{key value} or C{key}; a value in double quotes loses
    them, as in coturn.
    """
    key = line
    value: str | None = None
    for i, char in enumerate(line):
        if char in " \t=":
            key = line[:i]
            value = line[i:].lstrip(" \t=")
            break
    key = key.lstrip("-")
    if value is not None:
        value = value.strip()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        if value == "":
            value = None
    return key, value
