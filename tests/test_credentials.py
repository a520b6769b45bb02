"""
Tests for L{txturn.auth.credentials}: keys, nonces and credential sources.
"""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from txturn.auth.credentials import (
    CredentialChain,
    CredentialError,
    NonceManager,
    RestApiCredentials,
    StaticCredentials,
    long_term_key,
    opaque_string,
    rest_api_password,
    userhash,
)
from txturn.wire.stun import NONCE_COOKIE, PasswordAlgorithm


class KeyTests(SynchronousTestCase):
    """
    Long-term keys and string preparation.
    """

    def test_md5_key(self) -> None:
        """
        The MD5 key is MD5(username:realm:password).
        """
        self.assertEqual(
            long_term_key("user", "realm", "pass"), hashlib.md5(b"user:realm:pass").digest()
        )

    def test_sha256_key(self) -> None:
        """
        The SHA-256 key is SHA-256 of the same string.
        """
        self.assertEqual(
            long_term_key("user", "realm", "pass", PasswordAlgorithm.SHA256),
            hashlib.sha256(b"user:realm:pass").digest(),
        )

    def test_opaque_string(self) -> None:
        """
        OpaqueString maps non-ASCII spaces to U+0020, normalises to NFC and
        refuses control characters and empty strings.
        """
        self.assertEqual(opaque_string("a\u00a0b"), "a b")
        self.assertEqual(opaque_string("e\u0301"), "\u00e9")
        self.assertRaises(CredentialError, opaque_string, "a\x00b")
        self.assertRaises(CredentialError, opaque_string, "")

    def test_rest_password(self) -> None:
        """
        The REST API password is base64(HMAC-SHA1(secret, username)),
        checked against openssl's HMAC.
        """
        self.assertEqual(
            rest_api_password("north", "1700000000:alice"), "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        )

    def test_rest_password_sha2(self) -> None:
        """
        With SHA-256 or SHA-512 (C{--rest-api-hmac}, Kamailio's
        C{auth_ephemeral} C{sha_algorithm}) the password is their HMAC,
        checked against C{openssl dgst -sha256 -hmac}; an unknown HMAC is
        refused, not quietly taken as SHA-1.
        """
        name = "1700000000:alice"
        self.assertEqual(
            rest_api_password("north", name, "sha256"),
            "EuME0Xh0HllnbpbObfs8aBsd78Vr1EMwxArqbyCrGl8=",
        )
        self.assertEqual(
            rest_api_password("north", name, "sha512"),
            "NO/mrcTtqU47uK+3/ZrTM3OMeVdf0XqXNVVddtcCwUJz5xFHKSTuNUkZNUbCFEZjOOjPIniDp1h2"
            "iSRh6xAtwA==",
        )
        self.assertRaises(CredentialError, rest_api_password, "north", name, "md5")


class NonceTests(SynchronousTestCase):
    """
    Stateless nonces.
    """

    def test_valid_until_expiry(self) -> None:
        """
        A nonce is valid for its lifetime, for the IP it was issued to.
        """
        nonces = NonceManager(lifetime=600)
        nonce = nonces.issue("192.0.2.1", 1000.0)
        self.assertTrue(nonce.startswith(NONCE_COOKIE + "wAAA"))
        self.assertLess(len(nonce), 128)
        self.assertTrue(nonces.is_valid(nonce, "192.0.2.1", 1599.0))
        self.assertFalse(nonces.is_valid(nonce, "192.0.2.1", 1600.0))
        self.assertFalse(nonces.is_valid(nonce, "192.0.2.2", 1000.0))

    def test_forgery(self) -> None:
        """
        A nonce from another server secret, or altered, is not valid.
        """
        nonce = NonceManager(secret=b"a" * 32).issue("192.0.2.1", 0.0)
        other = NonceManager(secret=b"b" * 32)
        self.assertFalse(other.is_valid(nonce, "192.0.2.1", 1.0))
        for bad in ["", NONCE_COOKIE, nonce[:-1], nonce + "A", "x" * 40, nonce[:13] + "!!!!"]:
            self.assertFalse(NonceManager(secret=b"a" * 32).is_valid(bad, "192.0.2.1", 1.0))


class SourceTests(SynchronousTestCase):
    """
    Static users, user databases, REST credentials and chains of them.
    """

    def test_static(self) -> None:
        """
        A static user has keys of both algorithms, in its realm only.
        """
        source = StaticCredentials("r", {"u": "p"})
        self.assertEqual(
            source.key_for("u", "r", PasswordAlgorithm.MD5, 0), long_term_key("u", "r", "p")
        )
        self.assertIsNone(source.key_for("u", "other", PasswordAlgorithm.MD5, 0))
        self.assertIsNone(source.key_for("x", "r", PasswordAlgorithm.MD5, 0))
        self.assertEqual(source.username_for_hash(userhash("u", "r"), "r"), "u")

    def test_user_db(self) -> None:
        """
        A user database holds passwords and MD5 keys; a key user has no
        SHA-256 key.  Comments and blank lines are skipped.
        """
        key = long_term_key("k", "r", "pw")
        source = StaticCredentials.from_lines(
            "r", ["# users", "", "a:pass:with:colons", f"k:0x{key.hex()}"]
        )
        self.assertEqual(
            source.key_for("a", "r", 1, 0), long_term_key("a", "r", "pass:with:colons")
        )
        self.assertEqual(source.key_for("k", "r", PasswordAlgorithm.MD5, 0), key)
        self.assertIsNone(source.key_for("k", "r", PasswordAlgorithm.SHA256, 0))

    def test_user_db_errors(self) -> None:
        """
        Bad lines are reported with their number.
        """
        for lines, text in [
            (["ok:1", "nocolon"], "line 2: expected name:password"),
            (["k:0xzz"], "line 1: key is not hexadecimal"),
            (["k:0xabcd"], "line 1: an MD5 key has 32 hex digits"),
        ]:
            error = self.assertRaises(CredentialError, StaticCredentials.from_lines, "r", lines)
            self.assertEqual(str(error), text)

    def test_generate(self) -> None:
        """
        A generated user is random and usable.
        """
        one, name1, pw1 = StaticCredentials.generate("r")
        _, name2, pw2 = StaticCredentials.generate("r")
        self.assertNotEqual((name1, pw1), (name2, pw2))
        self.assertEqual(one.key_for(name1, "r", 1, 0), long_term_key(name1, "r", pw1))

    def test_rest_expiry(self) -> None:
        """
        A REST username is valid until its timestamp; one without a
        numeric timestamp never is.
        """
        source = RestApiCredentials("s")
        name = "1000:bob"
        key = long_term_key(name, "r", rest_api_password("s", name))
        self.assertEqual(source.key_for(name, "r", 1, 999.0), key)
        self.assertIsNone(source.key_for(name, "r", 1, 1000.0))
        self.assertIsNone(source.key_for("bob", "r", 1, 0))
        self.assertEqual(
            source.key_for("1000", "r", 1, 0),
            long_term_key("1000", "r", rest_api_password("s", "1000")),
        )

    def test_rest_sha256(self) -> None:
        """
        A source made with C{hmac_name="sha256"} takes SHA-256 passwords
        and not SHA-1 ones, for every secret.
        """
        source = RestApiCredentials(["old", "new"], hmac_name="sha256")
        name = "1000:bob"
        for secret in ("old", "new"):
            key = long_term_key(name, "r", rest_api_password(secret, name, "sha256"))
            self.assertIn(key, source.keys_for(name, "r", 1, 0))
            sha1 = long_term_key(name, "r", rest_api_password(secret, name))
            self.assertNotIn(sha1, source.keys_for(name, "r", 1, 0))
        self.assertRaises(CredentialError, RestApiCredentials, "s", hmac_name="md5")

    def test_chain(self) -> None:
        """
        A chain answers from the first source that knows the user.
        """
        chain = CredentialChain([StaticCredentials("r", {"u": "p"}), RestApiCredentials("s")])
        self.assertEqual(chain.key_for("u", "r", 1, 0), long_term_key("u", "r", "p"))
        self.assertIsNotNone(chain.key_for("5:x", "r", 1, 0))
        self.assertIsNone(chain.key_for("v", "r", 1, 0))
        self.assertEqual(chain.username_for_hash(userhash("u", "r"), "r"), "u")
