# -*- test-case-name: tests.test_admin -*-
"""
C{txturn-admin}: users in an SQLite database or in Redis, revocations
across a fleet, and credentials that carry their own policy; coturn's
C{turnadmin}, for txturn.

::

    txturn-admin --user-db sqlite:///var/lib/txturn/users.db add alice
    txturn-admin --redis redis://127.0.0.1:6379 list
    txturn-admin --redis redis://127.0.0.1:6379 revoke alice --for 3600
    txturn-admin mint --secret-file /etc/txturn/secret --user alice \\
        --peer 203.0.113.0/24 --allocations 2 --ttl 3600
    TXTURN_ADMIN_TOKEN=... txturn-admin --admin-url http://127.0.0.1:9642 sessions
    txturn-admin --admin-token-file /etc/txturn/admin-token kill 17

C{sessions}, C{kill} and C{drain} talk to a running server's sessions
API (C{twistd turn --admin-port}), so a server without Redis can be
steered from the shell.

Only the RFC 8489 long-term keys (MD5 and SHA-256) are stored, never a
password.  On a coturn database, users are added to and deleted from
coturn's own table (MD5 keys, as C{turnadmin} writes them), so both
servers can share it during a migration; C{list} never writes, and
txturn's own tables are created only by C{init}.  A running server sees
users added or deleted within C{--user-cache-ttl} seconds, with no
restart.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

from twisted.internet import defer, task

from txturn.auth.credentials import REST_HMACS, CredentialError, rest_expiry
from txturn.auth.policy import mint_credential
from txturn.auth.revocations import FOREVER
from txturn.auth.user_db import SqliteUsers, UserDbError, sqlite_path
from txturn.fleet.address import parse_redis_url
from txturn.tools.argv_secrets import first_line, url_has_password, warn_on_argv

#: The realm C{add} and C{delete} use without C{--realm}: the server's default.
DEFAULT_REALM = "txturn"
#: Where C{add} reads a password from when not given one (kept out of ps).
PASSWORD_VARIABLE = "TXTURN_PASSWORD"
#: The sessions API's token, when not in a file (never on argv).
TOKEN_VARIABLE = "TXTURN_ADMIN_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txturn-admin",
        description="Manage txturn users, revocations and REST credentials.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user-db", metavar="sqlite:///PATH", help="SQLite user database.")
    where.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("TXTURN_REDIS_URL") or None,
        help="redis://[[user]:password@]host[:port][/db] [$TXTURN_REDIS_URL]",
    )
    parser.add_argument("--realm", help="Realm of the users [txturn; list: every realm].")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("TXTURN_ADMIN_URL") or "http://127.0.0.1:9642",
        help="The server's sessions API, for sessions, kill and drain "
        "[$TXTURN_ADMIN_URL, else http://127.0.0.1:9642].",
    )
    parser.add_argument(
        "--admin-token-file",
        help=f"A file whose first line is the sessions API's token [else ${TOKEN_VARIABLE}].",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="Add a user, or change their password.")
    add.add_argument("name")
    add.add_argument(
        "--password",
        help=f"The password (else ${PASSWORD_VARIABLE}, else asked, else one line of stdin).",
    )
    commands.add_parser("delete", help="Delete a user.").add_argument("name")
    commands.add_parser("list", help="List the users (never writes).")
    commands.add_parser(
        "init",
        help="Create txturn's tables (a new database, or beside coturn's in its own).",
    )
    revoke = commands.add_parser(
        "revoke", help="Refuse a user or a REST credential (on every server, with --redis)."
    )
    revoke.add_argument("name", help="A username, a REST username, or the user of REST names.")
    until = revoke.add_mutually_exclusive_group()
    until.add_argument("--until", type=float, help="Unix time the revocation ends.")
    until.add_argument("--for", dest="for_", type=float, metavar="SECONDS", help="How long.")
    commands.add_parser("unrevoke", help="Lift a revocation.").add_argument("name")
    commands.add_parser("revoked", help="List revocations in force.")
    commands.add_parser(
        "allocations", help="A user's allocations on each live server of the fleet (--redis)."
    ).add_argument("name")
    sessions = commands.add_parser("sessions", help="Live sessions on a server (its API).")
    sessions.add_argument("--user", help="Only this user's (the user part of REST names too).")
    sessions.add_argument("--peer", help="Only those with a permission or channel to this IP.")
    sessions.add_argument("--json", action="store_true", help="JSON, one session per line.")
    kill = commands.add_parser("kill", help="End a session, or every session of a user.")
    target = kill.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "id", nargs="?", help="The session's id (its ref, NODE-ID, in a --redis fleet)."
    )
    target.add_argument("--user", help="End every session of this user.")
    commands.add_parser("drain", help="Start a drain: no new allocations, stop when done.")
    mint = commands.add_parser(
        "mint", help="Mint a TURN REST credential, optionally carrying a policy."
    )
    secret = mint.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret", help="The --static-auth-secret.")
    secret.add_argument("--secret-file", help="A file whose first line is the secret.")
    mint.add_argument("--user", required=True, help="Who the credential is for.")
    mint.add_argument(
        "--hmac",
        choices=REST_HMACS,
        default="sha1",
        help="The server's --rest-api-hmac [sha1].",
    )
    mint.add_argument("--ttl", type=int, default=86400, help="Seconds it is good for [86400].")
    mint.add_argument(
        "--peer", action="append", metavar="CIDR", help="A peer range it may reach (repeat)."
    )
    mint.add_argument("--allocations", type=int, help="Allocations it may hold at once.")
    mint.add_argument("--bps", type=int, help="Bytes per second per allocation.")
    return parser


def main(argv: Sequence[str] | None = None, out: Callable[[str], Any] | None = None) -> int:
    """
    Run one command; 0 on success, 1 with one line on stderr otherwise.
    """
    write = out if out is not None else sys.stdout.write
    args = _parser().parse_args(argv)
    _warn_on_argv(args, argv if argv is not None else sys.argv[1:])
    try:
        if args.command == "mint":
            return _mint(args, write)
        if args.command in ("sessions", "kill", "drain"):
            return _steer(args, write)
        if args.user_db is not None:
            return _sqlite(args, write)
        if args.redis is not None:
            return _redis(args, write)
        raise UserDbError("say where the users are: --user-db sqlite:///PATH or --redis URL")
    except (UserDbError, CredentialError, ValueError, OSError) as e:
        sys.stderr.write(f"txturn-admin: {e}\n")
        return 1


def _warn_on_argv(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """
    Warn about each secret given on the command line.
    """
    if getattr(args, "password", None):
        warn_on_argv("txturn-admin", "--password", f"${PASSWORD_VARIABLE} or standard input")
    if getattr(args, "secret", None):
        warn_on_argv("txturn-admin", "--secret", "--secret-file")
    given = [a.removeprefix("--redis=") for a in argv]
    if any(url_has_password(url) for url in given):
        warn_on_argv("txturn-admin", "a Redis password", "$TXTURN_REDIS_URL")


def _password(args: argparse.Namespace) -> str:
    if args.password:
        return str(args.password)
    if os.environ.get(PASSWORD_VARIABLE):
        return os.environ[PASSWORD_VARIABLE]
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.name}: ")
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        raise CredentialError("no password given")
    return line


def _sqlite(args: argparse.Namespace, write: Callable[[str], Any]) -> int:
    path = sqlite_path(args.user_db)
    if path is None:
        raise UserDbError(f"{args.user_db}: an sqlite:/// URL is needed")
    command = _SQLITE_COMMANDS.get(args.command)
    if command is None:
        raise UserDbError(f"{args.command} needs --redis: it counts the fleet's allocations")
    command(SqliteUsers(path), args, args.realm or DEFAULT_REALM, write)
    return 0


def _sqlite_add(users: SqliteUsers, args: argparse.Namespace, realm: str, write: Any) -> None:
    users.add(realm, args.name, _password(args))


def _sqlite_delete(users: SqliteUsers, args: argparse.Namespace, realm: str, write: Any) -> None:
    if not users.delete(realm, args.name):
        raise UserDbError(f"no user {args.name} in realm {realm}")


def _sqlite_list(users: SqliteUsers, args: argparse.Namespace, realm: str, write: Any) -> None:
    for listed_realm, name in users.names(args.realm):
        write(f"{name}\t{listed_realm}\n")


def _sqlite_revoke(users: SqliteUsers, args: argparse.Namespace, realm: str, write: Any) -> None:
    users.revoke(args.name, _until(args, time.time(), FOREVER))


def _sqlite_unrevoke(users: SqliteUsers, args: argparse.Namespace, realm: str, write: Any) -> None:
    if not users.unrevoke(args.name):
        raise UserDbError(f"{args.name} was not revoked")


#: What each command does to an SQLite database of users.
_SQLITE_COMMANDS: dict[str, Callable[[SqliteUsers, argparse.Namespace, str, Any], None]] = {
    "add": _sqlite_add,
    "delete": _sqlite_delete,
    "init": lambda users, args, realm, write: users.init(),
    "list": _sqlite_list,
    "revoke": _sqlite_revoke,
    "unrevoke": _sqlite_unrevoke,
    "revoked": lambda users, args, realm, write: _show_revoked(users.revoked(time.time()), write),
}


def _show_revoked(entries: dict[str, float], write: Callable[[str], Any]) -> None:
    for name, until in sorted(entries.items()):
        shown = (
            "forever"
            if until >= FOREVER
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
        )
        write(f"{name}\t{shown}\n")


def _redis(args: argparse.Namespace, write: Callable[[str], Any]) -> int:
    address = parse_redis_url(args.redis)
    # Asked before the reactor runs: a terminal prompt would block it.
    password = _password(args) if args.command == "add" else ""
    failed: list[str] = []

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        from txturn.fleet.link import RedisDown, RedisLink
        from txturn.fleet.users import RedisUsers

        link = RedisLink(reactor, address, timeout=5.0)
        command = _RedisCommand(RedisUsers(link), args, args.realm or DEFAULT_REALM, write)
        try:
            yield command.run(password)
        except UserDbError as e:
            failed.append(str(e))
        except (defer.TimeoutError, RedisDown):
            failed.append(f"Redis at {address}: no answer in {link.timeout:g} s")
        except Exception as e:
            failed.append(f"Redis at {address}: {e}")
        finally:
            yield link.close()

    try:
        task.react(lambda reactor: run(reactor), [])
    except SystemExit:
        pass  # react() always exits; what failed is in failed
    if failed:
        raise UserDbError(failed[0])
    return 0


class _RedisCommand:
    """
    One command on the users, revocations and quotas a fleet keeps in
    Redis; each method returns a Deferred, failing with L{UserDbError}
    for a refusal to report.
    """

    def __init__(self, users: Any, args: argparse.Namespace, realm: str, write: Any) -> None:
        self.users = users
        self.args = args
        self.realm = realm
        self.write = write
        self.now = time.time()

    def run(self, password: str) -> Any:
        if self.args.command == "add":
            return self.users.add(self.realm, self.args.name, password)
        if self.args.command == "init":
            raise UserDbError("init is for --user-db: Redis needs no tables")
        return getattr(self, self.args.command)()

    @defer.inlineCallbacks
    def delete(self) -> Any:
        if not (yield self.users.delete(self.realm, self.args.name)):
            raise UserDbError(f"no user {self.args.name} in realm {self.realm}")

    @defer.inlineCallbacks
    def list(self) -> Any:
        for realm, name in (yield self.users.names(self.args.realm)):
            self.write(f"{name}\t{realm}\n")

    def revoke(self) -> Any:
        until = _until(self.args, self.now, FOREVER)
        return self.users.revoke(self.args.name, until, self.now)

    @defer.inlineCallbacks
    def unrevoke(self) -> Any:
        if not (yield self.users.unrevoke(self.args.name)):
            raise UserDbError(f"{self.args.name} was not revoked")

    @defer.inlineCallbacks
    def allocations(self) -> Any:
        held = yield self.users.allocations(self.args.name)
        for server, count in sorted(held.items()):
            self.write(f"{server}\t{count}\n")
        self.write(f"total\t{sum(held.values())}\n")

    @defer.inlineCallbacks
    def revoked(self) -> Any:
        _show_revoked((yield self.users.revoked(self.now)), self.write)


def _until(args: argparse.Namespace, now: float, forever: float) -> float:
    """
    When a revocation ends: as asked; else when a REST credential would
    have expired anyway; else never.
    """
    if args.until is not None:
        return float(args.until)
    if args.for_ is not None:
        return now + float(args.for_)
    expiry = rest_expiry(args.name)
    if expiry is not None and ":" in args.name:
        return float(expiry)
    return forever


def _mint(args: argparse.Namespace, write: Callable[[str], Any]) -> int:
    if args.secret_file is not None:
        secret = first_line(args.secret_file).strip()
    else:
        secret = args.secret
    username, password = mint_credential(
        secret,
        args.user,
        int(time.time()) + args.ttl,
        peers=args.peer,
        allocations=args.allocations,
        bps=args.bps,
        hmac_name=args.hmac,
    )
    write(json.dumps({"username": username, "credential": password, "ttl": args.ttl}) + "\n")
    return 0


def _api(args: argparse.Namespace, method: str, path: str) -> Any:
    """
    One call to the sessions API; its JSON answer.

    @raise OSError: the server cannot be reached, or refused the call
        (with the reason it gave).
    """
    if args.admin_token_file is not None:
        token = first_line(args.admin_token_file).strip()
    else:
        token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise OSError(f"give the sessions API token: --admin-token-file FILE or ${TOKEN_VARIABLE}")
    request = urllib.request.Request(
        args.admin_url.rstrip("/") + path,
        method=method,
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            reason = e.reason
        raise OSError(f"{args.admin_url} answered {e.code}: {reason}") from None


def _steer(args: argparse.Namespace, write: Callable[[str], Any]) -> int:
    if args.command == "drain":
        answer = _api(args, "POST", "/api/v1/drain")
        write("already draining\n" if answer["already"] else "draining\n")
        return 0
    if args.command == "kill":
        if args.user is not None:
            path = f"/api/v1/users/{urllib.parse.quote(args.user, safe='')}/end"
        else:
            path = f"/api/v1/sessions/{urllib.parse.quote(args.id, safe='')}/end"
        answer = _api(args, "POST", path)
        write(f"ended {answer['ended']}\n")
        return 0
    query: dict[str, str] = {}
    if args.user is not None:
        query["user"] = args.user
    if args.peer is not None:
        query["peer"] = args.peer
    after: int | str = 0
    rows = []
    while True:
        page = _api(
            args,
            "GET",
            "/api/v1/sessions?" + urllib.parse.urlencode({**query, "after": after, "limit": 1000}),
        )
        rows += page["sessions"]
        if page["next"] is None:
            break
        after = page["next"]
    if args.json:
        for row in rows:
            write(json.dumps(row, sort_keys=True) + "\n")
        return 0
    write(_table(rows))
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    """
    Sessions as aligned columns, with the counters each way.
    """
    header = ("ID", "USER", "CLIENT", "VIA", "RELAYS", "AGE", "LEFT", "PEERS", "UP", "DOWN")
    lines = [header]
    for row in rows:
        up, down = row["to_peers"], row["to_client"]
        peers = sorted(set(row["permissions"]) | set(row["channels"].values()))
        lines.append(
            (
                str(row.get("ref", row["id"])),
                row["user"],
                row["client"],
                row["transport"],
                ",".join(row["relays"]),
                f"{row['age']:.0f}s",
                f"{row['lifetime_left']:.0f}s",
                ",".join(peers) or "-",
                f"{up['packets']}p/{up['bytes']}B",
                f"{down['packets']}p/{down['bytes']}B",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )


if __name__ == "__main__":
    sys.exit(main())
