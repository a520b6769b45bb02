"""
Embedding txturn in a Twisted application: the TURN server is one more
service in the host's tree, sharing its reactor and its lifecycle.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceCollection

from txturn.auth.credentials import CredentialChain, RestApiCredentials, StaticCredentials
from txturn.core.config import ServerConfig
from txturn.core.peer_policy import PeerPolicy
from txturn.service import TurnService


def add_turn_server(
    reactor: Any,
    parent: IServiceCollection,
    listen: list[tuple[str, int]],
    relay_addresses: list[str],
) -> TurnService:
    realm = "example.org"
    credentials = CredentialChain(
        [
            # Long-lived accounts, e.g. loaded from the host's own database.
            StaticCredentials(realm, {"alice": "correct horse battery staple"}),
            # Short-lived credentials the host's web backend hands out.
            RestApiCredentials("shared secret with the web backend"),
        ]
    )
    turn = TurnService(
        reactor,
        credentials,
        listen,
        relay_addresses,
        policy=PeerPolicy(),
        config=ServerConfig(realm=realm, software=None),
    )
    turn.setServiceParent(parent)
    return turn
