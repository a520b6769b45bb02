# -*- test-case-name: tests.test_redis -*-
"""
Users kept in Redis (C{--redis URL}), as C{txturn-admin} writes them, and
the revocations it publishes.

Keys, never passwords, are stored: C{txturn:user:<realm>:<name>} is a
hash of the hex MD5 and SHA-256 long-term keys, and
C{txturn:userhash:<realm>:<hex USERHASH>} names the user a USERHASH
stands for.  C{txturn:revoked} maps each revoked name to the Unix time
its revocation ends, and every revocation is published on the
C{txturn:revocations} channel as JSON (C{{"name": ..., "until": ...}};
C{until} 0 lifts one), which every server of the fleet hears
(L{txturn.fleet.sharing}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txturn.auth.credentials import ICredentialSource, long_term_key, opaque_string, userhash
from txturn.auth.revocations import FOREVER as FOREVER
from txturn.auth.revocations import rest_user
from txturn.fleet.link import PREFIX, RedisLink
from txturn.wire.stun import PasswordAlgorithm

REVOKED = PREFIX + "revoked"
REVOCATIONS_CHANNEL = PREFIX + "revocations"


def _realm_part(realm: str) -> str:
    """
    The realm as it is written in a key: with its C{%} and C{:} escaped,
    so that the first C{:} after it ends it.  Otherwise user C{bob} of
    realm C{r:eu} and user C{eu:bob} of realm C{r} would share one key,
    and one could log in as the other.  A realm without either (nearly
    every one) is written as it is, as before.
    """
    return realm.replace("%", "%25").replace(":", "%3A")


def _realm_of(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


def user_key(realm: str, name: str) -> str:
    return f"{PREFIX}user:{_realm_part(realm)}:{name}"


def userhash_key(realm: str, hashed: bytes) -> str:
    return f"{PREFIX}userhash:{_realm_part(realm)}:{hashed.hex()}"


@implementer(ICredentialSource)
class RedisCredentials:
    """
    The keys of the users in Redis, as Deferreds (behind a
    L{txturn.auth.cache.CachedCredentials}).
    """

    def __init__(self, link: RedisLink, realm: str) -> None:
        self._link = link
        self.realm = realm

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Any:
        if realm != self.realm:
            return ()
        field = "sha256" if algorithm == PasswordAlgorithm.SHA256 else "md5"
        d = self._link.call("HGET", user_key(realm, username), field)
        return d.addCallback(_key)

    def username_for_hash(self, hashed: bytes, realm: str) -> Any:
        if realm != self.realm:
            return None
        return self._link.call("GET", userhash_key(realm, hashed))


def _key(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, str):
        return ()
    try:
        return (bytes.fromhex(value),)
    except ValueError:
        return ()


def _glob_escaped(text: str) -> str:
    """
    C{text} matched literally by a Redis C{SCAN MATCH} pattern.
    """
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisUsers:
    """
    What C{txturn-admin} does to the users and revocations in Redis.
    """

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    @defer.inlineCallbacks
    def add(self, realm: str, name: str, password: str) -> Any:
        name, realm = opaque_string(name), opaque_string(realm)
        md5 = long_term_key(name, realm, password, PasswordAlgorithm.MD5).hex()
        sha256 = long_term_key(name, realm, password, PasswordAlgorithm.SHA256).hex()
        yield self._link.call("HSET", user_key(realm, name), "md5", md5, "sha256", sha256)
        yield self._link.call("SET", userhash_key(realm, userhash(name, realm)), name)

    @defer.inlineCallbacks
    def delete(self, realm: str, name: str) -> Any:
        removed = yield self._link.call("DEL", user_key(realm, name))
        yield self._link.call("DEL", userhash_key(realm, userhash(name, realm)))
        return bool(removed)

    @defer.inlineCallbacks
    def names(self, realm: str | None = None) -> Any:
        pattern = user_key(_glob_escaped(realm), "*") if realm is not None else f"{PREFIX}user:*"
        found: list[tuple[str, str]] = []
        cursor = "0"
        while True:
            cursor, keys = yield self._link.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            for key in keys:
                user_realm, _, name = key[len(PREFIX) + len("user:") :].partition(":")
                found.append((_realm_of(user_realm), name))
            if str(cursor) == "0":
                return sorted(found)

    @defer.inlineCallbacks
    def revoke(self, name: str, until: float, now: float) -> Any:
        """
        Refuse C{name} on every server until C{until}; revocations that
        are over are dropped on the way.
        """
        yield self._prune(now)
        yield self._link.call("HSET", REVOKED, name, repr(float(until)))
        yield self._link.call(
            "PUBLISH", REVOCATIONS_CHANNEL, json.dumps({"name": name, "until": until})
        )

    @defer.inlineCallbacks
    def unrevoke(self, name: str) -> Any:
        removed = yield self._link.call("HDEL", REVOKED, name)
        yield self._link.call(
            "PUBLISH", REVOCATIONS_CHANNEL, json.dumps({"name": name, "until": 0})
        )
        return bool(removed)

    @defer.inlineCallbacks
    def revoked(self, now: float) -> Any:
        entries = yield revocations(self._link)
        return {name: until for name, until in entries.items() if until > now}

    @defer.inlineCallbacks
    def allocations(self, name: str) -> Any:
        """
        The allocations C{name} holds on each live server, as the fleet's
        quota counts them: those of the username C{name}, and for a plain
        name also those of every TURN REST name of that user
        (C{<expiry>:name[:policy]}, each counted under its whole name).
        Servers are named by id and by what their liveness key says (host
        and process).
        """
        keys = [f"{PREFIX}quota:{name}"]
        if ":" not in name:
            for pattern in (f"{PREFIX}quota:*:{name}", f"{PREFIX}quota:*:{name}:*"):
                keys += [k for k in (yield self._scan(pattern)) if k not in keys]
        held: dict[str, int] = {}
        names: dict[str, str | None] = {}
        for key in keys:
            username = key[len(PREFIX + "quota:") :]
            if username != name and rest_user(username) != name:
                continue
            flat = yield self._link.call("HGETALL", key)
            for server, count in _pairs(flat):
                server = str(server)
                if server not in names:
                    names[server] = yield self._link.call("GET", f"{PREFIX}server:{server}")
                described = names[server]
                if described is None:
                    continue  # a server that is gone: its counts age out
                label = f"{server} ({described})" if described != "1" else server
                held[label] = held.get(label, 0) + int(count)
        return held

    @defer.inlineCallbacks
    def _scan(self, pattern: str) -> Any:
        """
        Every key matching C{pattern}, by SCAN (never KEYS, which blocks
        Redis on a large fleet).
        """
        found: list[str] = []
        cursor = 0
        while True:
            answer = yield self._link.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            cursor, keys = int(answer[0]), answer[1]
            found += [k if isinstance(k, str) else k.decode() for k in keys]
            if cursor == 0:
                return found

    @defer.inlineCallbacks
    def _prune(self, now: float) -> Any:
        entries = yield revocations(self._link)
        over = [name for name, until in entries.items() if until <= now]
        if over:
            yield self._link.call("HDEL", REVOKED, *over)


@defer.inlineCallbacks
def revocations(link: RedisLink) -> Any:
    """
    Every revocation in Redis: name -> the Unix time it ends.
    """
    flat = yield link.call("HGETALL", REVOKED)
    entries: dict[str, float] = {}
    for name, until in _pairs(flat):
        try:
            entries[str(name)] = float(until)
        except (TypeError, ValueError):
            continue
    return entries


def _pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    """
    A hash as HGETALL answers it (field, value, field, value...), paired.
    """
    return list(zip(flat[::2], flat[1::2], strict=False))
