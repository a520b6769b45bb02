# -*- test-case-name: tests.test_workers -*-
"""
What makes a L{TurnService} one worker of C{--workers N} rather than the
whole server: a L{Shard}, given to its constructor.

The service stays the library's one-process service; with a shard it
adopts the listening sockets the supervisor bound instead of binding its
own, relays on its own slice of the port range, signs nonces with the
key every worker shares, counts quotas in the places every worker
shares, hands RFC 6062 data connections to the worker that owns them,
and takes its share of the per-source challenge rate.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from txturn.core.interfaces import IConnectionHandoff, IReservationBroker
from txturn.core.places import IPlaces

if TYPE_CHECKING:
    from txturn.core.server import ServerConfig


@dataclass(frozen=True)
class Shard:
    """
    Worker C{index} of C{count}.

    @ivar listeners: (transport, host, port) -> this worker's socket of
        the listener's C{SO_REUSEPORT} group, bound by the supervisor.
    """

    index: int
    count: int
    places: IPlaces
    nonce_secret: bytes
    listeners: Mapping[tuple[str, str, int], socket.socket] = field(default_factory=dict)
    handoff: IConnectionHandoff | None = None
    #: Makes the broker that fetches another worker's EVEN-PORT
    #: reservations, given what adopts a relay socket here.
    reservation_broker: Callable[[Callable[..., Any]], IReservationBroker] | None = None
    #: The XDP program's maps the supervisor loaded (C{--xdp}), by name ->
    #: descriptor, and how it is attached, for the log.
    xdp_maps: Mapping[str, int] | None = None
    xdp_mode: str = ""

    def relay_ports(self, min_port: int, max_port: int) -> tuple[int, int]:
        """
        This worker's slice of the relay port range: the workers' slices
        are disjoint, so a peer's datagram reaches the worker that owns
        the relay socket.  Slices have an even size and start, so EVEN-PORT
        pairs never straddle two workers.

        @raise ValueError: if the range is too small for C{count} slices.
        """
        first = min_port + (min_port % 2)
        size = (max_port - first + 1) // self.count // 2 * 2
        if size < 2:
            raise ValueError(
                f"relay ports {min_port}-{max_port} are too few for {self.count} workers"
            )
        low = first + self.index * size
        high = max_port if self.index == self.count - 1 else low + size - 1
        return low, high

    def share(self, config: ServerConfig) -> ServerConfig:
        """
        C{config} as one worker applies it: the challenge rate and bursts
        are per source on the whole server, and a source's datagrams from
        many ports are spread over the workers, so each worker allows its
        share.
        """
        count = self.count
        return replace(
            config,
            challenge_rate=config.challenge_rate / count,
            challenge_burst=config.challenge_burst / count,
            challenge_proven_burst=config.challenge_proven_burst / count,
        )


def bind_group(
    listeners: list[tuple[str, str, int]], count: int
) -> list[dict[tuple[str, str, int], socket.socket]]:
    """
    C{count} sockets per listener, one per worker, bound with
    C{SO_REUSEPORT} to the same address (to the port the first one was
    given, for port 0).  The supervisor keeps them open for its whole
    life, so the kernel's groups never change and a restarting worker
    never moves the other workers' clients (C{bench/reuseport.py}).
    Returns one mapping per worker, keyed by the listener as asked for.
    """
    from txturn.transports.sockets import listening_socket

    per_worker: list[dict[tuple[str, str, int], socket.socket]] = [{} for _ in range(count)]
    try:
        for name, host, port in listeners:
            bound_port = port
            for index in range(count):
                sock = listening_socket(
                    host, bound_port, datagram=name in ("udp", "dtls"), reuse_port=True
                )
                per_worker[index][(name, host, port)] = sock
                bound_port = sock.getsockname()[1]
    except BaseException:
        for sockets in per_worker:
            for sock in sockets.values():
                sock.close()
        raise
    return per_worker
