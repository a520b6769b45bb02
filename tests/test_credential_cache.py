"""
Credential sources that wait (L{txturn.auth.cache}), and the core
waiting for them, on a L{Clock}: the cache answers at once when fresh,
asks the source once per name, stands in for it in an outage, answers
500 when it hangs, stays bounded; revoked names are refused.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.test_metrics import value
from tests.test_server import REALM, ServerTestCase
from txturn.auth.cache import CacheCounter, CachedCredentials, CredentialsUnavailable
from txturn.auth.credentials import (
    CredentialChain,
    ICredentialSource,
    NonceManager,
    RestApiCredentials,
    StaticCredentials,
    long_term_key,
    userhash,
)
from txturn.auth.revocations import Revocations
from txturn.core.authenticator import AuthContext, Authenticator
from txturn.core.events import AllocationDeleted, AuthenticationFailed, IServerObserver
from txturn.observers.metrics import Metrics
from txturn.testing import make_server
from txturn.tools.client import StunClient
from txturn.util.rate import SourceLimiter
from txturn.wire.stun import Attr, Class, Message, Method, PasswordAlgorithm, decode, encode

MD5 = PasswordAlgorithm.MD5


@implementer(ICredentialSource)
class SlowSource:
    """
    A database whose answers the test gives: each lookup is a Deferred
    kept in C{asked}.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.asked: list[tuple[str, defer.Deferred[Any]]] = []

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        self.asked.append((username, d))
        return d

    def answer(self, index: int = -1) -> None:
        username, d = self.asked[index]
        password = self.users.get(username)
        d.callback(() if password is None else (long_term_key(username, REALM, password),))

    def fail(self, index: int = -1) -> None:
        self.asked[index][1].errback(ConnectionError("database down"))

    def username_for_hash(self, hashed: bytes, realm: str) -> Any:
        for name in self.users:
            if userhash(name, realm) == hashed:
                return defer.succeed(name)
        return defer.succeed(None)


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = SlowSource({"alice": "secret"})
        self.cache = CachedCredentials(self.clock, self.source, ttl=10, stale_for=100, timeout=2)

    def lookup(self, name: str = "alice") -> Any:
        return self.cache.keys_for(name, REALM, MD5, 0)

    def test_fresh_is_immediate(self) -> None:
        """
        The first lookup waits for the source; the next ones, within the
        TTL, are answered at once without asking it.
        """
        first = self.lookup()
        self.assertIsInstance(first, defer.Deferred)
        self.source.answer()
        key = self.successResultOf(first)
        self.assertEqual(self.lookup(), key)
        self.clock.advance(9)
        self.assertEqual(self.lookup(), key)
        self.assertEqual(len(self.source.asked), 1)
        self.clock.advance(2)
        self.assertIsInstance(self.lookup(), defer.Deferred)
        self.assertEqual(len(self.source.asked), 2)

    def test_coalesced(self) -> None:
        """
        Concurrent misses of one name ask the source once.
        """
        waiting = [self.lookup() for _ in range(5)]
        self.assertEqual(len(self.source.asked), 1)
        self.source.answer()
        self.assertEqual(len({tuple(self.successResultOf(d)) for d in waiting}), 1)

    def test_outage_keeps_known_users(self) -> None:
        """
        When the source fails, a user seen within C{stale_for} keeps their
        keys; one never seen gets L{CredentialsUnavailable}.
        """
        d = self.lookup()
        self.source.answer()
        key = self.successResultOf(d)
        self.clock.advance(50)
        d = self.lookup()
        self.source.fail()
        self.assertEqual(self.successResultOf(d), key)
        d = self.lookup("bob")
        self.source.fail()
        self.failureResultOf(d, CredentialsUnavailable)
        self.clock.advance(60)  # 110 s after the last answer: too old
        d = self.lookup()
        self.source.fail()
        self.failureResultOf(d, CredentialsUnavailable)

    def test_timeout(self) -> None:
        """
        A source that never answers: L{CredentialsUnavailable} after the
        timeout, not a client left waiting.
        """
        d = self.lookup()
        self.assertNoResult(d)
        self.clock.advance(2.1)
        self.failureResultOf(d, CredentialsUnavailable)

    def test_negative_as_long(self) -> None:
        """
        An unknown name is remembered as long as a known one (so timing
        cannot tell them apart), and a user added meanwhile works once
        that is over.
        """
        d = self.lookup("carol")
        self.source.answer()
        self.assertEqual(self.successResultOf(d), ())
        self.clock.advance(9)
        self.assertEqual(self.lookup("carol"), ())
        self.assertEqual(len(self.source.asked), 1)
        self.clock.advance(1.5)
        self.source.users["carol"] = "pw"
        d = self.lookup("carol")
        self.source.answer()
        self.assertEqual(len(self.successResultOf(d)), 1)

    def test_bounded(self) -> None:
        """
        At most C{size} users, and C{max_pending} lookups at a time: past
        that a lookup fails at once, as a Deferred (never an exception,
        which would take a chain's other sources down with it).
        """
        users = {f"u{i}": "pw" for i in range(10)}
        cache = CachedCredentials(self.clock, SlowSource(users), size=3, max_pending=2)
        for i in range(10):
            d = cache.keys_for(f"u{i}", REALM, MD5, 0)
            cache.source.answer()
            self.successResultOf(d)
        self.assertEqual(len(cache._entries), 3)
        cache.keys_for("x", REALM, MD5, 0)
        cache.keys_for("y", REALM, MD5, 0)
        self.failureResultOf(cache.keys_for("z", REALM, MD5, 0), CredentialsUnavailable)

    def test_unknown_names_apart(self) -> None:
        """
        12,000 names nobody has do not evict a real user (kept for the
        next outage); they are remembered in a cache of their own, at
        most C{unknown_size} of them.
        """
        source = SlowSource({"alice": "secret"})
        cache = CachedCredentials(self.clock, source, ttl=10, unknown_size=100)
        d = cache.keys_for("alice", REALM, MD5, 0)
        source.answer()
        self.assertEqual(len(self.successResultOf(d)), 1)
        for i in range(12_000):
            d = cache.keys_for(f"nobody{i}", REALM, MD5, 0)
            source.answer()
            self.assertEqual(self.successResultOf(d), ())
        self.assertEqual((len(cache._entries), len(cache._unknown)), (1, 100))
        # An outage: alice is still let in; an unknown name still unknown
        # while remembered, and then unavailable like any other.
        self.clock.advance(11)
        d = cache.keys_for("alice", REALM, MD5, 0)
        source.fail()
        self.assertEqual(len(self.successResultOf(d)), 1)
        d = cache.keys_for("nobody11999", REALM, MD5, 0)
        source.fail()
        self.failureResultOf(d, CredentialsUnavailable)


