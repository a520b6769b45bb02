"""
Tests for L{txturn.app.config_file} and the C{-c}/C{--config} option of
C{twistd turn}.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txturn.app.config_file import ConfigFileError, Entry, read_config
from txturn.auth.user_db import COTURN as COTURN_TABLE
from txturn.tap import SECRET_VARIABLE, Options

#: A coturn file as an operator has it, with what txturn implements,
#: what it accepts, what it does not implement and a typo.
COTURN = """\
# TURN server name and realm
realm=example.org
listening-port=3479
tls-listening-port 5350
listening-ip=127.0.0.1
relay-ip=127.0.0.1
min-port=50000
max-port=50100
lt-cred-mech
fingerprint
stale-nonce
user=alice:secret
use-auth-secret
static-auth-secret="first secret"
static-auth-secret=second
no-tls
no-dtls
allow-loopback-peers
user-quota=12
total-quota=1000
max-bps=64000
stale-nonce=900
max-allocate-lifetime=1800
no-software-attribute
denied-peer-ip=198.51.100.0-198.51.100.255
cli-password=qwerty
sock-buf-size=4
frobnicate
pidfile="/var/run/turnserver.pid"
"""


class ReadConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = str(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_syntax(self) -> None:
        """
        key=value, key value, a bare key, comments, blank lines, quotes,
        leading dashes; coturn's names become ours.
        """
        path = self.write('# c\n\nrealm=r\nmin-port  50000\nno-udp\n--max-port=6\npkey "k"\n')
        entries, warnings = read_config(path)
        self.assertEqual(
            entries,
            [
                Entry("realm", "r", f"{path}:3"),
                Entry("min-port", "50000", f"{path}:4"),
                Entry("no-udp", None, f"{path}:5"),
                Entry("max-port", "6", f"{path}:6"),
                Entry("key", "k", f"{path}:7"),
            ],
        )
        self.assertEqual(warnings, [])

    def test_warnings(self) -> None:
        """
        A coturn key txturn does not implement earns a FILE:LINE warning;
        one txturn always honours (lt-cred-mech) earns nothing.
        """
        path = self.write("lt-cred-mech\ncli-password=x\nrealm=r;\n")
        entries, warnings = read_config(path)
        self.assertEqual([e.key for e in entries], ["realm"])
        self.assertEqual(
            warnings,
            [
                f"{path}:2: cli-password is a coturn option txturn does not implement",
                f"{path}:3: the line ends with a semicolon, which is kept",
            ],
        )

    def test_unreadable(self) -> None:
        missing = os.path.join(self.mktemp(), "nope.conf")
        with self.assertRaises(ConfigFileError) as caught:
            read_config(missing)
        self.assertEqual(
            str(caught.exception), f"{missing}: cannot read: No such file or directory"
        )

    def test_forbidden(self) -> None:
        path = self.write("realm=r\nconfig=/etc/other.conf\n")
        with self.assertRaises(ConfigFileError) as caught:
            read_config(path)
        self.assertEqual(
            str(caught.exception), f"{path}:2: config cannot be set in a configuration file"
        )


class ConfigOptionTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = str(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_coturn_file(self) -> None:
        """
        A coturn file sets what txturn implements, under coturn's names;
        the rest is warned about with its line.
        """
        path = self.write(COTURN)
        options = self.parse("-c", path)
        self.assertEqual(options["realm"], "example.org")
        self.assertEqual((options["port"], options["tls-port"]), (3479, 5350))
        self.assertEqual((options["listen"], options["relay-ip"]), (["127.0.0.1"], ["127.0.0.1"]))
        self.assertEqual((options["min-port"], options["max-port"]), (50000, 50100))
        self.assertEqual(options["user"], [("alice", "secret")])
        self.assertEqual(options["static-auth-secret"], ["first secret", "second"])
        self.assertEqual(options["transports"], {"udp", "tcp"})
        self.assertTrue(options["allow-loopback-peers"])
        self.assertEqual((options["user-quota"], options["total-quota"]), (12, 1000))
        self.assertEqual((options["max-bps"], options["stale-nonce"]), (64000, 900.0))
        self.assertEqual(options["max-allocate-lifetime"], 1800.0)
        self.assertIsNone(options["software"])
        self.assertEqual(len(options["denied-peer-ip"]), 1)
        self.assertEqual(
            options["config-warnings"],
            [
                f"{path}:26: cli-password is a coturn option txturn does not implement",
                f"{path}:27: sock-buf-size is a coturn option txturn does not implement",
                f"{path}:28: unknown option frobnicate",
            ],
        )
        self.assertEqual(
            options["config-twistd"], {"pidfile": ("/var/run/turnserver.pid", f"{path}:29")}
        )

    def test_command_line_wins(self) -> None:
        """
        The command line overrides the file's single values wherever it
        stands, and adds to its repeatable options.
        """
        path = self.write("realm=file\nmin-port=50000\nuser=a:b\n")
        options = self.parse("--realm", "cli", "--config", path, "--min-port=51000", "-u", "c:d")
        self.assertEqual((options["realm"], options["min-port"]), ("cli", 51000))
        self.assertEqual(options["user"], [("a", "b"), ("c", "d")])

    def test_bad_value(self) -> None:
        """
        A bad value stops parsing with FILE:LINE and the reason.
        """
        for text, reason in [
            ("min-port=abc\n", "--min-port must be a number, not 'abc'"),
            ("user=nopassword\n", "--user must be NAME:PASSWORD, not 'nopassword'"),
            ("relay-ip=not-an-address\n", "--relay-ip must be an IP address"),
            ("stale-nonce=-1\n", "--stale-nonce must be positive"),
        ]:
            path = self.write("realm=r\n" + text)
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("-c", path)
            self.assertTrue(
                str(caught.exception).startswith(f"{path}:2: {reason}"), caught.exception
            )

    def test_checked_together(self) -> None:
        """
        Options that are checked against each other (a port range below
        the default) are checked once the file is read, not line by line.
        """
        options = self.parse("-c", self.write("min-port=40000\nmax-port=48000\n"))
        self.assertEqual((options["min-port"], options["max-port"]), (40000, 48000))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("-c", self.write("min-port=40000\nmax-port=30000\n"))
        self.assertEqual(
            str(caught.exception), "--min-port must be 1-65535 and not above --max-port"
        )

    def test_coturn_spellings(self) -> None:
        """
        coturn's command-line spellings are aliases of ours.
        """
        options = self.parse(
            "--listening-port=4000",
            "--listening-ip=127.0.0.1",
            "--no-software-attribute",
            "--lt-cred-mech",
            "--use-auth-secret",
            "--static-auth-secret=s",
            "-V",
        )
        self.assertEqual((options["port"], options["listen"]), (4000, ["127.0.0.1"]))
        self.assertIsNone(options["software"])
        self.assertEqual(options["log-level"], LogLevel.debug)

    def test_secrets_out_of_ps(self) -> None:
        """
        REST secrets can come from a file (several, for rotation) and from
        the environment.
        """
        path = self.write("# rotated monthly\nnew-secret\n\nold-secret\n")
        self.patch(os, "environ", {SECRET_VARIABLE: "from-env"})
        options = self.parse("--static-auth-secret-file", path)
        self.assertEqual(options["static-auth-secret"], ["new-secret", "old-secret", "from-env"])
        empty = self.write("# nothing\n")
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--static-auth-secret-file", empty)
        self.assertEqual(
            str(caught.exception), f"--static-auth-secret-file {empty} holds no secret"
        )

    def test_sqlite_userdb(self) -> None:
        """
        coturn's SQLite user database (its C{turnusers_lt} table) is read
        as it is; a damaged one is refused with a line that says so.
        """
        path = str(self.mktemp())
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE turnusers_lt (realm, name, hmackey)")
            db.commit()
        options = self.parse("--userdb", path)
        self.assertEqual(options["user-db-sqlite"], path)
        self.assertEqual(options["user-db-tables"], (COTURN_TABLE,))
        with open(path, "wb") as f:
            f.write(b"SQLite format 3\x00" + b"\x00" * 100)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--userdb", path)
        self.assertIn("not a usable SQLite database", str(caught.exception))

    def test_twistd_options(self) -> None:
        """
        Under twistd, pidfile and log-file from the file become twistd's
        unless its command line set them, and an error is one line on
        stderr and exit status 2.
        """
        from twisted.scripts._twistd_unix import ServerOptions

        path = self.write("pidfile=/tmp/t.pid\nlog-file=/tmp/t.log\nrealm=r\n")
        config = ServerOptions()
        config.parseOptions(["--pidfile", "mine.pid", "turn", "-c", path])
        self.assertEqual(config["pidfile"], os.path.abspath("mine.pid"))
        self.assertEqual(config["logfile"], "/tmp/t.log")
        bad = self.write("min-port=x\n")
        written: list[str] = []
        self.patch(__import__("sys").stderr, "write", written.append)
        with self.assertRaises(SystemExit) as caught:
            ServerOptions().parseOptions(["turn", "-c", bad])
        self.assertEqual(caught.exception.code, 2)
        self.assertEqual(written, [f"twistd turn: {bad}:1: --min-port must be a number, not 'x'\n"])
