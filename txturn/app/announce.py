# -*- test-case-name: tests.test_service -*-
"""
What a server with a generated user says once at start-up: the user, and
the C{iceServers} a WebRTC page pastes in, with a URL for every listener
a browser can use, named as clients reach it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

#: Listening on one of these means listening on every address of the host.
WILDCARDS = frozenset(["0.0.0.0", "::"])


def ice_servers_snippet(urls: Sequence[str], username: str, password: str) -> str:
    """
    The C{RTCConfiguration.iceServers} JSON a WebRTC page pastes in.
    """
    return json.dumps(
        {"iceServers": [{"urls": urls, "username": username, "credential": password}]}
    )


def ice_urls(
    ports: Sequence[tuple[str, Any]],
    relay_addresses: Sequence[str],
    external: Mapping[str, str],
    server_name: str | None,
) -> list[str]:
    """
    C{turn:}/C{turns:} URLs for every listener a browser can use (all
    but DTLS), named as clients reach them: the C{server_name} when
    there is one (a C{turns:} client checks the certificate for it);
    else the listening address, or for a wildcard listener the relay
    addresses; each as its C{external} public address behind a 1:1 NAT.

    @param ports: (transport name, listening port) of the bound listeners.
    """
    urls = []
    for name, p in ports:
        if name in ("dtls", "metrics"):
            continue
        bound = p.getHost()
        hosts = [bound.host]
        if bound.host in WILDCARDS:
            hosts = [h for h in relay_addresses if (":" in h) == (":" in bound.host)]
        hosts = [external.get(h, h) for h in hosts]
        if server_name:
            hosts = [server_name]
        scheme = "turns" if name == "tls" else "turn"
        transport = "udp" if name == "udp" else "tcp"
        for host in hosts:
            literal = f"[{host}]" if ":" in host else host
            url = f"{scheme}:{literal}:{bound.port}?transport={transport}"
            if url not in urls:
                urls.append(url)
    return urls


def announcement(username: str, password: str, urls: Sequence[str]) -> dict[str, Any]:
    """
    The log event (format and fields) that announces a generated user.
    The values stand alone on their lines, so a double click copies
    exactly the password, with no punctuation glued to it.
    """
    return {
        "format": (
            "No credentials configured; this server's user is\n"
            "  username: {username}\n  password: {password}\n"
            "WebRTC iceServers:\n{snippet}"
        ),
        "username": username,
        "password": password,
        "snippet": ice_servers_snippet(urls, username, password),
    }
