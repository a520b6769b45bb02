"""
Tests for L{txturn.policy}.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from txturn.policy import PeerPolicy, canonical_peer

#: Every spelling of a loopback or unspecified address a client might send.
REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:0.0.0.0",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "::1%lo",
    "not an address",
]
ALLOWED = ["203.0.113.5", "2001:db8::5", "::ffff:203.0.113.5", "64:ff9b::cb00:7105"]


class CanonicalTests(SynchronousTestCase):
    """
    Tests for L{canonical_peer}.
    """

    def test_embedded_forms(self) -> None:
        """
        Mapped, compatible, NAT64, 6to4 and Teredo forms unwrap to IPv4.
        """
        expected = ipaddress.IPv4Address("192.0.2.33")
        for form in [
            "::ffff:192.0.2.33",
            "::192.0.2.33",
            "64:ff9b::c000:221",
            "2002:c000:221::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdde",
        ]:
            self.assertEqual(canonical_peer(form), expected, form)

    def test_plain(self) -> None:
        """
        Plain IPv4 and IPv6 addresses stay as they are.
        """
        self.assertEqual(str(canonical_peer("2001:db8::1")), "2001:db8::1")
        self.assertEqual(str(canonical_peer("::1")), "::1")


class PolicyTests(SynchronousTestCase):
    """
    Tests for L{PeerPolicy}.
    """

    def test_refused(self) -> None:
        """
        Every spelling of loopback and unspecified is refused by default.
        """
        policy = PeerPolicy()
        for host in REFUSED:
            self.assertFalse(policy.allows(host), host)
        for host in ALLOWED:
            self.assertTrue(policy.allows(host), host)

    def test_allow_loopback(self) -> None:
        """
        allow_loopback lets loopback through, in any spelling, but never
        the unspecified address.
        """
        policy = PeerPolicy(allow_loopback=True)
        for host in ["127.0.0.1", "::1", "::ffff:127.0.0.1"]:
            self.assertTrue(policy.allows(host), host)
        for host in ["0.0.0.0", "::", "::ffff:0.0.0.0"]:
            self.assertFalse(policy.allows(host), host)
