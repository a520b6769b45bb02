# -*- test-case-name: tests.test_limits -*-
"""
Rate limits on the injected clock: a token bucket, and a per-source
limiter whose memory is bounded however many sources there are.
"""

from __future__ import annotations

import collections

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """
    C{rate} units per second, in bursts of at most C{burst}.
    """

    __slots__ = ("_clock", "rate", "burst", "_tokens", "_last")

    def __init__(self, clock: IReactorTime, rate: float, burst: float | None = None) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._last = clock.seconds()

    def take(self, amount: float = 1.0) -> bool:
        """
        Spend C{amount} if the bucket holds it; C{False} (nothing spent)
        if it does not.
        """
        now = self._clock.seconds()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens < amount:
            self._tokens = tokens
            return False
        self._tokens = tokens - amount
        return True


class SourceLimiter:
    """
    A token bucket per source address, for at most C{max_sources}
    sources: the least recently seen is forgotten first, so a flood from
    many addresses costs bounded memory (and a forgotten source simply
    starts again with a full bucket).
    """

    def __init__(
        self, clock: IReactorTime, rate: float, burst: float, max_sources: int = 10000
    ) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def allow(self, source: str) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = TokenBucket(self._clock, self.rate, self.burst)
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)
