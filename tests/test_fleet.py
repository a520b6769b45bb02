"""
L{txturn.fleet.sharing.RedisFleet} over a fake Redis link, on a L{Clock}:
what it writes when (acquire, release, heartbeats counting acquires in
flight, zero for users gone), what it does when Redis is away, and the
revocation messages it applies.  The real Redis is in tests.test_redis.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_server import REALM, ServerTestCase
from txturn.fleet.link import RedisDown
from txturn.fleet.sharing import (
    ACQUIRE,
    DESCRIPTION,
    HEARTBEAT,
    RELEASE,
    RedisFleet,
    RedisQuotaLedger,
)
from txturn.testing import StunClient, make_server
from txturn.wire.stun import Attr, Method


class FakeLink:
    """
    Records every script run; each answer is a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.up = True
        self.on_up: list[Any] = []
        self.scripts: list[tuple[str, list[str], list[Any], defer.Deferred[Any]]] = []

    def script(self, source: str, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        if not self.up:
            return defer.fail(RedisDown("fake"))
        d: defer.Deferred[Any] = defer.Deferred()
        self.scripts.append((source, keys, args, d))
        return d

    def call(self, *args: Any) -> defer.Deferred[Any]:
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def runs(self, source: str) -> list[tuple[list[str], list[Any], defer.Deferred[Any]]]:
        return [(k, a, d) for s, k, a, d in self.scripts if s == source]


class LedgerTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.link = FakeLink()
        self.fleet = RedisQuotaLedger(self.link, ttl=30, server_id="me")  # type: ignore[arg-type]
        self.server = make_server(
            {"alice": "secret"},
            realm=REALM,
            clock=self.clock,
            relays=self.relays,
            user_quota=2,
            ledger=self.fleet,
        )
        self.client = StunClient("alice", "secret")
        self.server.add_observer(self.fleet)

    def test_acquire_then_create(self) -> None:
        """
        An Allocate waits for the script; granted, the allocation is made
        and counted; refused, 486.
        """
        self.challenge()
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.assertEqual(self.channel.sent, [])
        [(keys, args, d)] = self.link.runs(ACQUIRE)
        self.assertEqual(keys, ["txturn:quota:alice"])
        self.assertEqual(args[:2], ["me", 2])
        d.callback(1)
        self.assertSuccess(self.client.learn(self.channel.sent.pop()[0]))
        self.assertEqual(self.fleet.held["alice"], 1)
        self.send(
            self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
            ("198.51.100.7", 40001),
        )
        self.link.runs(ACQUIRE)[-1][2].callback(0)
        self.assertError(self.client.learn(self.channel.sent.pop()[0]), 486)

    def test_retransmission_waits(self) -> None:
        """
        A retransmitted Allocate while the script runs asks nothing more,
        and is answered by the first one's answer.
        """
        self.challenge()
        request = self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.send(request)
        self.send(request)
        self.assertEqual(len(self.link.runs(ACQUIRE)), 1)

    def test_release_on_delete_and_failure(self) -> None:
        """
        A deleted allocation is counted off; so is one granted and then
        not made (no relay port left).
        """
        self.challenge()
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.link.runs(ACQUIRE)[-1][2].callback(1)
        self.channel.sent.clear()
        self.send(self.client.request(Method.REFRESH, [(Attr.LIFETIME, 0)]))
        self.assertSuccess(self.client.learn(self.channel.sent.pop()[0]))
        self.assertEqual(len(self.link.runs(RELEASE)), 1)
        self.assertEqual(self.fleet.held["alice"], 0)
        self.relays.capacity = 0
        self.send(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
        self.link.runs(ACQUIRE)[-1][2].callback(1)
        self.assertError(self.client.learn(self.channel.sent.pop()[0]), 508)
        self.assertEqual(len(self.link.runs(RELEASE)), 2)

    def test_redis_away(self) -> None:
        """
        With Redis away the ledger cannot say, and the server's own count
        decides (quota 2 here).
        """
        self.link.up = False
        codes = []
        for port in (40001, 40002, 40003):
            response = self.allocate(address=("198.51.100.7", port))
            codes.append(response.get(Attr.ERROR_CODE, (0,))[0])
        self.assertEqual(codes, [0, 0, 486])

    def challenge(self) -> None:
        self.exchange(self.client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))


class HeartbeatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_server(clock=self.clock)
        self.link = FakeLink()
        self.ledger = RedisQuotaLedger(self.link, ttl=3, server_id="me")  # type: ignore[arg-type]
        self.fleet = RedisFleet(
            self.clock,
            self.link,  # type: ignore[arg-type]
            self.server,
            self.ledger,
            hear_revocations=False,
        )

    def pairs(self) -> dict[str, int]:
        _, args, _ = self.link.runs(HEARTBEAT)[-1]
        self.assertEqual(args[:5], ["me", "txturn:server:me", 3000, "txturn:quota:", DESCRIPTION])
        rest = args[5:]
        return dict(zip(rest[::2], rest[1::2], strict=True))

    def test_counts_and_in_flight(self) -> None:
        """
        Every second (a third of the TTL) the heartbeat writes each
        user's allocations here, acquires in flight included, and 0 for a
        user who had some at the last beat and has none now.
        """
        self.fleet._beat()
        self.assertEqual(self.pairs(), {})
        self.ledger.held["alice"] = 2
        self.ledger.acquire("bob", 5)
        self.clock.advance(1)
        self.assertEqual(self.pairs(), {"alice": 2, "bob": 1})
        self.ledger.held.clear()
        self.link.runs(ACQUIRE)[-1][2].callback(0)
        self.clock.advance(1)
        self.assertEqual(self.pairs(), {"alice": 0, "bob": 0})
        self.clock.advance(1)
        self.assertEqual(self.pairs(), {})

    def test_rejoined(self) -> None:
        """
        No heartbeat is written while Redis is away; when it is back the
        counts are written at once.
        """
        self.link.up = False
        self.fleet.startService()
        self.clock.advance(5)
        self.assertEqual(self.link.runs(HEARTBEAT), [])
        self.ledger.held["alice"] = 1
        self.link.up = True
        for callback in self.link.on_up:
            callback()
        self.assertEqual(self.pairs(), {"alice": 1})
        self.fleet.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_revocation_messages(self) -> None:
        """
        A revocation deletes the name's allocations; a lift restores it;
        a malformed message changes nothing.
        """
        now = self.clock.seconds()
        self.fleet.revocation_message(json.dumps({"name": "u", "until": now + 60}))
        self.assertTrue(self.server.revocations.is_revoked("u", now))
        self.fleet.revocation_message("not json")
        self.fleet.revocation_message(json.dumps({"until": 5}))
        self.assertEqual(len(self.server.revocations), 1)
        self.fleet.revocation_message(json.dumps({"name": "u", "until": 0}))
        self.assertFalse(self.server.revocations.is_revoked("u", now))
