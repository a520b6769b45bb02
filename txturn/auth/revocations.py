# -*- test-case-name: tests.test_revocations -*-
"""
Revoked credentials: names refused before their time, as
C{txturn-admin revoke} publishes them through Redis to every server of a
fleet (L{txturn.fleet.sharing}).

A revoked name matches a username exactly, or the user of a TURN REST
name (C{<expiry>:<user>[:<policy>]}): revoking C{alice} refuses every
credential minted for her, revoking C{1700000000:alice} only that one.
Each revocation lasts until a Unix time, so the set cleans itself.
Pure: time comes in as an argument.
"""

from __future__ import annotations

from typing import Mapping

from txturn.auth.credentials import rest_expiry

#: The end of a revocation given no end: the year 9999.
FOREVER = 253402300799.0

#: Revocations kept at most; beyond it the one ending first goes.  A
#: revocation of a REST credential ends when the credential would have.
MAX_REVOCATIONS = 100_000


def rest_user(username: str, separator: str = ":") -> str | None:
    """
    The user of a TURN REST name, or C{None} for any other name.
    """
    if rest_expiry(username, separator) is None:
        return None
    parts = username.split(separator, 2)
    return parts[1] if len(parts) > 1 else None


class Revocations:
    """
    The names refused until a time.
    """

    def __init__(self, separator: str = ":") -> None:
        self._until: dict[str, float] = {}
        self._separator = separator

    def __len__(self) -> int:
        return len(self._until)

    def revoke(self, name: str, until: float) -> None:
        """
        Refuse C{name} until C{until} (Unix time).
        """
        self._until[name] = until
        if len(self._until) > MAX_REVOCATIONS:
            del self._until[min(self._until, key=self._until.__getitem__)]

    def restore(self, name: str) -> None:
        self._until.pop(name, None)

    def replace(self, entries: Mapping[str, float], now: float) -> None:
        """
        Hold exactly C{entries} (what the shared store holds), less those
        already over.
        """
        self._until = {name: until for name, until in entries.items() if until > now}

    def is_revoked(self, username: str, now: float) -> bool:
        """
        Whether C{username} is refused at C{now}: one dict lookup when
        nothing is revoked, two or three otherwise.
        """
        until_of = self._until
        if not until_of:
            return False
        name: str | None = username
        until = until_of.get(username)
        if until is None:
            name = rest_user(username, self._separator)
            until = until_of.get(name) if name is not None else None
        if until is None or name is None:
            return False
        if until <= now:
            del until_of[name]
            return False
        return True

    def matches(self, name: str, username: str) -> bool:
        """
        Whether revoking C{name} refuses C{username}.
        """
        return username == name or rest_user(username, self._separator) == name
