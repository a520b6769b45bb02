# -*- test-case-name: tests.test_redis -*-
"""
Usage records to a Redis stream (C{--usage-stream KEY} with
C{--redis}), so that one consumer (C{XREAD}, or a consumer group) sees
the allocations of the whole fleet as they end.

Each record of L{txturn.observers.usage} becomes one stream entry: its
fields as they are, nested ones (traffic, drops, relayed addresses) as
JSON.  The stream is capped (C{MAXLEN ~}), so Redis does not grow without
a consumer.  While Redis is away, records wait in a bounded queue and
are written when it is back; beyond the queue the oldest are dropped,
and counted.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from txturn.fleet.link import RedisLink
from txturn.util.log_level import logger

#: Entries the stream keeps, about.
STREAM_LENGTH = 1_000_000
#: Records kept while Redis is away.
QUEUE = 10_000


class RedisUsageStream:
    """
    Writes usage records to a Redis stream; given to
    L{txturn.observers.usage.UsageRecords} as a writer.
    """

    log = logger()

    def __init__(self, link: RedisLink, key: str, length: int = STREAM_LENGTH) -> None:
        self._link = link
        self.key = key
        self._length = length
        self._waiting: collections.deque[list[str]] = collections.deque(maxlen=QUEUE)
        #: Records lost because Redis was away longer than the queue lasts.
        self.dropped = 0
        link.on_up.append(self._flush)

    def __call__(self, fields: dict[str, object]) -> None:
        entry: list[str] = []
        for name, value in fields.items():
            entry += [name, value if isinstance(value, str) else json.dumps(value)]
        if self._waiting or not self._link.up:
            self._queue(entry)
            return
        self._send(entry)

    def _send(self, entry: list[str]) -> None:
        d = self._link.call("XADD", self.key, "MAXLEN", "~", self._length, "*", *entry)
        d.addErrback(lambda _: self._queue(entry))

    def _queue(self, entry: list[str]) -> None:
        if len(self._waiting) == self._waiting.maxlen:
            self.dropped += 1
        self._waiting.append(entry)

    def _flush(self) -> Any:
        waiting, self._waiting = self._waiting, collections.deque(maxlen=QUEUE)
        if waiting:
            self.log.info(
                "Writing {count} usage records kept while Redis was away", count=len(waiting)
            )
        for entry in waiting:
            self._send(entry)
