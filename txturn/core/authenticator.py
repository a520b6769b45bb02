# -*- test-case-name: tests.test_server -*-
"""
The long-term credential check of RFC 8489 section 9.2.4, as a decision:
a request is either authenticated (an L{AuthContext}) or refused with the
answer to send (400, 401 with a challenge, 438 with a fresh nonce), or
refused in silence when its source has had its share of challenges.

Nothing here sends anything or keeps state per client: nonces are
stateless, the challenge limiter and the set of failures already logged
are bounded.
"""

from __future__ import annotations

import collections
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txturn.auth.cache import CredentialsUnavailable
from txturn.auth.credentials import (
    CredentialError,
    IAskingSource,
    ICredentialSource,
    NonceManager,
    StaleKeys,
    opaque_string,
    rest_expiry,
)
from txturn.auth.policy import NO_POLICY, CredentialPolicy, PolicyReader
from txturn.auth.revocations import Revocations
from txturn.core.counters import Counter
from txturn.core.events import AuthenticationFailed
from txturn.core.interfaces import Address
from txturn.util.rate import SourceLimiter
from txturn.wire.stun import Attr, Message, PasswordAlgorithm, error_response

#: What the server offers in PASSWORD-ALGORITHMS, most preferred first.
PASSWORD_ALGORITHMS = [(PasswordAlgorithm.SHA256, b""), (PasswordAlgorithm.MD5, b"")]

#: Failed nonces remembered, so each failure is logged once.
_LOGGED_FAILURES = 4096


@dataclass(frozen=True)
class AuthContext:
    """
    Who sent an authenticated request, and how to sign the answer.
    """

    username: str
    key: bytes
    sha256: bool
    #: What the credential itself restricts (L{txturn.auth.policy}).
    policy: CredentialPolicy = NO_POLICY


