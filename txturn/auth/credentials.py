# -*- test-case-name: tests.test_credentials -*-
"""
Long-term credentials (RFC 8489 section 9.2), stateless nonces, and the
credential sources a server looks keys up in.

Everything here is pure: time comes in as an argument (the caller reads it
from its injected reactor), so nonce expiry and REST-credential expiry are
tested with plain numbers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import unicodedata
from typing import Any, Iterable, Mapping, Protocol, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from txturn.wire.stun import NONCE_COOKIE, PasswordAlgorithm

#: Security-feature bits carried after the nonce cookie (RFC 8489 18.1);
#: bit 0 is the most significant of the 24.
FEATURE_PASSWORD_ALGORITHMS = 1 << 23
FEATURE_USERNAME_ANONYMITY = 1 << 22

_NONCE_BODY = struct.Struct("!Q")
_NONCE_MAC_BYTES = 12


class CredentialError(ValueError):
    """
    A credential string (user line, key) that cannot be used.
    """


def opaque_string(value: str) -> str:
    """
    The OpaqueString profile of RFC 8265, as RFC 8489 applies it to
    usernames, realms and passwords before hashing.

    Non-ASCII spaces become U+0020 and the result is NFC-normalised;
    control characters are refused.  For the ASCII strings nearly every
    deployment uses this is the identity.

    @raise CredentialError: for control characters or an empty string.
    """
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in value)
    result = unicodedata.normalize("NFC", mapped)
    if not result:
        raise CredentialError("empty string")
    for c in result:
        if unicodedata.category(c) == "Cc":
            raise CredentialError("control character in credential")
    return result


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: int = PasswordAlgorithm.MD5,
) -> bytes:
    """
    The long-term key: MD5 or SHA-256 of C{username:realm:password}.
    """
    data = ":".join([username, opaque_string(realm), opaque_string(password)]).encode("utf-8")
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(data).digest()
    return hashlib.md5(data).digest()


def userhash(username: str, realm: str) -> bytes:
    """
    USERHASH: SHA-256 of C{username:realm} (RFC 8489 section 14.4).
    """
    return hashlib.sha256(
        f"{opaque_string(username)}:{opaque_string(realm)}".encode("utf-8")
    ).digest()


#: The HMACs a TURN REST API password may be made with: coturn's SHA-1,
#: and the SHA-2 family as Kamailio's C{auth_ephemeral} (C{sha_algorithm})
#: and other issuers offer them.
REST_HMACS = ("sha1", "sha256", "sha384", "sha512")


def rest_api_password(secret: str | bytes, username: str, hmac_name: str = "sha1") -> str:
    """
    The TURN REST API password for an ephemeral C{username}:
    C{base64(HMAC-SHA1(secret, username))}, or with C{hmac_name} another
    of L{REST_HMACS}.
    """
    if hmac_name not in REST_HMACS:
        raise CredentialError(f"unknown REST API HMAC {hmac_name!r}")
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return base64.b64encode(hmac.new(secret, username.encode("utf-8"), hmac_name).digest()).decode(
        "ascii"
    )


class NonceManager:
    """
    Issues and checks nonces without keeping per-client state.

    A nonce is the RFC 8489 cookie, the security features, and
    C{base64url(expiry || HMAC(secret, expiry || client ip)[:12])}; it can
    only have come from this server, for this client address, and says
    itself when it goes stale.  A flood of unauthenticated requests
    therefore costs no memory.
    """

    def __init__(
        self,
        lifetime: float = 600.0,
        secret: bytes | None = None,
        features: int = FEATURE_PASSWORD_ALGORITHMS | FEATURE_USERNAME_ANONYMITY,
    ) -> None:
        self.lifetime = lifetime
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        #: Keys whose nonces are still good besides the signing key: the
        #: fleet's next key and its retired ones (L{use_keys}).
        self._accepted: tuple[bytes, ...] = ()
        self.features = features
        self._prefix = NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode("ascii")

    def use_keys(self, signing: bytes, accepted: Sequence[bytes] = ()) -> None:
        """
        Sign new nonces with C{signing}; take those signed with it or any
        of C{accepted}.  A fleet shares its keys this way
        (L{txturn.fleet.nonces}), so a client arriving at one server with
        another's nonce, as after a redirect, is served rather than told
        its nonce is stale.
        """
        # The key signing until now is taken a while longer: a client
        # challenged a moment ago still holds a nonce it signed.  It goes
        # at the next change of keys (every heartbeat under --redis).
        previous = () if self._secret in accepted else (self._secret,)
        self._secret = signing
        self._accepted = tuple(key for key in (*accepted, *previous) if key != signing)

    def _mac(self, expiry: int, client_ip: str, key: bytes | None = None) -> bytes:
        return hmac.new(
            self._secret if key is None else key,
            _NONCE_BODY.pack(expiry) + client_ip.encode("ascii"),
            hashlib.sha256,
        ).digest()[:_NONCE_MAC_BYTES]

    def issue(self, client_ip: str, now: float) -> str:
        expiry = int(now + self.lifetime)
        token = _NONCE_BODY.pack(expiry) + self._mac(expiry, client_ip)
        return self._prefix + base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")

    def is_valid(self, nonce: str, client_ip: str, now: float) -> bool:
        """
        Whether C{nonce} was issued by us to C{client_ip} and is still fresh.
        """
        if not nonce.startswith(self._prefix):
            return False
        encoded = nonce[len(self._prefix) :]
        try:
            token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, TypeError):
            return False
        if len(token) != _NONCE_BODY.size + _NONCE_MAC_BYTES:
            return False
        (expiry,) = _NONCE_BODY.unpack_from(token)
        if now >= expiry:
            return False
        mac = token[_NONCE_BODY.size :]
        # The signing key first: nearly every nonce is its own, so the
        # other keys cost an HMAC only for a peer's or a stale one.  Each
        # comparison is constant-time; which key signed is no secret.
        return any(
            hmac.compare_digest(mac, self._mac(expiry, client_ip, key))
            for key in (self._secret, *self._accepted)
        )


class ICredentialSource(Interface):
    """
    Where the server finds the long-term key of a user.

    Keys, not passwords, cross this boundary, so a source may hold only
    hashed keys (a C{name:0x<md5>} user database).
    """

    def keys_for(username: str, realm: str, algorithm: int, now: float) -> Any:
        """
        The long-term keys that may have signed a request of C{username}
        in C{realm} with the given password algorithm: one for a static
        user, one per secret for a REST name while secrets are rotated,
        none if the user is unknown, expired, or has no key of that
        algorithm.  C{now} is the server's clock.

        A source that has to wait for a database may return a Deferred
        of the keys instead; L{txturn.auth.cache.CachedCredentials}
        puts such a source behind a cache and a timeout.
        """

    def username_for_hash(hashed: bytes, realm: str) -> Any:
        """
        The username whose USERHASH in C{realm} is C{hashed}, if known
        (or a Deferred of it).
        """


class IAskingSource(ICredentialSource):
    """
    A source that asks a backend (a database) for names it does not
    hold, and so can be told who is asking: it limits the lookups each
    client source (an IPv4 address, an IPv6 /64) makes it do.
    """

    def keys_for_source(username: str, realm: str, algorithm: int, now: float, source: str) -> Any:
        """
        C{keys_for}, asked on behalf of a client at C{source}.
        """

    def username_for_hash_source(hashed: bytes, realm: str, source: str) -> Any:
        """
        C{username_for_hash}, asked on behalf of a client at C{source}.
        """


class StaleKeys(tuple):  # type: ignore[type-arg]
    """
    Keys a cache stood in with while its source was away: they may let
    a request in, never keep one out (a wrong key for a name seen
    recently must not be told apart from a name the cache never saw,
    which gets 500 in an outage).
    """


class _KeySource(Protocol):
    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Any: ...

    def username_for_hash(self, hashed: bytes, realm: str) -> Any: ...


@implementer(ICredentialSource)
class StaticCredentials:
    """
    A fixed set of users, from C{--user} options or a user database.

    @param passwords: username -> plaintext password (both algorithms).
    @param md5_keys: username -> precomputed MD5 key for C{realm}; such
        users can only use the MD5 algorithm.
    """

    def __init__(
        self,
        realm: str,
        passwords: Mapping[str, str] | None = None,
        md5_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        self.realm = realm
        self._passwords = dict(passwords or {})
        self._md5_keys = dict(md5_keys or {})
        self._hashes = {
            userhash(name, realm): name for name in list(self._passwords) + list(self._md5_keys)
        }
        # Every key is derived once, here: a lookup then costs one dict
        # probe whether the user exists or not, so the time an answer takes
        # does not tell a wrong password from an unknown name.
        self._keys: dict[tuple[str, int], bytes] = {
            (name, PasswordAlgorithm.MD5): key for name, key in self._md5_keys.items()
        }
        for name, password in self._passwords.items():
            for algorithm in (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256):
                self._keys[(name, algorithm)] = long_term_key(name, realm, password, algorithm)

    @classmethod
    def generate(cls, realm: str) -> tuple["StaticCredentials", str, str]:
        """
        One random user, for a server started with no credentials at all.
        """
        username = "turn-" + secrets.token_hex(4)
        password = secrets.token_urlsafe(18)
        return cls(realm, {username: password}), username, password

    @classmethod
    def from_lines(cls, realm: str, lines: Iterable[str]) -> "StaticCredentials":
        """
        Parse C{name:password} or C{name:0x<32 hex digits>} lines; blank
        lines and C{#} comments are skipped.

        @raise CredentialError: naming the first bad line.
        """
        passwords: dict[str, str] = {}
        keys: dict[str, bytes] = {}
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, secret = line.partition(":")
            if not sep or not name or not secret:
                raise CredentialError(f"line {number}: expected name:password")
            if secret.startswith("0x"):
                try:
                    key = bytes.fromhex(secret[2:])
                except ValueError:
                    raise CredentialError(f"line {number}: key is not hexadecimal") from None
                if len(key) != 16:
                    raise CredentialError(f"line {number}: an MD5 key has 32 hex digits")
                keys[name] = key
            else:
                passwords[name] = secret
        return cls(realm, passwords, keys)

    def __len__(self) -> int:
        return len(self._passwords) + len(self._md5_keys)

    def key_for(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        key = self._keys.get((username, algorithm))
        return key if realm == self.realm else None

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Sequence[bytes]:
        key = self.key_for(username, realm, algorithm, now)
        return () if key is None else (key,)

    def username_for_hash(self, hashed: bytes, realm: str) -> str | None:
        if realm != self.realm:
            return None
        return self._hashes.get(hashed)


#: Digits in a REST expiry: a Unix time, with room to spare, and no more,
#: so a hostile name cannot make C{int()} work on thousands of digits.
_MAX_STAMP_DIGITS = 12


def rest_expiry(username: str, separator: str = ":") -> int | None:
    """
    The expiry a TURN REST API username starts with, or C{None} if it does
    not start with one (C{str.isdigit} alone accepts "²", which C{int}
    refuses).
    """
    stamp = username.partition(separator)[0]
    if stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_STAMP_DIGITS:
        return int(stamp)
    return None


@implementer(ICredentialSource)
class RestApiCredentials:
    """
    TURN REST API ephemeral credentials, as coturn's C{use-auth-secret}:
    the username is C{<unix expiry>[:<user>]}, the password
    C{base64(HMAC-SHA1(secret, username))}, or with C{hmac_name} another of
    L{REST_HMACS} (one for every secret: the issuer and the server agree
    on it as they agree on the secret).

    A username whose timestamp has passed, or that does not start with
    ASCII digits, has no key, so it is rejected like an unknown user; the
    key is derived all the same, so a malformed or expired name costs what
    a valid one does.  USERHASH cannot be supported: the server cannot
    recover an ephemeral name from its hash.

    Several secrets may be valid at once (coturn keeps them in its
    database), so that a secret can be rotated with overlap: names signed
    with any of them are accepted.
    """

    def __init__(
        self,
        secret: str | bytes | Sequence[str | bytes],
        separator: str = ":",
        hmac_name: str = "sha1",
    ) -> None:
        given = [secret] if isinstance(secret, (str, bytes)) else list(secret)
        if not given:
            raise CredentialError("at least one REST API secret is needed")
        if hmac_name not in REST_HMACS:
            raise CredentialError(f"unknown REST API HMAC {hmac_name!r}")
        self._secrets = [s.encode("utf-8") if isinstance(s, str) else s for s in given]
        self._separator = separator
        self.hmac_name = hmac_name

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Sequence[bytes]:
        expiry = rest_expiry(username, self._separator)
        keys = [
            long_term_key(
                username, realm, rest_api_password(secret, username, self.hmac_name), algorithm
            )
            for secret in self._secrets
        ]
        return keys if expiry is not None and expiry > now else ()

    def key_for(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """
        The key under the first secret, or C{None}.
        """
        keys = self.keys_for(username, realm, algorithm, now)
        return keys[0] if keys else None

    def username_for_hash(self, hashed: bytes, realm: str) -> str | None:
        return None


@implementer(IAskingSource)
class CredentialChain:
    """
    Several sources consulted in order: static users and the REST secret
    served by one server at the same time.

    Every source is asked every time, and every key found is a candidate: a
    static user answered without asking the REST source would be told
    apart, by time, from a name that is nobody's.
    """

    def __init__(self, sources: Sequence[_KeySource]) -> None:
        self.sources = list(sources)

    def keys_for(self, username: str, realm: str, algorithm: int, now: float) -> Any:
        """
        Every source's keys; a Deferred of them if any source answers
        with one (a database behind a L{txturn.auth.cache}).
        """
        return self._gather(
            [source.keys_for(username, realm, algorithm, now) for source in self.sources]
        )

    def keys_for_source(
        self, username: str, realm: str, algorithm: int, now: float, source: str
    ) -> Any:
        """
        C{keys_for}, the sources that ask a backend told who is asking.
        """
        return self._gather(
            [
                s.keys_for_source(username, realm, algorithm, now, source)
                if IAskingSource.providedBy(s)
                else s.keys_for(username, realm, algorithm, now)
                for s in self.sources
            ]
        )

    def _gather(self, answers: list[Any]) -> Any:
        found: list[bytes] = []
        for keys in answers:
            # A list or tuple is an answer; anything else is a Deferred
            # (told apart without isinstance(..., Deferred), an ABC check
            # that costs more than the rest of this loop).
            if not isinstance(keys, (list, tuple)):
                break
            found += keys
        else:
            return found
        return defer.DeferredList(
            [a if isinstance(a, defer.Deferred) else defer.succeed(a) for a in answers],
            consumeErrors=True,
        ).addCallback(_gathered)

    def key_for(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """
        The first key any synchronous source has, or C{None}.
        """
        keys = self.keys_for(username, realm, algorithm, now)
        if isinstance(keys, defer.Deferred):
            keys.addErrback(lambda _: None)
            return None
        return keys[0] if keys else None

    def username_for_hash(self, hashed: bytes, realm: str) -> Any:
        """
        The first name a source finds, asking them in order; a Deferred
        from the first source that answers with one.
        """
        return self.username_for_hash_source(hashed, realm, None)

    def username_for_hash_source(self, hashed: bytes, realm: str, source: str | None) -> Any:
        """
        C{username_for_hash}, the sources that ask a backend told who is
        asking (when C{source} is given).
        """
        for index, each in enumerate(self.sources):
            if source is not None and IAskingSource.providedBy(each):
                name = each.username_for_hash_source(hashed, realm, source)
            else:
                name = each.username_for_hash(hashed, realm)
            if isinstance(name, defer.Deferred):
                rest = CredentialChain(self.sources[index + 1 :])
                return _or_else(name, rest, hashed, realm, source)
            if name is not None:
                return name
        return None


def _gathered(results: list[tuple[bool, Any]]) -> Any:
    """
    The keys every source found; a source that failed (a database that
    is down) counts only when no other source has a key, so static users
    and REST credentials keep working through a database's outage.
    """
    found: list[bytes] = []
    failure: Failure | None = None
    stale = False
    for succeeded, value in results:
        if succeeded:
            found += value
            stale = stale or isinstance(value, StaleKeys)
        elif failure is None:
            failure = value
    if not found and failure is not None:
        return failure
    # Keys from a stand-in may grant, not deny: so may the whole answer
    # when any source is away (its user could be the one asking).
    return StaleKeys(found) if stale or failure is not None else found


def _or_else(
    name: defer.Deferred[Any],
    rest: CredentialChain,
    hashed: bytes,
    realm: str,
    source: str | None,
) -> defer.Deferred[Any]:
    """
    The name C{name} finds, or else the one C{rest} of the chain knows.
    """

    def failed(failure: Failure) -> Any:
        # A source that is down hides nobody the others know.
        after = defer.maybeDeferred(rest.username_for_hash_source, hashed, realm, source)
        return after.addCallback(lambda found: failure if found is None else found)

    return name.addCallbacks(
        lambda found: (
            found if found is not None else rest.username_for_hash_source(hashed, realm, source)
        ),
        failed,
    )
