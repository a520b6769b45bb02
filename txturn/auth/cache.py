# -*- test-case-name: tests.test_credential_cache -*-
"""
Keys from a credential source that may block (a database, Redis), kept
in a bounded cache so that authentication stays a dict lookup and
survives the source's outages.

A lookup that the cache answers fresh returns the keys at once, so a
request is handled in the same call as before.  A miss, or a stale entry,
asks the source, which answers with a Deferred; the request waits for it,
at most C{timeout} seconds:

- the source answers: the keys are kept for C{ttl} seconds, and so is
  the answer that a name is unknown (were that shorter, asking twice a
  few seconds apart would tell, by timing, a user from a name that is
  nobody's);
- the source fails or times out: a user who had keys within C{stale_for}
  seconds keeps them (an outage does not log out clients who already
  authenticated); anyone else gets L{CredentialsUnavailable}, which the
  server answers with 500, rather than leaving the client waiting.

Concurrent misses of one name ask the source once; at most
C{max_pending} names are asked at a time (past that a lookup fails at
once, as a Deferred: L{txturn.auth.credentials.CredentialChain} still gets the
other sources' answers, so static users and REST secrets never wait on
or fail with a database).  The cache holds at most C{size} users, least
recently used first out, and names the source does not know in a
separate, smaller cache of C{unknown_size}: a flood of made-up names
cannot evict a real user, whose cached keys must outlive an outage.
Each client source (an IPv4 address, an IPv6 /64) may make the cache ask
the database at most C{lookup_rate} times a second (C{lookup_burst} at
once): a request past that is answered from the cache, or fails like a
lookup in an outage, so one sender cycling through made-up names cannot
turn every Allocate into a database query.  Time is the injected
reactor's.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from txturn.auth.credentials import IAskingSource, StaleKeys
from txturn.util.counting import Counted, family
from txturn.util.log_level import logger
from txturn.util.rate import LogThrottle, SourceLimiter

_LOOKUPS = family(
    "credential_lookups",
    "Key lookups of users in a database (--user-db sqlite://, --redis), by how they were answered.",
    "answer",
)


class CacheCounter(Counted):
    """
    How a L{CachedCredentials} answered a lookup.
    """

    #: From a fresh entry of the cache.
    HITS = (_LOOKUPS, "cache")
    #: By the database.
    MISSES = (_LOOKUPS, "database")
    #: Not asked: the client's source had its share of lookups.
    LIMITED = (_LOOKUPS, "limited")
    #: From a stale entry, the database being away.
    STALE = (_LOOKUPS, "stale")
    #: Not at all: the database failed and nothing stood in.
    FAILED = (_LOOKUPS, "failed")


class CredentialsUnavailable(Exception):
    """
    The credential source did not answer in time, and nothing cached
    stands in for it.
    """


@dataclass
class _Entry:
    value: Any
    fresh_until: float
    usable_until: float


@implementer(IAskingSource)
class CachedCredentials:
    """
    An L{ICredentialSource} in front of one whose answers may be
    Deferreds.

    @param source: its C{keys_for} and C{username_for_hash} may return
        their value or a Deferred of it.
    """

    log = logger()

    def __init__(
        self,
        reactor: IReactorTime,
        source: Any,
        *,
        ttl: float = 10.0,
        stale_for: float = 3600.0,
        timeout: float = 2.0,
        size: int = 10_000,
        unknown_size: int = 1_000,
        max_pending: int = 256,
        lookup_rate: float = 50.0,
        lookup_burst: float = 500.0,
    ) -> None:
        self._reactor = reactor
        self.source = source
        self.ttl = ttl
        self.stale_for = stale_for
        self.timeout = timeout
        self.size = size
        self.unknown_size = unknown_size
        self.max_pending = max_pending
        #: Known users' answers, and (apart) names nobody has.
        self._entries: collections.OrderedDict[tuple[Any, ...], _Entry] = collections.OrderedDict()
        self._unknown: collections.OrderedDict[tuple[Any, ...], _Entry] = collections.OrderedDict()
        self._waiting: dict[tuple[Any, ...], list[defer.Deferred[Any]]] = {}
        self._failures = LogThrottle(reactor)
        #: Database lookups each client source may cause.
        self.lookups = SourceLimiter(reactor, lookup_rate, lookup_burst)
        #: How lookups were answered (exported by the metrics).
        self.counters: collections.Counter[CacheCounter] = collections.Counter()

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Any:
        """
        The keys, at once when fresh in the cache, else a Deferred of them.
        """
        return self._lookup(
            ("keys", username, realm, algorithm),
            lambda: self.source.keys_for(username, realm, algorithm, now),
        )

    def keys_for_source(
        self, username: str, realm: str, algorithm: int, now: float, source: str
    ) -> Any:
        """
        C{keys_for}, asking the database only within C{source}'s share.
        """
        return self._lookup(
            ("keys", username, realm, algorithm),
            lambda: self.source.keys_for(username, realm, algorithm, now),
            source,
        )

    def username_for_hash(self, hashed: bytes, realm: str) -> Any:
        return self._lookup(
            ("hash", hashed, realm), lambda: self.source.username_for_hash(hashed, realm)
        )

    def username_for_hash_source(self, hashed: bytes, realm: str, source: str) -> Any:
        """
        C{username_for_hash}, asking the database only within C{source}'s
        share.
        """
        return self._lookup(
            ("hash", hashed, realm),
            lambda: self.source.username_for_hash(hashed, realm),
            source,
        )

    def forget(self) -> None:
        """
        Drop every entry: the next lookups ask the source.
        """
        self._entries.clear()
        self._unknown.clear()

    def _lookup(
        self, key: tuple[Any, ...], ask: Callable[[], Any], source: str | None = None
    ) -> Any:
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entries = self._unknown
            entry = entries.get(key)
        now = self._reactor.seconds()
        if entry is not None and now < entry.fresh_until:
            entries.move_to_end(key)
            self.counters[CacheCounter.HITS] += 1
            return entry.value
        waiter: defer.Deferred[Any] = defer.Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        if len(self._waiting) >= self.max_pending:
            # A Deferred, never an exception: the other sources of a
            # chain still answer for their users.
            return defer.maybeDeferred(
                self._fallback, key, entry, now, "too many lookups in progress"
            )
        if source is not None and not self.lookups.allow(source):
            self.counters[CacheCounter.LIMITED] += 1
            return defer.maybeDeferred(
                self._fallback, key, entry, now, "too many lookups from one source", False
            )
        self._waiting[key] = [waiter]
        self.counters[CacheCounter.MISSES] += 1
        asked = defer.maybeDeferred(ask)
        if isinstance(asked, defer.Deferred) and not asked.called:
            asked.addTimeout(self.timeout, self._reactor)
        asked.addCallbacks(self._answered, self._failed, (key,), {}, (key, entry))
        return waiter

    def _answered(self, value: Any, key: tuple[Any, ...]) -> None:
        now = self._reactor.seconds()
        if value:
            self._unknown.pop(key, None)
            entries, size = self._entries, self.size
            entry = _Entry(value, now + self.ttl, now + self.stale_for)
        else:
            self._entries.pop(key, None)
            entries, size = self._unknown, self.unknown_size
            entry = _Entry(value, now + self.ttl, 0.0)
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > size:
            entries.popitem(last=False)
        for waiter in self._waiting.pop(key, []):
            waiter.callback(value)

    def _failed(self, failure: Failure, key: tuple[Any, ...], entry: _Entry | None) -> None:
        error = failure.value
        reason = str(error) or type(error).__name__
        if isinstance(error, (defer.TimeoutError, defer.CancelledError)):
            reason = f"no answer in {self.timeout:g} s"
        waiters = self._waiting.pop(key, [])
        try:
            value = self._fallback(key, entry, self._reactor.seconds(), reason)
        except CredentialsUnavailable as e:
            for waiter in waiters:
                waiter.errback(e)
            return
        for waiter in waiters:
            waiter.callback(value)

    def _fallback(
        self,
        key: tuple[Any, ...],
        entry: _Entry | None,
        now: float,
        reason: str,
        warn: bool = True,
    ) -> Any:
        """
        A stale entry's value while it may stand in (as L{StaleKeys}:
        they may grant, not deny); otherwise raise.
        """
        if warn:
            self._failures.emit(
                ("credential source",),
                self.log.warn,
                "Credential lookup failed ({reason}): users seen in the last {stale:g} s "
                "keep their keys, others are answered 500",
                reason=reason,
                stale=self.stale_for,
            )
        if entry is not None and now < entry.usable_until:
            self.counters[CacheCounter.STALE] += 1
            value = entry.value
            # Keys (a sequence) are marked; a name for a USERHASH is not.
            return StaleKeys(value) if isinstance(value, (tuple, list)) else value
        self.counters[CacheCounter.FAILED] += 1
        raise CredentialsUnavailable(reason)
