# -*- test-case-name: tests.test_user_db -*-
"""
Users in an SQLite database (C{--user-db sqlite:///path}), kept by
C{txturn-admin} and read by the server without a restart.

The database holds RFC 8489 long-term keys, never passwords: for each
(realm, name), the MD5 key, the SHA-256 key and the USERHASH, all derived
by C{txturn-admin add} from the password it is given.  A coturn database
(C{turnusers_lt}, its MD5 C{hmackey} column) is read as well, so moving a
deployment's users over takes no conversion, and C{txturn-admin} keeps
such a database in coturn's own table, so coturn and txturn can share it
during a migration: it never adds txturn's tables to a database unless
told to (C{txturn-admin init}), and a lookup asks every users table the
database has, so an empty new table never hides a populated one.

The server reads through Twisted's L{adbapi.ConnectionPool}, on one
thread with a read-only connection, so a slow disk or a write lock held
by C{txturn-admin} never blocks the reactor; L{CachedCredentials} puts
the lookups behind a cache and a timeout.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import quote

from twisted.application.service import Service
from zope.interface import implementer

from txturn.auth.credentials import ICredentialSource, long_term_key, opaque_string, userhash
from txturn.util.log_level import logger
from txturn.wire.stun import PasswordAlgorithm

if TYPE_CHECKING:
    import sqlite3

SCHEME = "sqlite://"

SCHEMA = """
CREATE TABLE IF NOT EXISTS txturn_users (
    realm TEXT NOT NULL,
    name TEXT NOT NULL,
    md5 BLOB NOT NULL,
    sha256 BLOB NOT NULL,
    userhash BLOB NOT NULL,
    PRIMARY KEY (realm, name)
);
CREATE INDEX IF NOT EXISTS txturn_users_userhash ON txturn_users (userhash);
"""
REVOKED_SCHEMA = """
CREATE TABLE IF NOT EXISTS txturn_revoked (
    name TEXT PRIMARY KEY,
    until REAL NOT NULL
);
"""

#: The two tables a user database may have: ours, and coturn's.
OURS, COTURN = "txturn_users", "turnusers_lt"

_KEYS = (
    (OURS, "SELECT md5, sha256 FROM txturn_users WHERE realm = ? AND name = ?"),
    (COTURN, "SELECT hmackey FROM turnusers_lt WHERE realm = ? AND name = ?"),
)
_BY_HASH = "SELECT name FROM txturn_users WHERE realm = ? AND userhash = ?"


class UserDbError(Exception):
    """
    A user database that cannot be used, said in one line.
    """


def sqlite_path(url: str) -> str | None:
    """
    The file a C{sqlite://} URL names (C{sqlite:///var/lib/turn.db} is
    C{/var/lib/turn.db}), or C{None} for anything else.
    """
    if not url.startswith(SCHEME):
        return None
    return url[len(SCHEME) :]


def check_database(path: str) -> tuple[str, ...]:
    """
    Which users tables the database at C{path} has (ours, coturn's or
    both), or why it cannot be used.

    @raise UserDbError: for a missing file, a file that is not SQLite, or
        a database with neither table.
    """
    if not os.path.exists(path):
        raise UserDbError(
            f"{path}: no such database (create it with: txturn-admin --user-db "
            f"{SCHEME}{path} add NAME)"
        )
    import sqlite3  # only where a database is used: 1 MiB less otherwise

    try:
        with contextlib.closing(_connect(path, read_only=True)) as db:
            found = _tables(db)
    except sqlite3.DatabaseError as e:
        raise UserDbError(f"{path}: not a usable SQLite database ({e})") from None
    if not found:
        raise UserDbError(
            f"{path}: an SQLite database without a {OURS} (or coturn {COTURN}) table "
            f"(add txturn's with: txturn-admin --user-db {SCHEME}{path} init)"
        )
    return found


def _tables(db: sqlite3.Connection) -> tuple[str, ...]:
    """
    The users tables C{db} has, ours first.
    """
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return tuple(t for t in (OURS, COTURN) if t in names)


def _connect(path: str, read_only: bool = False) -> sqlite3.Connection:
    import sqlite3

    if read_only:
        return sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=1.0)
    return sqlite3.connect(path, timeout=5.0)


@implementer(ICredentialSource)
class SqliteCredentials:
    """
    The keys of the users in an SQLite database, as Deferreds.

    Each lookup asks txturn's table, then coturn's, whichever the
    database has at that moment: a database shared with coturn during a
    migration, to which an operator later adds txturn's (empty) tables,
    keeps every user it had.

    @param pool: a pool of read-only connections (L{open_pool}).
    """

    def __init__(self, pool: Any, realm: str) -> None:
        self._pool = pool
        self.realm = realm

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Any:
        if realm != self.realm:
            return ()
        return self._pool.runInteraction(_keys, realm, username, algorithm)

    def username_for_hash(self, hashed: bytes, realm: str) -> Any:
        if realm != self.realm:
            return None
        return self._pool.runInteraction(_by_hash, realm, hashed)


def _keys(cursor: Any, realm: str, username: str, algorithm: int) -> tuple[bytes, ...]:
    """
    The user's key for C{algorithm}, from the first users table that has
    the user (run on the pool's thread).
    """
    import sqlite3

    for table, query in _KEYS:
        try:
            cursor.execute(query, (realm, username))
        except sqlite3.OperationalError:
            continue  # no such table in this database
        row = cursor.fetchone()
        if row is None:
            continue
        if table == COTURN:
            # coturn keeps the hex MD5 key; a SHA-256 one only with its
            # own SHA-256 setting, which its clients then must use.
            key = _hex_key(row[0])
            return (key,) if key is not None and algorithm == PasswordAlgorithm.MD5 else ()
        md5, sha256 = row
        return (bytes(sha256 if algorithm == PasswordAlgorithm.SHA256 else md5),)
    return ()


def _by_hash(cursor: Any, realm: str, hashed: bytes) -> str | None:
    """
    The name whose USERHASH is C{hashed} (only txturn's table keeps them).
    """
    import sqlite3

    try:
        cursor.execute(_BY_HASH, (realm, hashed))
    except sqlite3.OperationalError:
        return None
    row = cursor.fetchone()
    return str(row[0]) if row else None


def _hex_key(value: object) -> bytes | None:
    if not isinstance(value, str) or len(value) != 32:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def open_pool(path: str, reactor: Any = None) -> Any:
    """
    An L{adbapi.ConnectionPool} of one read-only connection on one
    thread: lookups are short, and SQLite serialises them anyway.
    """
    from twisted.enterprise import adbapi

    kwargs: dict[str, Any] = {}
    if reactor is not None:
        kwargs["cp_reactor"] = reactor
    return adbapi.ConnectionPool(  # type: ignore[no-untyped-call]
        "sqlite3",
        f"file:{quote(path)}?mode=ro",
        uri=True,
        timeout=1.0,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_query_only,
        **kwargs,
    )


class PoolService(Service):
    """
    Closes the pool's connection and thread when the server stops.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.pool.close()


class RevocationReader(Service):
    """
    For a server without Redis: reads the revocations C{txturn-admin
    revoke} keeps in the database every second, and gives the server
    those in force (which deletes the allocations they match).
    """

    log = logger()

    def __init__(self, reactor: Any, pool: Any, server: Any) -> None:
        self._reactor = reactor
        self._pool = pool
        self._server = server
        self._poll: Any = None
        self._seen: dict[str, float] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._read()

    def _read(self) -> None:
        self._poll = self._reactor.callLater(1.0, self._read)
        d = self._pool.runQuery("SELECT name, until FROM txturn_revoked")
        # A database without the table (coturn's, say) revokes nothing.
        d.addCallbacks(self._revocations, lambda _: None)

    def _revocations(self, rows: list[tuple[Any, Any]]) -> None:
        now = self._reactor.seconds()
        entries = {str(name): float(until) for name, until in rows if float(until) > now}
        if entries == self._seen:
            return  # nothing new: no walk over the allocations
        self._seen = entries
        deleted = self._server.set_revocations(entries, now)
        if deleted:
            self.log.info("Revoked credentials: {count} allocations deleted", count=deleted)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None


def _query_only(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA query_only = ON")


class SqliteUsers:
    """
    What C{txturn-admin} does to an SQLite user database: add, delete
    and list users, storing only their keys.

    A new database is txturn's.  An existing one is changed only in the
    tables it has: a user added to coturn's database goes into coturn's
    C{turnusers_lt} (its MD5 key, as coturn's C{turnadmin} writes it), so
    coturn and txturn share it during a migration; txturn's own tables
    are added only by L{init}.  Listing never writes.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _open(self, read_only: bool = False) -> Iterator[sqlite3.Connection]:
        """
        A connection to an existing database, committed (unless
        C{read_only}) and closed after the block.
        """
        check_database(self.path) if read_only else self._exists()
        with contextlib.closing(_connect(self.path, read_only=read_only)) as db:
            with db:
                yield db

    def _exists(self) -> None:
        if not os.path.exists(self.path):
            check_database(self.path)  # raises, saying how to create it

    def init(self) -> None:
        """
        Create txturn's tables (in a new file of mode 0600, or beside
        coturn's in an existing database).
        """
        if not os.path.exists(self.path):
            # Keys are secrets too: nobody else reads the file.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with contextlib.closing(_connect(self.path)) as db:
            db.executescript(SCHEMA + REVOKED_SCHEMA)

    def add(self, realm: str, name: str, password: str) -> str:
        """
        Add a user, or change their password; returns the table written.
        """
        name, realm = opaque_string(name), opaque_string(realm)
        md5 = long_term_key(name, realm, password, PasswordAlgorithm.MD5)
        if not os.path.exists(self.path):
            self.init()
        with self._open() as db:
            tables = _tables(db)
            if not tables:
                check_database(self.path)  # raises, saying to init
            if tables[0] == COTURN:
                db.execute(
                    "INSERT OR REPLACE INTO turnusers_lt (realm, name, hmackey) VALUES (?, ?, ?)",
                    (realm, name, md5.hex()),
                )
                return COTURN
            row = (
                realm,
                name,
                md5,
                long_term_key(name, realm, password, PasswordAlgorithm.SHA256),
                userhash(name, realm),
            )
            db.execute(
                "INSERT OR REPLACE INTO txturn_users (realm, name, md5, sha256, userhash) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )
            return OURS

    def delete(self, realm: str, name: str) -> bool:
        """
        Delete a user from every users table the database has.
        """
        deleted = 0
        with self._open() as db:
            for table in _tables(db):
                deleted += db.execute(
                    f"DELETE FROM {table} WHERE realm = ? AND name = ?", (realm, name)
                ).rowcount
        return deleted > 0

    def revoke(self, name: str, until: float) -> None:
        with self._open() as db:
            # The revocations table alone, which no lookup of keys reads.
            db.executescript(REVOKED_SCHEMA)
            db.execute("INSERT OR REPLACE INTO txturn_revoked VALUES (?, ?)", (name, until))

    def unrevoke(self, name: str) -> bool:
        with self._open() as db:
            if not _has(db, "txturn_revoked"):
                return False
            return db.execute("DELETE FROM txturn_revoked WHERE name = ?", (name,)).rowcount > 0

    def revoked(self, now: float) -> dict[str, float]:
        with self._open(read_only=True) as db:
            if not _has(db, "txturn_revoked"):
                return {}
            rows = db.execute(
                "SELECT name, until FROM txturn_revoked WHERE until > ? ORDER BY name", (now,)
            )
            return {str(n): float(u) for n, u in rows}

    def names(self, realm: str | None = None) -> list[tuple[str, str]]:
        """
        (realm, name) of every user in every users table, read-only.
        """
        found: set[tuple[str, str]] = set()
        with self._open(read_only=True) as db:
            for table in _tables(db):
                found.update(
                    (str(r), str(n)) for r, n in db.execute(f"SELECT realm, name FROM {table}")
                )
        return sorted(f for f in found if realm is None or f[0] == realm)


def _has(db: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (table,)).fetchone() is not None
