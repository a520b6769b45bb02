# -*- test-case-name: tests.test_redis -*-
"""
What a fleet of servers shares through Redis (C{--redis URL}): each
user's allocations on every server, so one per-user quota holds for the
fleet, and revoked credentials, refused everywhere within a second.

B{Quotas.}  C{txturn:quota:<user>} is a hash with one field per server
(a random id per process) counting the user's allocations there.  An
Allocate runs one Lua script that sums the fields of servers still alive
and adds one to this server's if the sum is under the limit: the check
and the count are one step for the whole fleet.  A server is alive while
its key C{txturn:server:<id>} is, which it sets every third of
C{--redis-ttl}; a server that crashed stops setting it, and the script
drops its field once the key has expired, so its allocations stop
counting within C{--redis-ttl} without anyone cleaning up.  The same
heartbeat writes this server's own counts again, so a count lost while
Redis was away, or when Redis restarted empty, is right again within a
heartbeat (and at once when Redis comes back).

B{Revocations.}  A second connection subscribes to
C{txturn:revocations}; each message revokes a name (its allocations are
deleted) or lifts a revocation, and every (re)subscription reloads the
whole set, so a revocation published while this server was cut off is
applied when it reconnects.

B{Nonces.}  Every server signs and checks nonces with the fleet's keys
(L{txturn.fleet.nonces}), read again on every heartbeat, so a client
redirected to a peer, or moved there by a balancer, keeps its nonce.

B{Redis away.}  Calls fail fast (L{txturn.fleet.link}): the quota is
then counted on this server alone, and the degradation is logged once.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import socket
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer

from txturn.auth.revocations import FOREVER
from txturn.core.events import AllocationCreated, AllocationDeleted, IServerObserver
from txturn.core.quota_ledger import IQuotaLedger
from txturn.core.server import TurnServer
from txturn.fleet.link import PREFIX, RedisLink, subscribe
from txturn.fleet.nonces import SharedNonceKeys
from txturn.fleet.users import REVOCATIONS_CHANNEL, revocations
from txturn.util.log_level import logger

SERVER_KEY = PREFIX + "server:"

#: What this process's liveness key holds, so C{txturn-admin} can name a
#: server by more than its random id: the host and the process.
DESCRIPTION = f"{socket.gethostname()} pid {os.getpid()}"
QUOTA_KEY = PREFIX + "quota:"

#: KEYS[1] the user's quota hash; ARGV this server's id, the limit (0:
#: none), the liveness key prefix, the hash's lifetime in ms.
ACQUIRE = """
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local server = fields[i]
  if server ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. server) == 0 then
    redis.call('HDEL', KEYS[1], server)
  else
    total = total + tonumber(fields[i + 1])
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

