# -*- test-case-name: tests.test_credential_policy -*-
"""
TURN REST credentials that carry their own restrictions.

A plain TURN REST username is C{<expiry>:<user>}; its password is
C{base64(HMAC-SHA1(secret, username))}.  A I{policy-carrying} username
adds a third field::

    <expiry>:<user>:<policy>

where C{<policy>} is the unpadded base64url encoding of a JSON object
with any of:

C{peers}
    a list of CIDR ranges (C{"10.1.0.0/16"}, C{"2001:db8::/32"}): the only
    peers this credential may reach;
C{allocations}
    the most allocations this credential may hold at once;
C{bps}
    the most bytes per second each of its allocations may relay.

The same HMAC signs the whole name, so a changed policy is a different
name with a different password: tampering fails authentication like a
wrong password.  A restriction only ever narrows what the server's own
configuration allows (its peer policy, C{--user-quota}, C{--max-bps}).

A third field that starts with C{ey} (the base64url of C{{"}) is a
policy and must parse, or the credential is refused: a mistake in the
web application that mints credentials then fails closed instead of
widening them.  Any other third field is part of the user, as before.
"""

from __future__ import annotations

import base64
import binascii
import collections
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from txturn.auth.credentials import CredentialError, rest_api_password, rest_expiry

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where a policy field starts: the base64url of C{{"} and a key's first
#: letter, as every JSON encoder writes an object (C{"ey"} alone took a
#: REST user part such as C{eyal} for a malformed policy).
_POLICY_MARK = "eyJ"
#: The largest number a policy may carry: more is no limit, and a number
#: of 309 digits made the bandwidth limit fail on every packet.
_MAX_NUMBER = 10**12
#: The longest policy field read: a username is at most 509 bytes of
#: STUN, so this is no limit on honest names and a bound on the work.
_MAX_POLICY_CHARS = 512
#: Ranges a policy may list.
_MAX_PEERS = 32
#: Parsed policies remembered, so a request costs a dict lookup.
_CACHE = 1024


@dataclass(frozen=True)
class CredentialPolicy:
    """
    What one credential may do, beyond the server's own limits.

    @ivar peers: the ranges its peers must be in, or C{None} for any
        the server allows.
    @ivar allocations: its allocations at once, or C{None}.
    @ivar bps: bytes per second per allocation, or C{None}.
    """

    peers: tuple[Network, ...] | None = None
    allocations: int | None = None
    bps: int | None = None
    #: host -> allowed, so a Send indication relayed in Python costs a
    #: dict lookup; bounded, as peers are the client's choice.
    _decided: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def allows(self, host: str) -> bool:
        """
        Whether C{host}, a canonical peer address, is in the credential's
        ranges.
        """
        if self.peers is None:
            return True
        decided = self._decided.get(host)
        if decided is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return False
            decided = any(address in network for network in self.peers)
            if len(self._decided) >= _CACHE:
                self._decided.clear()
            self._decided[host] = decided
        return decided

    def narrow(self, limit: int) -> int:
        """
        The smaller of C{limit} (0 for none) and the credential's
        allocations.
        """
        if self.allocations is None:
            return limit
        return self.allocations if not limit else min(limit, self.allocations)

    def narrow_bps(self, limit: int) -> int:
        """
        The smaller of C{limit} (0 for none) and the credential's bps.
        """
        if self.bps is None:
            return limit
        return self.bps if not limit else min(limit, self.bps)

    def encode(self) -> str:
        """
        The policy field of a username.
        """
        body: dict[str, Any] = {}
        if self.peers is not None:
            body["peers"] = [str(n) for n in self.peers]
        if self.allocations is not None:
            body["allocations"] = self.allocations
        if self.bps is not None:
            body["bps"] = self.bps
        return _encode(body)


#: What a name without a policy field carries.
NO_POLICY = CredentialPolicy()


def parse_policy(field: str) -> CredentialPolicy:
    """
    The policy a username's third field encodes.

    @raise CredentialError: for anything but a well-formed policy (an
        unknown key included: it could be a restriction this server does
        not know, so it is refused rather than ignored).
    """
    if len(field) > _MAX_POLICY_CHARS:
        raise CredentialError("policy too long")
    try:
        raw = base64.urlsafe_b64decode(field + "=" * (-len(field) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CredentialError("policy is not base64url JSON") from None
    if not isinstance(body, dict):
        raise CredentialError("policy is not a JSON object")
    unknown = set(body) - {"peers", "allocations", "bps"}
    if unknown:
        raise CredentialError(f"unknown policy keys: {', '.join(sorted(unknown))}")
    return CredentialPolicy(
        peers=_peers(body["peers"]) if "peers" in body else None,
        allocations=_positive(body, "allocations"),
        bps=_positive(body, "bps"),
    )


def _peers(value: object) -> tuple[Network, ...]:
    if not isinstance(value, list) or len(value) > _MAX_PEERS:
        raise CredentialError(f"peers must be a list of at most {_MAX_PEERS} ranges")
    networks = []
    for item in value:
        if not isinstance(item, str):
            raise CredentialError("a peer range must be a string")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise CredentialError(f"bad peer range {item!r}") from None
    return tuple(networks)


def _positive(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_NUMBER:
        raise CredentialError(f"{key} must be a whole number from 1 to {_MAX_NUMBER}")
    return value


class PolicyReader:
    """
    Finds the policy in a username, remembering the last few parsed.
    """

    def __init__(self, separator: str = ":") -> None:
        self._separator = separator
        self._cache: collections.OrderedDict[str, CredentialPolicy] = collections.OrderedDict()

    def policy_of(self, username: str) -> CredentialPolicy:
        """
        The restrictions C{username} carries: L{NO_POLICY} for a static
        user or a plain REST name.

        @raise CredentialError: for a policy field that does not parse.
        """
        if username.count(self._separator) < 2 or rest_expiry(username, self._separator) is None:
            return NO_POLICY
        parts = username.split(self._separator, 2)
        if len(parts) < 3 or not parts[2].startswith(_POLICY_MARK):
            return NO_POLICY
        field = parts[2]
        cache = self._cache
        found = cache.get(field)
        if found is None:
            found = parse_policy(field)
            cache[field] = found
            if len(cache) > _CACHE:
                cache.popitem(last=False)
        return found


def mint_credential(
    secret: str | bytes,
    user: str,
    expiry: int,
    *,
    peers: Sequence[str] | None = None,
    allocations: int | None = None,
    bps: int | None = None,
    separator: str = ":",
    hmac_name: str = "sha1",
) -> tuple[str, str]:
    """
    A TURN REST username and password, good until C{expiry} (Unix time),
    carrying the restrictions given (none: a plain REST credential); the
    password made with C{hmac_name} (the server's C{--rest-api-hmac}).

    @raise CredentialError: for a bad range, a count below 1, or a
        C{user} containing the separator.
    """
    if separator in user:
        raise CredentialError(f"the user must not contain {separator!r}")
    username = f"{int(expiry)}{separator}{user}"
    if peers is not None or allocations is not None or bps is not None:
        body: dict[str, Any] = {}
        if peers is not None:
            body["peers"] = list(peers)
        if allocations is not None:
            body["allocations"] = allocations
        if bps is not None:
            body["bps"] = bps
        field = _encode(body)
        parse_policy(field)  # refuse here what a server would refuse
        username += separator + field
    return username, rest_api_password(secret, username, hmac_name)


def _encode(body: dict[str, Any]) -> str:
    text = json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")
