"""
Hostile bytes against the transports themselves: mutated DTLS records
(cookieless and cookied hellos, handshake flights, application data of a
live session) into the DTLS listener, and mutated TLS records, cut at
random, into the TLS layer in front of the stream framing.  Nothing may
escape, nothing may reach the last-resort handler, and what the
listener holds stays within its caps.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txturn.testing.fuzzing import fuzz_transports


class TransportFuzzTests(SynchronousTestCase):
    def test_mutations(self) -> None:
        """
        4,000 mutated DTLS and TLS records: nothing escapes, nothing reaches
        the last-resort handler, the listener stays within its cap.
        """
        result = fuzz_transports(4_000, seed=2026)
        self.assertEqual(result["escaped"], [])
        self.assertEqual(result["failures"], [], [f.getTraceback() for f in result["failures"][:3]])
        self.assertLessEqual(result["most_sessions"], result["max_sessions"])