#: KEYS[1] the user's quota hash; ARGV this server's id.
RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return n
"""

#: ARGV this server's id, its liveness key, the lifetime in ms, the quota
#: key prefix, what the liveness key says of this server (host, process),
#: then user and count pairs (0: the field goes).
HEARTBEAT = """
redis.call('SET', ARGV[2], ARGV[5], 'PX', ARGV[3])
for i = 6, #ARGV, 2 do
  local key = ARGV[4] .. ARGV[i]
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', key, ARGV[1])
  else
    redis.call('HSET', key, ARGV[1], ARGV[i + 1])
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
return 1
"""

#: Users written per heartbeat script call.
_BATCH = 500


@implementer(IQuotaLedger, IServerObserver)
class RedisQuotaLedger:
    """
    The per-user quota of the fleet: given to the core when it is built
    (C{TurnService(ledger=...)}), which asks it before each Allocate, and
    told of allocations made and ended through the core's events.

    @param ttl: seconds a silent server's allocations still count.
    """

    def __init__(self, link: RedisLink, ttl: float = 30.0, server_id: str | None = None) -> None:
        self.link = link
        self.ttl = ttl
        self.id = server_id if server_id is not None else secrets.token_hex(8)
        #: The allocations of each user on this server, from its events.
        self.held: collections.Counter[str] = collections.Counter()
        #: Acquires sent and not yet answered, which the heartbeat counts
        #: too, so it never writes a count below what Redis is adding.
        self.in_flight: collections.Counter[str] = collections.Counter()

    # -- IQuotaLedger -------------------------------------------------------------

    @property
    def available(self) -> bool:
        return bool(self.link.up)

    def acquire(self, username: str, limit: int) -> defer.Deferred[bool | None]:
        if not self.link.up:
            return defer.succeed(None)
        self.in_flight[username] += 1
        d = self.link.script(
            ACQUIRE, [QUOTA_KEY + username], [self.id, limit, SERVER_KEY, int(self.ttl * 1000)]
        )

        def done(result: Any) -> Any:
            self.in_flight[username] -= 1
            if self.in_flight[username] <= 0:
                del self.in_flight[username]
            return result

        d.addBoth(done)
        return d.addCallbacks(lambda granted: bool(int(granted)), lambda _: None)

    def release(self, username: str) -> None:
        if not self.link.up:
            return
        self.link.script(RELEASE, [QUOTA_KEY + username], [self.id]).addErrback(lambda _: None)

    # -- IServerObserver -----------------------------------------------------------

    def observe(self, event: object) -> None:
        if isinstance(event, AllocationCreated):
            self.held[event.username] += 1
        elif isinstance(event, AllocationDeleted):
            held = self.held
            held[event.username] -= 1
            if held[event.username] <= 0:
                del held[event.username]
            self.release(event.username)


class RedisFleet(service.Service):
    """
    This server's part in the fleet: the heartbeat that keeps its quota
    counts (L{RedisQuotaLedger}) alive in Redis, and its revocation
    subscriber; a service to add to the L{TurnService}
    (C{fleet.setServiceParent(turn)}) whose core was given C{ledger}.

    @param hear_revocations: whether to subscribe to the revocations
        channel (tests of the rest say no).
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        link: RedisLink,
        server: TurnServer,
        ledger: RedisQuotaLedger,
        hear_revocations: bool = True,
    ) -> None:
        self._reactor = reactor
        self.link = link
        self.server = server
        self.ledger = ledger
        #: Users whose field the last heartbeat wrote.
        self._written: set[str] = set()
        self._heartbeat: IDelayedCall | None = None
        self._subscriber: Any = None
        self._hear_revocations = hear_revocations
        self._stopped = False
        #: The fleet's nonce keys, given to the core's nonce manager.
        self.nonce_keys = SharedNonceKeys(link, server.nonces)

    # -- lifecycle ---------------------------------------------------------------

    def startService(self) -> None:
        """
        Join the fleet: count the server's allocations, beat, and hear
        revocations.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self.server.add_observer(self.ledger)
        self.link.on_up.append(self._rejoined)
        self._beat()
        if self._hear_revocations:
            self._subscriber = subscribe(
                self._reactor,
                self.link,
                {REVOCATIONS_CHANNEL: self.revocation_message},
                self.reload_revocations,
            )

    def stopService(self) -> defer.Deferred[Any]:
        """
        Leave the fleet: this server stops counting in Redis at once (its
        allocations are going), and both connections close.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        closing: list[defer.Deferred[Any]] = []
        if self._subscriber is not None:
            closing.append(self._subscriber.disconnect())
        leave = self.link.call("DEL", SERVER_KEY + self.ledger.id)
        leave.addErrback(lambda _: None)
        leave.addBoth(lambda _: self.link.close())
        closing.append(leave)
        return defer.gatherResults(closing, consumeErrors=True).addErrback(lambda _: None)

    # -- heartbeat -------------------------------------------------------------------

    def _beat(self) -> None:
        """
        Say this server is alive, write its counts again and read the
        fleet's nonce keys; every third of the TTL, so two beats can be
        lost before its counts age out.
        """
        self._heartbeat = self._reactor.callLater(self.ledger.ttl / 3, self._beat)
        if self.link.up:
            self._write_counts()
            self.nonce_keys.refresh()

    def _write_counts(self) -> defer.Deferred[Any]:
        ledger = self.ledger
        counts = ledger.held + ledger.in_flight
        users = set(counts)
        pairs: list[object] = []
        for user in users:
            pairs += [user, counts[user]]
        for user in self._written - users:
            pairs += [user, 0]
        self._written = users
        ttl_ms = int(ledger.ttl * 1000)
        calls = []
        # One script call even with no user: it sets the liveness key.
        for start in range(0, max(len(pairs), 1), 2 * _BATCH):
            batch = pairs[start : start + 2 * _BATCH]
            calls.append(
                self.link.script(
                    HEARTBEAT,
                    [],
                    [ledger.id, SERVER_KEY + ledger.id, ttl_ms, QUOTA_KEY, DESCRIPTION, *batch],
                )
            )
        return defer.gatherResults(calls, consumeErrors=True).addErrback(lambda _: None)

    def _rejoined(self) -> None:
        """
        Redis is back: write the counts kept meanwhile, read the nonce
        keys, and reload the revocations (the subscriber reconnects by
        itself).
        """
        if not self._stopped:
            self._write_counts()
            self.nonce_keys.refresh()
            self.reload_revocations()

    # -- revocations -----------------------------------------------------------------

    def reload_revocations(self) -> defer.Deferred[Any]:
        """
        Replace this server's revocations by the fleet's.
        """
        d = revocations(self.link)
        d.addCallback(self._replace)
        return d.addErrback(lambda _: None)

    def _replace(self, entries: dict[str, float]) -> None:
        deleted = self.server.set_revocations(entries, self._reactor.seconds())
        if deleted:
            self.log.info(
                "Deleted {count} allocations of credentials revoked meanwhile", count=deleted
            )

    def revocation_message(self, message: object) -> None:
        """
        One message of the revocations channel: a name revoked (its
        allocations deleted) or a revocation lifted.
        """
        try:
            body = json.loads(str(message))
            name, until = str(body["name"]), float(body.get("until") or 0)
        except (ValueError, KeyError, TypeError):
            self.log.warn("Ignored a malformed revocation message: {message!r}", message=message)
            return
        if not until:
            self.server.revocations.restore(name)
            self.log.info("Revocation of {name} lifted", name=name)
            return
        deleted = self.server.revoke(name, until if until < FOREVER else FOREVER)
        self.log.info("Revoked {name}: {count} allocations deleted", name=name, count=deleted)
