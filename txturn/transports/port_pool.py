# -*- test-case-name: tests.test_service -*-
"""
The relay addresses and port range that UDP and TCP relays are opened in.
"""

from __future__ import annotations

import random
from typing import Iterator, Mapping, Sequence

from txturn.core.interfaces import Address, RelayUnavailable
from txturn.wire.stun import family_of


class PortPool:
    """
    Relay addresses by family, the port range, and the ports in use.

    Ports are drawn at random (RFC 8656 asks for unpredictable relayed
    ports); the set in use is kept so an exhausted range is known at once
    and answered 508 without a scan.

    @param external: relay address -> the public address a 1:1 NAT maps
        it to, advertised to clients instead.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        min_port: int = 49152,
        max_port: int = 65535,
        external: Mapping[str, str] | None = None,
        attempts: int = 64,
    ) -> None:
        self._addresses: dict[int, list[str]] = {}
        for host in addresses:
            self._addresses.setdefault(family_of(host), []).append(host)
        self.families = frozenset(self._addresses)
        self.min_port = min_port
        self.max_port = max_port
        self._external = dict(external or {})
        self._attempts = attempts
        self._in_use: dict[str, set[int]] = {h: set() for h in addresses}
        self._random = random.SystemRandom()

    def host(self, family: int, ports_needed: int = 1) -> str:
        """
        A relay address of C{family} with C{ports_needed} ports free.

        @raise RelayUnavailable: for no address of that family (440) or a
            full range (508).
        """
        hosts = self._addresses.get(family)
        if not hosts:
            raise RelayUnavailable("no relay address of that family", family_unsupported=True)
        host = hosts[self._random.randrange(len(hosts))]
        if len(self._in_use[host]) + ports_needed > self.max_port - self.min_port + 1:
            raise RelayUnavailable(self.exhausted(host))
        return host

    def exhausted(self, host: str) -> str:
        """
        What to say when no port of C{host} could be had.
        """
        return (
            f"relay ports {self.min_port}-{self.max_port} of {host} exhausted "
            f"({len(self._in_use[host])} in use here, the rest by other programs); "
            "widen --min-port/--max-port"
        )

    def candidates(self, host: str, even: bool = False) -> Iterator[int]:
        """
        Random free ports of C{host} to try binding, a bounded number.
        """
        size = self.max_port - self.min_port + 1
        for _ in range(self._attempts):
            port = self.min_port + self._random.randrange(size)
            if even:
                port &= ~1
                if port < self.min_port or port + 1 > self.max_port:
                    continue
            if port not in self._in_use[host]:
                yield port

    def take(self, host: str, port: int) -> None:
        self._in_use[host].add(port)

    def release(self, address: Address) -> None:
        self._in_use.get(address[0], set()).discard(address[1])

    def free(self) -> dict[str, int]:
        """
        Relay address -> ports of the range not in use, for metrics.
        """
        size = self.max_port - self.min_port + 1
        return {host: size - len(used) for host, used in self._in_use.items()}

    def public(self, host: str) -> str:
        """
        The address clients are told for relay address C{host}.
        """
        return self._external.get(host, host)
