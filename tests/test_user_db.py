"""
Users in SQLite (L{txturn.auth.user_db}): what C{txturn-admin} stores (keys,
never passwords), lookups through a real connection pool, coturn's
table, clear errors for a database that cannot be used, and a real
C{twistd turn} that sees users added and deleted with no restart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.test_interop import require, run_aioice, spawn, twistd_turn, udp_requester
from tests.test_service import free_udp_port
from txturn.auth.credentials import long_term_key, userhash
from txturn.auth.policy import mint_credential
from txturn.auth.user_db import (
    COTURN,
    OURS,
    SqliteCredentials,
    SqliteUsers,
    UserDbError,
    check_database,
    open_pool,
)
from txturn.wire.stun import Attr, Class, Method, PasswordAlgorithm

reactor: Any = _reactor
REALM = "example.org"


def admin(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txturn.tools.admin", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "TXTURN_PASSWORD": ""},
    )


class StoreTests(TestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    def test_keys_only(self) -> None:
        """
        C{add} stores the MD5 and SHA-256 keys and the USERHASH, nothing
        from which the password is read back; the file is the owner's.
        """
        users = SqliteUsers(self.path)
        users.add(REALM, "alice", "correct horse")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        with sqlite3.connect(self.path) as db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(txturn_users)")]
            row = db.execute("SELECT * FROM txturn_users").fetchone()
        self.assertEqual(columns, ["realm", "name", "md5", "sha256", "userhash"])
        self.assertEqual(row[2], long_term_key("alice", REALM, "correct horse"))
        self.assertNotIn(b"correct horse", open(self.path, "rb").read())
        self.assertEqual(users.names(), [(REALM, "alice")])
        self.assertTrue(users.delete(REALM, "alice"))
        self.assertFalse(users.delete(REALM, "alice"))
        self.assertEqual(users.names(), [])

    def test_errors(self) -> None:
        """
        A missing file, a file that is not SQLite and a database without
        a users table each get one line saying so.
        """
        with self.assertRaisesRegex(UserDbError, "no such database"):
            check_database(self.path)
        with open(self.path, "wb") as f:
            f.write(b"not a database at all" * 100)
        with self.assertRaisesRegex(UserDbError, "not a usable SQLite database"):
            check_database(self.path)
        os.remove(self.path)
        sqlite3.connect(self.path).execute("CREATE TABLE other (x)").connection.commit()
        with self.assertRaisesRegex(UserDbError, "without a txturn_users"):
            check_database(self.path)

    def test_admin_command(self) -> None:
        """
        C{txturn-admin} adds (password on stdin), lists and deletes, and
        says what is wrong in one line.
        """
        url = f"sqlite://{self.path}"
        self.assertEqual(admin("--user-db", url, "add", "bob", stdin="pw\n").returncode, 0)
        listed = admin("--user-db", url, "--realm", "txturn", "list")
        self.assertEqual(listed.stdout, "bob\ttxturn\n")
        self.assertEqual(admin("--user-db", url, "delete", "bob").returncode, 0)
        failed = admin("--user-db", url, "delete", "bob")
        self.assertEqual(
            (failed.returncode, failed.stderr), (1, "txturn-admin: no user bob in realm txturn\n")
        )
        missing = admin("--user-db", f"sqlite://{self.path}.none", "list")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no such database", missing.stderr)
        fleet = admin("--user-db", url, "allocations", "bob")
        self.assertIn("needs --redis", fleet.stderr)
        # Secrets on the command line work, with a warning each.
        added = admin("--user-db", url, "add", "carol", "--password", "pw")
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertIn(
            "--password on the command line is visible to every local user in ps; "
            "use $TXTURN_PASSWORD or standard input",
            added.stderr,
        )
        minted = admin("mint", "--secret", "s3cret", "--user", "dave")
        self.assertIn("--secret on the command line is visible", minted.stderr)
        self.assertNotIn("visible", admin("--user-db", url, "list").stderr)


class LookupTests(TestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    def pool(self) -> Any:
        pool = open_pool(self.path, reactor)
        pool.start()
        self.addCleanup(pool.close)
        return pool

    @defer.inlineCallbacks
    def test_keys(self) -> Any:
        SqliteUsers(self.path).add(REALM, "alice", "secret")
        self.assertEqual(check_database(self.path), (OURS,))
        source = SqliteCredentials(self.pool(), REALM)
        for algorithm in (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256):
            keys = yield source.keys_for("alice", REALM, algorithm, 0)
            self.assertEqual(keys, (long_term_key("alice", REALM, "secret", algorithm),))
        self.assertEqual((yield source.keys_for("nobody", REALM, 1, 0)), ())
        self.assertEqual(source.keys_for("alice", "other realm", 1, 0), ())
        name = yield source.username_for_hash(userhash("alice", REALM), REALM)
        self.assertEqual(name, "alice")

    @defer.inlineCallbacks
    def test_coturn_database(self) -> Any:
        """
        coturn's C{turnusers_lt} (hex MD5 keys) is read as it is.
        """
        key = long_term_key("carol", REALM, "pw")
        with sqlite3.connect(self.path) as db:
            db.execute("CREATE TABLE turnusers_lt (realm, name, hmackey)")
            db.execute("INSERT INTO turnusers_lt VALUES (?, ?, ?)", (REALM, "carol", key.hex()))
        self.assertEqual(check_database(self.path), (COTURN,))
        source = SqliteCredentials(self.pool(), REALM)
        self.assertEqual((yield source.keys_for("carol", REALM, 1, 0)), (key,))
        self.assertEqual((yield source.keys_for("carol", REALM, 2, 0)), ())
        self.assertNotEqual(COTURN, OURS)


class ServerTests(TestCase):
    """
    A real C{twistd turn --user-db sqlite:///...}.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.url = f"sqlite://{self.path}"
        self.port = free_udp_port()

    @defer.inlineCallbacks
    def test_users_without_restart(self) -> Any:
        """
        A user added while the server runs relays (aioice) at once; once
        deleted, they are refused within --user-cache-ttl.
        """
        self.assertEqual(admin("--user-db", self.url, "add", "first", stdin="one\n").returncode, 0)
        watcher = spawn(
            twistd_turn(
                self.port,
                "--user-db",
                self.url,
                "--user-cache-ttl",
                "1",
                "--relay-ip",
                "127.0.0.1",
                "--allow-loopback-peers",
            ),
            self,
        )
        yield watcher.wait_for(rb"TURN listening on UDP")
        self.assertNotIn(b"No credentials configured", watcher.output)
        added = yield threads.deferToThread(
            admin, "--user-db", self.url, "add", "alice", stdin="wonderland\n"
        )
        self.assertEqual(added.returncode, 0, added.stderr)
        result = yield run_aioice(self, self.port, "alice", "wonderland", 10)
        self.assertEqual(result["received"], 10)
        yield threads.deferToThread(admin, "--user-db", self.url, "delete", "alice")
        # The server is another process: its cache ages in real time.
        yield deferLater(reactor, 1.5, lambda: None)
        _, request = udp_requester(self, self.port, "alice", "wonderland")
        refused = yield threads.deferToThread(
            request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
        )
        self.assertEqual((refused.cls, refused.get(Attr.ERROR_CODE)[0]), (Class.ERROR, 401))
        self.assertNotIn(b"Traceback", watcher.output)

    @defer.inlineCallbacks
    def test_revocation_without_redis(self) -> Any:
        """
        C{txturn-admin --user-db ... revoke} on a REST credential: the
        server reads it within a second, deletes its allocation and
        refuses it; C{unrevoke} lets it in again.
        """
        self.assertEqual(admin("--user-db", self.url, "add", "first", stdin="one\n").returncode, 0)
        watcher = spawn(
            twistd_turn(self.port, "--user-db", self.url, "--static-auth-secret", "s3cret"),
            self,
        )
        yield watcher.wait_for(rb"TURN listening on UDP")
        username, password = mint_credential("s3cret", "dave", int(time.time()) + 600)
        _, request = udp_requester(self, self.port, username, password)
        allocate: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17)]
        allocated = yield threads.deferToThread(request, Method.ALLOCATE, allocate)
        self.assertEqual(allocated.cls, Class.SUCCESS)
        revoked = yield threads.deferToThread(admin, "--user-db", self.url, "revoke", username)
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        # Read once a second; the deadline is generous for a busy machine.
        yield watcher.wait_for(rb"Revoked credentials: 1 allocations deleted", timeout=10)
        refused = yield threads.deferToThread(request, Method.ALLOCATE, allocate)
        self.assertEqual(refused.get(Attr.ERROR_CODE)[0], 401)
        listed = yield threads.deferToThread(admin, "--user-db", self.url, "revoked")
        self.assertTrue(listed.stdout.startswith(username + "\t"), listed.stdout)
        yield threads.deferToThread(admin, "--user-db", self.url, "unrevoke", username)
        # Read once a second: allowed again within a generous deadline.
        deadline = time.monotonic() + 10
        again = refused
        while again.cls != Class.SUCCESS and time.monotonic() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)
            again = yield threads.deferToThread(request, Method.ALLOCATE, allocate)
        self.assertEqual(again.cls, Class.SUCCESS)

    @defer.inlineCallbacks
    def test_startup_errors(self) -> Any:
        """
        A missing or malformed database stops startup with one clear line.
        """
        for content, expected in (
            (None, rb"no such database \(create it with: txturn-admin"),
            (b"garbage" * 1000, rb"not a usable SQLite database"),
        ):
            if content is not None:
                with open(self.path, "wb") as f:
                    f.write(content)
            watcher = spawn(twistd_turn(self.port, "--user-db", self.url), self)
            yield watcher.ended
            self.assertRegex(watcher.output, b"--user-db: .*" + expected)
            self.assertNotIn(b"Traceback", watcher.output)


