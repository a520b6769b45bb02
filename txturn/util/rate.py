# -*- test-case-name: tests.test_limits -*-
"""
Rate limits on the injected clock: a token bucket, a per-source limiter
whose memory is bounded however many sources there are, and a throttle
that keeps one kind of log line from being written per packet.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime


def source_of(host: str) -> str:
    """
    What a per-source limit counts for C{host}: the IPv4 address, or the
    /64 an IPv6 address is in.  A host or a home network is given a whole
    /64, so counting single IPv6 addresses would let one sender be
    billions of sources.
    """
    if ":" not in host:
        return host
    try:
        packed = ipaddress.IPv6Address(host.split("%", 1)[0]).packed
    except ValueError:
        return host
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(packed[12:]))
    return packed[:8].hex() + "/64"


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

    def give(self, amount: float) -> None:
        """
        Add C{amount} back, up to the burst.
        """
        self._tokens = min(self.burst, self._tokens + amount)


class _SourceBucket(TokenBucket):
    """
    A source's bucket, which remembers until when the source has proven
    that it receives what is sent to it.
    """

    __slots__ = ("proven_until",)

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        super().__init__(clock, rate, burst)
        self.proven_until = 0.0


class SourceLimiter:
    """
    A token bucket per source (an IPv4 address or an IPv6 /64,
    L{source_of}), for at most C{max_sources}
    sources: the least recently seen is forgotten first, so a flood from
    many addresses costs bounded memory (and a forgotten source simply
    starts again with a full bucket).

    A source that L{prove}s its address (it answered a challenge: a nonce
    bound to its address came back inside an authenticated request) gets
    a burst of C{proven_burst} for C{proven_for} seconds, and every proof
    gives back one token.  A crowd behind one NAT then pays for its first
    round of challenges only, while an address that is only ever spoofed,
    and so never proves anything, keeps the small burst: the reflection
    towards a victim stays bounded.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rate: float,
        burst: float,
        max_sources: int = 10000,
        proven_burst: float | None = None,
        proven_for: float = 600.0,
    ) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self.proven_burst = proven_burst if proven_burst is not None else burst
        self.proven_for = proven_for
        self.max_sources = max_sources
        self._buckets: collections.OrderedDict[str, _SourceBucket] = collections.OrderedDict()

    def _bucket(self, source: str) -> _SourceBucket:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _SourceBucket(self._clock, self.rate, self.burst)
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket

    def allow(self, source: str) -> bool:
        bucket = self._bucket(source_of(source))
        if bucket.proven_until and bucket.proven_until <= self._clock.seconds():
            bucket.proven_until = 0.0
            bucket.burst = self.burst
        return bucket.take()

    def prove(self, source: str) -> None:
        """
        C{source} answered a challenge: raise its burst (topping it up the
        first time) and give back the token its challenge cost.
        """
        bucket = self._bucket(source_of(source))
        now = self._clock.seconds()
        if bucket.burst < self.proven_burst:
            bucket.burst = self.proven_burst
            bucket.give(self.proven_burst)
        else:
            bucket.give(1.0)
        bucket.proven_until = now + self.proven_for

    def __len__(self) -> int:
        return len(self._buckets)


class LogThrottle:
    """
    At most one line per kind of event per C{interval} seconds, for
    events a sender can trigger at will (an unexpected error, a refused
    connection): the first is logged, the rest are counted and the count
    goes with the next line.  At most C{max_kinds} kinds are remembered.
    """

    def __init__(self, clock: IReactorTime, interval: float = 60.0, max_kinds: int = 256) -> None:
        self._clock = clock
        self.interval = interval
        self.max_kinds = max_kinds
        self._kinds: dict[object, tuple[float, int]] = {}

    def allow(self, kind: object) -> int | None:
        """
        C{None} to stay quiet; else how many lines of this kind were
        suppressed since the last one written (log this one, with that).
        """
        now = self._clock.seconds()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._kinds[kind] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._kinds) >= self.max_kinds:
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        return last[1] if last is not None else 0

    def emit(self, kind: object, log: Callable[..., None], format: str, **fields: Any) -> None:
        """
        C{log(format, **fields)} if this kind may be logged now, with
        C{suppressed} (how many were not) among the fields and said at the
        end of the line.
        """
        suppressed = self.allow(kind)
        if suppressed is not None:
            log(format + " ({suppressed} more not logged)", suppressed=suppressed, **fields)