class Authenticator:
    """
    Checks requests against an L{ICredentialSource}.

    @ivar challenges: the per-source limit on 401 and 438 answers.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        credentials: ICredentialSource,
        realm: str,
        nonces: NonceManager,
        challenges: SourceLimiter,
        count: Callable[[Counter], None],
        emit: Callable[[object], None] | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self._reactor = reactor
        self.credentials = credentials
        self.realm = realm
        self.nonces = nonces
        self.challenges = challenges
        self._count = count
        self._emit = emit
        self._logged_failures: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._dummy_key = secrets.token_bytes(16)
        #: Names refused before their time (L{txturn.auth.revocations}).
        self.revocations = revocations if revocations is not None else Revocations()
        self.policies = PolicyReader()

    def check(self, request: Message, address: Address) -> Any:
        """
        An L{AuthContext} for an authenticated request; otherwise the
        response to send, or C{None} to stay silent.  When the credential
        source has to wait (a database), a Deferred of one of these.

        An unknown user is checked against a random key, so it costs the
        same and gets the same 401 as a wrong password.
        """
        if request.integrity_offset is None and request.integrity_sha256_offset is None:
            return self._challenge(request, address, 401)
        username = request.get(Attr.USERNAME)
        hashed = request.get(Attr.USERHASH)
        realm = request.get(Attr.REALM)
        nonce = request.get(Attr.NONCE)
        if (username is None and hashed is None) or realm is None or nonce is None:
            return error_response(request, 400, "Missing credentials")
        if username is not None and not _opaque(username):
            # RFC 8489 section 14.3: USERNAME is sent in the OpaqueString
            # profile, which has no control characters; nor do we take
            # format characters (a right-to-left override), which would
            # reach logs and terminals as a name.
            return error_response(request, 400, "USERNAME is not an OpaqueString")
        algorithm = _algorithm(request)
        if algorithm is None:
            return error_response(request, 400, "Password algorithm mismatch")
        now = self._reactor.seconds()
        if not self.nonces.is_valid(nonce, address[0], now):
            self._failed(address, username, nonce, "stale nonce")
            return self._challenge(request, address, 438)
        try:
            if username is None:
                if IAskingSource.providedBy(self.credentials):
                    found = self.credentials.username_for_hash_source(hashed, realm, address[0])
                else:
                    found = self.credentials.username_for_hash(hashed, realm)
                if isinstance(found, defer.Deferred):
                    found.addCallback(self._lookup, request, address, nonce, realm, algorithm, now)
                    return found.addErrback(self._unavailable, request)
                username = found
            return self._lookup(username, request, address, nonce, realm, algorithm, now)
        except CredentialsUnavailable:
            return self._server_error(request)

    def _lookup(
        self,
        username: str | None,
        request: Message,
        address: Address,
        nonce: str,
        realm: str,
        algorithm: int,
        now: float,
    ) -> Any:
        """
        Look up the keys of C{username} (C{None}: a USERHASH nobody has),
        and decide now or when they come.
        """
        keys: Any = ()
        if username is not None:
            try:
                if IAskingSource.providedBy(self.credentials):
                    keys = self.credentials.keys_for_source(
                        username, realm, algorithm, now, address[0]
                    )
                else:
                    keys = self.credentials.keys_for(username, realm, algorithm, now)
            except CredentialError:
                keys = ()  # a realm or name OpaqueString refuses: unknown user
        if isinstance(keys, (list, tuple)):
            return self._decide(keys, username, request, address, nonce, now)
        keys.addCallback(self._decide, username, request, address, nonce, now)
        return keys.addErrback(self._unavailable, request)

    def _decide(
        self,
        keys: Sequence[bytes],
        username: str | None,
        request: Message,
        address: Address,
        nonce: str,
        now: float,
    ) -> AuthContext | Message | None:
        key = _signing_key(request, keys or (self._dummy_key,))
        if key is None and isinstance(keys, StaleKeys):
            # A source is away: a wrong key for a name it knew is answered
            # as a name it never knew would be, not with a telling 401.
            return self._server_error(request)
        if not keys or key is None:
            self._failed(address, username, nonce, _failure(bool(keys), username, now))
            return self._challenge(request, address, 401)
        assert username is not None
        if self.revocations.is_revoked(username, now):
            self._failed(address, username, nonce, "revoked credential")
            return self._challenge(request, address, 401)
        try:
            policy = self.policies.policy_of(username)
        except CredentialError:
            # Signed by the secret, so minted by the operator's own code:
            # one bounded reason (a metrics label), not the parser's words.
            self._failed(address, username, nonce, "bad credential policy")
            return self._challenge(request, address, 401)
        # The nonce was bound to this address: the source receives what we
        # send it, so it has earned a larger share of challenges.
        self.challenges.prove(address[0])
        return AuthContext(username, key, request.integrity_sha256_offset is not None, policy)

    def _unavailable(self, failure: Failure, request: Message) -> Message | Failure:
        if not isinstance(failure.value, CredentialsUnavailable):
            return failure
        return self._server_error(request)

    def _server_error(self, request: Message) -> Message:
        """
        The credential source could not say: 500, so the client neither
        waits forever nor takes it for a wrong password.
        """
        self._count(Counter.CREDENTIALS_UNAVAILABLE)
        return error_response(request, 500, "Credentials unavailable")

    def _challenge(self, request: Message, address: Address, code: int) -> Message | None:
        """
        A 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS,
        unless this source has had its share of them.
        """
        if not self.challenges.allow(address[0]):
            self._count(Counter.CHALLENGES_LIMITED)
            return None
        response = error_response(request, code)
        response.add(Attr.REALM, self.realm)
        response.add(Attr.NONCE, self.nonces.issue(address[0], self._reactor.seconds()))
        response.add(Attr.PASSWORD_ALGORITHMS, PASSWORD_ALGORITHMS)
        return response

    def _failed(self, address: Address, username: str | None, nonce: str, reason: str) -> None:
        """
        Announce a failed authentication once per nonce, never per packet.
        """
        if nonce in self._logged_failures or self._emit is None:
            return
        self._logged_failures[nonce] = None
        if len(self._logged_failures) > _LOGGED_FAILURES:
            self._logged_failures.popitem(last=False)
        self._emit(AuthenticationFailed(address, username, reason))


def _opaque(username: str) -> bool:
    """
    Whether C{username} is as the OpaqueString profile leaves a string
    (RFC 8265): no control or format characters, non-ASCII spaces mapped,
    NFC.
    """
    if username.isascii():
        return username.isprintable()
    try:
        if opaque_string(username) != username:
            return False
    except CredentialError:
        return False
    return not any(unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in username)


def _algorithm(request: Message) -> int | None:
    """
    The password algorithm a request uses (RFC 8489 section 9.2.4): MD5
    unless it echoes our PASSWORD-ALGORITHMS and picks one of them;
    C{None} for a mismatch (400).
    """
    algorithms = request.get(Attr.PASSWORD_ALGORITHMS)
    chosen = request.get(Attr.PASSWORD_ALGORITHM)
    if algorithms is None and chosen is None:
        return int(PasswordAlgorithm.MD5)
    if algorithms != PASSWORD_ALGORITHMS or chosen is None or chosen not in algorithms:
        return None
    return int(chosen[0])


def _signing_key(request: Message, candidates: Sequence[bytes]) -> bytes | None:
    """
    The candidate key the request's integrity checks with, or C{None}.
    Every candidate is tried, so the time taken does not say which one
    (if any) matched.
    """
    found = None
    for key in candidates:
        if request.check_integrity(key) and found is None:
            found = key
    return found


def _failure(known: bool, username: str | None, now: float) -> str:
    """
    Why an authentication failed, for the event: the user exists and the
    integrity is wrong, or a REST name is past its time, or nobody has
    that name.
    """
    if known:
        return "bad integrity"
    expiry = rest_expiry(username) if username is not None else None
    if expiry is not None and expiry <= now:
        return "expired credential"
    return "unknown user"
