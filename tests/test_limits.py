"""
Tests for L{txturn.util.rate}, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txturn.util.rate import SourceLimiter, TokenBucket


class TokenBucketTests(SynchronousTestCase):
    """
    Tests for L{TokenBucket}.
    """

    def test_rate(self) -> None:
        """
        A full bucket gives its burst at once, then the rate per second.
        """
        clock = Clock()
        bucket = TokenBucket(clock, rate=1000, burst=1500)
        self.assertTrue(bucket.take(1500))
        self.assertFalse(bucket.take(1))
        clock.advance(0.5)
        self.assertTrue(bucket.take(500))
        self.assertFalse(bucket.take(1))
        clock.advance(10)
        self.assertTrue(bucket.take(1500))
        self.assertFalse(bucket.take(1))

    def test_refusal_spends_nothing(self) -> None:
        """
        A refused take leaves the tokens for a smaller one.
        """
        bucket = TokenBucket(Clock(), rate=100)
        self.assertFalse(bucket.take(101))
        self.assertTrue(bucket.take(100))


class SourceLimiterTests(SynchronousTestCase):
    """
    Tests for L{SourceLimiter}.
    """

    def test_per_source(self) -> None:
        """
        Each source has its own bucket.
        """
        clock = Clock()
        limiter = SourceLimiter(clock, rate=1, burst=2)
        self.assertEqual([limiter.allow("a") for _ in range(3)], [True, True, False])
        self.assertTrue(limiter.allow("b"))
        clock.advance(1)
        self.assertTrue(limiter.allow("a"))

    def test_bounded(self) -> None:
        """
        However many sources there are, at most max_sources are remembered.
        """
        limiter = SourceLimiter(Clock(), rate=1, burst=1, max_sources=100)
        for i in range(10000):
            limiter.allow(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(limiter), 100)
