"""
Hostile input to the server core: mutations of real requests never raise,
never reach the last-resort error handler, and leave no state for senders
that never authenticated (the engine is L{txturn.testing.fuzzing}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txturn.testing.fuzzing import fuzz


class FuzzTests(SynchronousTestCase):
    """
    A bounded mutation fuzz run (the long run lives in bench/).
    """

    def test_mutations(self) -> None:
        """
        20,000 mutated requests, as datagrams and as stream chunks cut at
        random: nothing escapes, nothing reaches the last-resort handler,
        only the authenticating address ever has an allocation, and every
        timer goes with shutdown.
        """
        result = fuzz(20_000, seed=2026)
        # Re-signed mutations get past authentication into the handlers.
        self.assertGreater(result["successes"], 50)
        self.assertEqual(result["escaped"], [])
        self.assertEqual(result["failures"], [], [f.getTraceback() for f in result["failures"][:3]])
        self.assertEqual(result["strangers"], [])
        result["server"].shutdown()
        self.assertEqual(result["clock"].getDelayedCalls(), [])