class SourceShareTests(SynchronousTestCase):
    """
    Each client source may make the cache ask the database only so often;
    and while the database is away, a name it knew and a name it never
    knew are answered alike.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.source = SlowSource({"alice": "secret"})
        self.cache = CachedCredentials(
            self.clock, self.source, ttl=10, lookup_rate=1, lookup_burst=5
        )

    def test_lookups_per_source(self) -> None:
        """
        Ten made-up names from one address: five reach the database, the
        rest fail at once; another address still gets its lookups, and a
        cached user is still answered for the first.
        """
        d = self.cache.keys_for_source("alice", REALM, MD5, 0, "198.51.100.1")
        self.source.answer()
        self.successResultOf(d)
        for i in range(10):
            d = self.cache.keys_for_source(f"nobody{i}", REALM, MD5, 0, "198.51.100.1")
            if i < 4:
                self.source.answer()
                self.assertEqual(self.successResultOf(d), ())
            else:
                self.failureResultOf(d, CredentialsUnavailable)
        self.assertEqual(len(self.source.asked), 5)
        d = self.cache.keys_for_source("nobody99", REALM, MD5, 0, "203.0.113.1")
        self.source.answer()
        self.assertEqual(self.successResultOf(d), ())
        cached = self.cache.keys_for_source("alice", REALM, MD5, 0, "198.51.100.1")
        self.assertEqual(len(cached), 1)
        self.assertEqual(self.cache.counters[CacheCounter.LIMITED], 6)

    def test_userhash_lookups_per_source(self) -> None:
        """
        USERHASH lookups count against the same share.
        """
        asked: list[bytes] = []

        def username_for_hash(hashed: bytes, realm: str) -> Any:
            asked.append(hashed)
            return defer.succeed(None)

        self.source.username_for_hash = username_for_hash  # type: ignore[method-assign]
        results = [
            self.cache.username_for_hash_source(os.urandom(32), REALM, "198.51.100.1")
            for _ in range(8)
        ]
        self.assertEqual(len(asked), 5)
        for result in results[5:]:
            self.failureResultOf(result, CredentialsUnavailable)

    def authenticator(self, credentials: Any) -> Authenticator:
        return Authenticator(
            self.clock,
            credentials,
            REALM,
            NonceManager(),
            SourceLimiter(self.clock, 1e9, 1e9),
            lambda counter: None,
        )

    def answer(self, authenticator: Authenticator, username: str, password: str) -> Any:
        client = StunClient(username, password)
        client.realm = REALM
        client.nonce = authenticator.nonces.issue("198.51.100.1", self.clock.seconds())
        request = decode(client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        result = authenticator.check(request, ("198.51.100.1", 1))
        if isinstance(result, defer.Deferred):
            self.source.fail()
            result = self.successResultOf(result)
        return result

    def code(self, result: Any) -> int:
        self.assertIsInstance(result, Message)
        return int(result.get(Attr.ERROR_CODE)[0])

    def test_outage_no_oracle(self) -> None:
        """
        The database is away: alice (seen a minute ago) still gets in
        with her password; a wrong password for her gets 500, as a name
        the cache never saw does (it was 401, telling them apart).
        Beside static users, a wrong static password is 500 as well.
        """
        authenticator = self.authenticator(self.cache)
        d = self.cache.keys_for("alice", REALM, MD5, 0)
        self.source.answer()
        self.successResultOf(d)
        self.clock.advance(60)
        self.assertIsInstance(self.answer(authenticator, "alice", "secret"), AuthContext)
        self.assertEqual(self.code(self.answer(authenticator, "alice", "wrong")), 500)
        self.assertEqual(self.code(self.answer(authenticator, "mallory", "x")), 500)
        chain = CredentialChain([StaticCredentials(REALM, {"bob": "pw"}), self.cache])
        authenticator = self.authenticator(chain)
        self.assertIsInstance(self.answer(authenticator, "bob", "pw"), AuthContext)
        self.assertEqual(self.code(self.answer(authenticator, "bob", "wrong")), 500)


class ChainTests(SynchronousTestCase):
    def test_database_down_static_works(self) -> None:
        """
        A static user (or REST name) keeps working when the database next
        to it fails; a name only the database could know fails.
        """
        clock = Clock()
        source = SlowSource({})
        chain = CredentialChain(
            [StaticCredentials(REALM, {"alice": "secret"}), CachedCredentials(clock, source)]
        )
        d = chain.keys_for("alice", REALM, MD5, 0)
        source.fail()
        self.assertEqual(len(self.successResultOf(d)), 1)
        d = chain.keys_for("nobody", REALM, MD5, 0)
        source.fail()
        self.failureResultOf(d, CredentialsUnavailable)

    def test_overloaded_database_static_works(self) -> None:
        """
        With the database's lookups all pending (a slow database and a
        flood of unknown names), static users and REST names are
        answered at once, and their userhashes found.
        """
        clock = Clock()
        source = SlowSource({})
        chain = CredentialChain(
            [
                CachedCredentials(clock, source, max_pending=4),
                StaticCredentials(REALM, {"alice": "secret"}),
                RestApiCredentials("s"),
            ]
        )
        for i in range(4):
            chain.keys_for(f"nobody{i}", REALM, MD5, 0)
        self.assertEqual(len(self.successResultOf(chain.keys_for("alice", REALM, MD5, 0))), 1)
        rest = self.successResultOf(chain.keys_for("9999999999:bob", REALM, MD5, 0))
        self.assertEqual(len(rest), 1)
        self.failureResultOf(chain.keys_for("nobody", REALM, MD5, 0), CredentialsUnavailable)

    def test_userhash_past_a_failing_database(self) -> None:
        """
        A USERHASH is looked up past a database that fails.
        """
        failing = SlowSource({})
        failing.username_for_hash = lambda hashed, realm: defer.fail(  # type: ignore[method-assign]
            ConnectionError("database down")
        )
        chain = CredentialChain([failing, StaticCredentials(REALM, {"alice": "secret"})])
        found = chain.username_for_hash(userhash("alice", REALM), REALM)
        self.assertEqual(self.successResultOf(found), "alice")
        missing = chain.username_for_hash(userhash("nobody", REALM), REALM)
        self.failureResultOf(missing, ConnectionError)

    def test_sync_stays_sync(self) -> None:
        """
        Static and REST sources alone answer at once, not in a Deferred.
        """
        chain = CredentialChain(
            [StaticCredentials(REALM, {"alice": "secret"}), RestApiCredentials("s")]
        )
        self.assertIsInstance(chain.keys_for("alice", REALM, MD5, 0), list)


@implementer(IServerObserver)
class WaitingCoreTests(ServerTestCase):
    """
    The core with a source that waits.
    """

    def setUp(self) -> None:
        super().setUp()
        self.source = SlowSource({"alice": "secret"})
        self.events: list[object] = []
        self.server = make_server(
            realm=REALM,
            clock=self.clock,
            credentials=CachedCredentials(self.clock, self.source, timeout=2),
            relays=self.relays,
        )
        self.server.add_observer(self)

    def observe(self, event: object) -> None:
        self.events.append(event)

    def challenge(self) -> None:
        self.exchange(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))

    def test_allocate_after_lookup(self) -> None:
        """
        The Allocate is answered when the keys come, signed with them.
        """
        self.challenge()
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.assertEqual(self.channel.sent, [])
        self.source.answer()
        raw, to = self.channel.sent.pop()
        response = self.client.learn(raw)
        self.assertSuccess(response)
        self.assertTrue(response.check_integrity(self.client.key))
        # Fresh in the cache: the Refresh is answered in the same call.
        self.assertSuccess(self.authed(Method.REFRESH, [(Attr.LIFETIME, 600)]))

    def test_hung_source_500(self) -> None:
        """
        A source that hangs: 500 after the timeout, counted for metrics.
        """
        metrics = Metrics(self.server, [])
        self.challenge()
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.clock.advance(2.5)
        raw, to = self.channel.sent.pop()
        self.assertError(self.client.learn(raw), 500)
        page = generate_latest(metrics.registry).decode()
        self.assertEqual(value(page, "turn_credentials_unavailable_total"), 1)
        self.server.revoke("someone", self.clock.seconds() + 10)
        page = generate_latest(metrics.registry).decode()
        self.assertEqual(value(page, "turn_revocations"), 1)

    def test_source_bug_500(self) -> None:
        """
        A source, not behind a cache, whose Deferred fails: the request
        is answered 500 and the error logged, not left unanswered.
        """
        self.server.set_credentials(self.source)
        self.challenge()
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.source.fail()
        raw, to = self.channel.sent.pop()
        self.assertError(self.client.learn(raw), 500)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_userhash(self) -> None:
        """
        USERHASH through a source whose name lookup is a Deferred.
        """
        self.challenge()
        message = Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12))
        message.add(Attr.REQUESTED_TRANSPORT, 17)
        message.add(Attr.USERHASH, userhash("alice", REALM))
        message.add(Attr.REALM, REALM)
        message.add(Attr.NONCE, self.client.nonce)
        self.send(encode(message, self.client.key))
        self.source.answer()
        raw, to = self.channel.sent.pop()
        self.assertSuccess(self.client.learn(raw))

    def test_revoked(self) -> None:
        """
        A revoked user is refused at the next request, and their
        allocations go; a revocation over lets them in again.
        """
        self.challenge()
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.source.answer()
        self.client.learn(self.channel.sent.pop()[0])
        self.assertEqual(self.server.revoke("alice", self.clock.seconds() + 60), 1)
        deleted = [e for e in self.events if isinstance(e, AllocationDeleted)]
        self.assertEqual([e.reason for e in deleted], ["revoked"])
        self.assertError(self.authed(Method.REFRESH, [(Attr.LIFETIME, 600)]), 401)
        failed = [e for e in self.events if isinstance(e, AuthenticationFailed)]
        self.assertEqual(failed[-1].reason, "revoked credential")
        self.clock.advance(61)
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.source.answer()  # the cached keys are stale by now
        self.assertSuccess(self.client.learn(self.channel.sent.pop()[0]))


class RevocationTests(SynchronousTestCase):
    def test_matching(self) -> None:
        """
        A name revokes itself and every REST name of that user; a REST
        name revokes only itself; each until its time.
        """
        revoked = Revocations()
        revoked.revoke("alice", 100)
        revoked.revoke("1700000000:bob", 100)
        self.assertTrue(revoked.is_revoked("alice", 50))
        self.assertTrue(revoked.is_revoked("1700000000:alice", 50))
        self.assertTrue(revoked.is_revoked("1700000000:alice:eyJ", 50))
        self.assertTrue(revoked.is_revoked("1700000000:bob", 50))
        self.assertFalse(revoked.is_revoked("1700000001:bob", 50))
        self.assertFalse(revoked.is_revoked("alicea", 50))
        self.assertFalse(revoked.is_revoked("alice", 100))
        self.assertEqual(len(revoked), 1)  # the one over was forgotten
        revoked.replace({"x": 10, "y": 200}, 50)
        self.assertEqual(len(revoked), 1)
        self.assertTrue(revoked.is_revoked("y", 50))
        self.assertFalse(revoked.is_revoked("alice", 50))
