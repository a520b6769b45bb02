# -*- test-case-name: tests.test_tap -*-
"""
Finding this host's addresses: for a relay started without C{--relay-ip},
and for the peer policy, which must know every address a wildcard
listener answers on.
"""

from __future__ import annotations

import socket

import ifaddr

#: Documentation addresses (RFC 5737, RFC 3849): asking the kernel for a
#: route to them names the interface a default route would use.  A UDP
#: C{connect} only looks the route up; nothing is sent.
_PROBES: dict[int, str] = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def primary_address(family: int) -> str | None:
    """
    The source address this host would use for traffic of C{family} to
    the Internet, or C{None} if it has no route for that family.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect((_PROBES[family], 9))
        host: str = sock.getsockname()[0]
    except OSError:
        return None
    finally:
        sock.close()
    return host


def ipv6_available() -> bool:
    """
    Whether this host can bind IPv6 sockets at all (containers and some
    hosts have IPv6 disabled, and a default C{::} listener must not then
    stop the server from starting).
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def default_listen_addresses() -> list[str]:
    """
    All IPv4 addresses, and all IPv6 addresses where IPv6 works.
    """
    return ["0.0.0.0", "::"] if ipv6_available() else ["0.0.0.0"]


def default_relay_addresses(listen: list[str]) -> list[str]:
    """
    Relay on the specific addresses the server listens on; for a wildcard
    listener, on the primary address of that family; for IPv4 with no
    route at all, on 127.0.0.1 so a fresh machine still works locally.
    """
    relays: list[str] = []
    for host in listen:
        if host in ("0.0.0.0", "::"):
            family = socket.AF_INET6 if host == "::" else socket.AF_INET
            found = primary_address(family)
            if found is None and family == socket.AF_INET:
                found = "127.0.0.1"
            if found is not None and found not in relays:
                relays.append(found)
        elif host not in relays:
            relays.append(host)
    return relays


def host_addresses() -> list[str]:
    """
    Every address on this host's interfaces, IPv4 and IPv6 (without
    scope), as C{ifaddr} reads them from the kernel.
    """
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if host not in found:
                found.append(host)
    return found
