# -*- test-case-name: tests.test_redis -*-
"""
The nonce keys a fleet shares through Redis (C{--redis URL}), so every
server takes the nonces its peers issued.

A client that a server redirects (ALTERNATE-SERVER), or that a balancer
sends to another server between two requests, arrives with a nonce the
new server did not issue.  With a key per server it gets 438 Stale
Nonce, and some clients (libwebrtc after a redirect) never retry.  So
the fleet signs with one key, kept in C{txturn:nonce-keys}:

 - C{current} signs new nonces;
 - C{next} is already accepted everywhere, so when it becomes current
   no server refuses what another one, not yet refreshed, signs with it;
 - C{old} holds retired keys until the last nonce they signed is stale.

One Lua script reads the keys and rotates them when C{current} is older
than L{ROTATION} on Redis's own clock (so the servers' clocks need not
agree, and only the first server to ask after the hour rotates); each
server runs it at start, on every heartbeat and when Redis is back.  The
keys never leave Redis and the servers' memory; while Redis is away a
server keeps the last keys it read.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from twisted.internet import defer

from txturn.auth.credentials import NonceManager
from txturn.fleet.link import PREFIX, RedisLink
from txturn.util.log_level import logger

NONCE_KEYS = PREFIX + "nonce-keys"

#: Seconds a key signs before the next one takes over.
ROTATION = 3600

#: Seconds past a nonce's lifetime a retired key is still accepted: the
#: servers that have not yet read the new keys (a heartbeat, at most
#: ten seconds by default) still sign with it.
MARGIN = 120

#: KEYS[1] the keys; ARGV the rotation period and how long a retired key
#: is kept (seconds), then two fresh keys (hex) for a first or a rotated
#: set.
ROTATE = """
local now = tonumber(redis.call('TIME')[1])
local period = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local raw = redis.call('GET', KEYS[1])
local set = nil
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' and decoded.current and decoded.next then
    set = decoded
  end
end
if not set then
  set = {current = ARGV[3], next = ARGV[4], since = now, old = {}}
elseif now - tonumber(set.since) >= period then
  table.insert(set.old, {key = set.current, ['until'] = now + keep})
  set.current = set.next
  set.next = ARGV[3]
  set.since = now
end
local old = {}
for _, retired in ipairs(set.old or {}) do
  if tonumber(retired['until']) > now then
    table.insert(old, retired)
  end
end
set.old = old
raw = cjson.encode(set)
redis.call('SET', KEYS[1], raw)
return raw
"""


def keys_of(raw: str | bytes) -> tuple[bytes, list[bytes]]:
    """
    The signing key and the other accepted keys of what L{ROTATE}
    returns.

    @raise ValueError: if it is not such a set.
    """
    try:
        body = json.loads(raw)
        current = bytes.fromhex(body["current"])
        accepted = [bytes.fromhex(body["next"])]
        # cjson writes an empty Lua table as {}.
        old = body.get("old") or []
        accepted += [bytes.fromhex(retired["key"]) for retired in old]
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"not a nonce key set: {e}") from None
    if len(current) < 16:
        raise ValueError("nonce key too short")
    return current, accepted


class SharedNonceKeys:
    """
    Keeps one server's L{NonceManager} on the fleet's keys.
    """

    log = logger("txturn.fleet")

    def __init__(self, link: RedisLink, nonces: NonceManager) -> None:
        self.link = link
        self.nonces = nonces
        #: Whether the fleet's keys are in use (rather than this server's own).
        self.shared = False

    def refresh(self) -> defer.Deferred[Any]:
        """
        Read the fleet's keys (rotating them when due) and use them.
        """
        fresh = [secrets.token_hex(32), secrets.token_hex(32)]
        keep = int(self.nonces.lifetime) + MARGIN
        d = self.link.script(ROTATE, [NONCE_KEYS], [ROTATION, keep, *fresh])
        d.addCallback(self._use)
        return d.addErrback(lambda _: None)

    def _use(self, raw: Any) -> None:
        try:
            current, accepted = keys_of(raw)
        except ValueError as e:
            self.log.warn("Ignored the fleet's nonce keys: {error}", error=str(e))
            return
        self.nonces.use_keys(current, accepted)
        if not self.shared:
            self.shared = True
            self.log.info("Nonces signed with the fleet's key")