class MigrationTests(TestCase):
    """
    A database made by coturn's own C{turnadmin}, kept by C{txturn-admin}
    and served by C{twistd turn}: every user keeps working after every
    subcommand, and coturn can still read the database.
    """

    def setUp(self) -> None:
        self.turnadmin = require("turnadmin")
        self.path = os.path.abspath(self.mktemp())
        self.url = f"sqlite://{self.path}"
        self.port = free_udp_port()

    def tables(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def coturn_lists(self) -> set[str]:
        listed = subprocess.run(
            [self.turnadmin, "-l", "-b", self.path], capture_output=True, text=True
        )
        return {line.split("[")[0] for line in listed.stdout.splitlines() if "[" in line}

    @defer.inlineCallbacks
    def allocates(self, name: str, password: str) -> Any:
        _, request = udp_requester(self, self.port, name, password)
        answer = yield threads.deferToThread(
            request, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]
        )
        return 200 if answer.cls == Class.SUCCESS else answer.get(Attr.ERROR_CODE)[0]

    @defer.inlineCallbacks
    def step(self, *args: str, stdin: str | None = None) -> Any:
        done = yield threads.deferToThread(
            admin, "--user-db", self.url, "--realm", REALM, *args, stdin=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        # Lookups are cached for a second (--user-cache-ttl 1).
        yield deferLater(reactor, 1.2, lambda: None)
        self.assertEqual((yield self.allocates("alice", "secret")), 200, args)
        return done.stdout

    @defer.inlineCallbacks
    def test_turnadmin_database(self) -> Any:
        made = subprocess.run(
            [self.turnadmin, "-a", "-b", self.path, "-u", "alice", "-r", REALM, "-p", "secret"],
            capture_output=True,
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        coturn_tables = self.tables()
        self.assertIn(COTURN, coturn_tables)
        listed = admin("--user-db", self.url, "list")
        self.assertEqual((listed.returncode, listed.stdout), (0, f"alice\t{REALM}\n"))
        self.assertEqual(self.tables(), coturn_tables, "list wrote to the database")

        watcher = spawn(
            twistd_turn(
                self.port, "--user-db", self.url, "--realm", REALM, "--user-cache-ttl", "1"
            ),
            self,
        )
        yield watcher.wait_for(rb"TURN listening on UDP")
        self.assertEqual((yield self.allocates("alice", "secret")), 200)

        # add and delete work in coturn's own table, which coturn reads.
        yield self.step("add", "bob", stdin="builder\n")
        self.assertEqual(self.tables(), coturn_tables)
        self.assertEqual(self.coturn_lists(), {"alice", "bob"})
        self.assertEqual((yield self.allocates("bob", "builder")), 200)
        self.assertEqual((yield self.step("list")), f"alice\t{REALM}\nbob\t{REALM}\n")

        # Revocations add their own table only, which no lookup reads.
        yield self.step("revoke", "bob", "--for", "600")
        yield watcher.wait_for(rb"Revoked credentials")
        self.assertEqual((yield self.allocates("bob", "builder")), 401)
        self.assertIn("bob\t", (yield self.step("revoked")))
        yield self.step("unrevoke", "bob")
        self.assertEqual((yield self.allocates("bob", "builder")), 200)

        # txturn's tables, created only when asked, hide nobody.
        yield self.step("init")
        self.assertIn(OURS, self.tables())
        yield self.step("add", "carol", stdin="c4rol\n")
        self.assertEqual((yield self.allocates("carol", "c4rol")), 200)
        self.assertEqual((yield self.allocates("bob", "builder")), 200)
        self.assertEqual(self.coturn_lists(), {"alice", "bob"})

        yield self.step("delete", "bob")
        self.assertEqual(self.coturn_lists(), {"alice"})
        self.assertEqual((yield self.allocates("bob", "builder")), 401)
        self.assertNotIn(b"Traceback", watcher.output)
