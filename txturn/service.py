# -*- test-case-name: tests.test_service -*-
"""
L{TurnService}: the TURN server as a Twisted service, built from objects.

This is the library entry point.  C{twistd turn} builds one from command
line strings (L{txturn.tap}); a host application builds one from its own
reactor, credential source and policy and adds it to its service tree.
Listening sockets are bound in C{privilegedStartService}, so a bind
failure stops startup instead of leaving a half-started server, and so
twistd can still bind port 3478 before dropping privileges.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from txturn.auth import ICredentialSource
from txturn.policy import PeerPolicy
from txturn.relay import UdpRelayAllocator
from txturn.server import ServerConfig, TurnServer
from txturn.udp import TurnDatagramProtocol, bind_udp


def ice_servers_snippet(hosts: Sequence[str], port: int, username: str, password: str) -> str:
    """
    The C{RTCConfiguration.iceServers} JSON a WebRTC page pastes in.
    """
    urls = [f"turn:{'[' + h + ']' if ':' in h else h}:{port}?transport=udp" for h in hosts]
    return json.dumps(
        {"iceServers": [{"urls": urls, "username": username, "credential": password}]}
    )


class TurnService(service.MultiService):
    """
    A TURN server listening on UDP.

    @param reactor: provides C{IReactorTime}, C{IReactorUDP} and
        C{IReactorSocket}; every timer and socket goes through it.
    @param credentials: an L{ICredentialSource}.
    @param listen: C{(host, port)} pairs to listen on.
    @param relay_addresses: the addresses relay sockets are opened on.
    @param external_ips: relay address -> the public address a 1:1 NAT maps
        it to, which clients are told instead (coturn's C{external-ip}).
    @param announce: C{(username, password)} to log once at startup with a
        ready-to-paste C{iceServers} snippet, for a server whose user was
        generated rather than configured.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        credentials: ICredentialSource,
        listen: Sequence[tuple[str, int]],
        relay_addresses: Sequence[str],
        *,
        min_port: int = 49152,
        max_port: int = 65535,
        policy: PeerPolicy | None = None,
        config: ServerConfig | None = None,
        announce: tuple[str, str] | None = None,
        external_ips: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._reactor = reactor
        self.listen = list(listen)
        self.relay_addresses = list(relay_addresses)
        self.relays = UdpRelayAllocator(
            reactor, relay_addresses, min_port, max_port, external=external_ips
        )
        self.server = TurnServer(reactor, credentials, self.relays, policy, config)
        self._announce = announce
        self.ports: list[Any] = []

    def privilegedStartService(self) -> None:
        self._bind()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _bind(self) -> None:
        """
        Bind every listener, or none: on a failure the ones already bound
        are closed and the error propagates, so twistd exits with it.
        """
        if self.ports:
            return
        try:
            for host, port in self.listen:
                protocol = TurnDatagramProtocol(self.server)
                try:
                    self.ports.append(bind_udp(self._reactor, host, port, protocol))
                except OSError as e:
                    raise RuntimeError(
                        f"cannot listen on UDP {host} port {port}: {e.strerror}"
                    ) from e
        except BaseException:
            for bound in self.ports:
                bound.stopListening()
            self.ports = []
            raise

    def startService(self) -> None:
        # twistd binds in privilegedStartService; "twist" calls only this.
        self._bind()
        super().startService()  # type: ignore[no-untyped-call]
        for p in self.ports:
            host = p.getHost()
            self.log.info(
                "TURN listening on UDP {host} port {port}", host=host.host, port=host.port
            )
        self.log.info(
            "Relaying on {addresses}, ports {min_port}-{max_port}",
            addresses=", ".join(self.relay_addresses),
            min_port=self.relays.min_port,
            max_port=self.relays.max_port,
        )
        if self._announce is not None:
            username, password = self._announce
            port = self.ports[0].getHost().port if self.ports else 3478
            # Clients reach the server where it listens; a wildcard listener
            # is reached on the host's own addresses, which relays use too.
            hosts = [h for h, _ in self.listen if h not in ("0.0.0.0", "::")]
            self.log.warn(
                "No credentials configured: generated user {username} with "
                "password {password}. Use it in a WebRTC page as:\n{snippet}",
                username=username,
                password=password,
                snippet=ice_servers_snippet(
                    hosts or self.relay_addresses, port, username, password
                ),
            )

    def stopService(self) -> defer.Deferred[Any]:
        """
        Delete every allocation (cancelling its timers) and close every
        port; the Deferred fires once all of them are closed.
        """
        parent_stopped = super().stopService()  # type: ignore[no-untyped-call]
        closing = [self.server.shutdown()]
        closing += [defer.maybeDeferred(p.stopListening) for p in self.ports]
        self.ports = []
        if isinstance(parent_stopped, defer.Deferred):
            closing.append(parent_stopped)
        return defer.gatherResults(closing, consumeErrors=True)
