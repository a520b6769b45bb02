# -*- test-case-name: tests.test_redis -*-
"""
Where the fleet's Redis is (C{--redis URL}), parsed without importing a
Redis client, so that checking options costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is, from a C{redis://[[user]:password@]host[:port][/db]}
    URL, or C{rediss://} for TLS (the server's certificate checked against
    the system's CAs, or C{?ssl_ca_certs=FILE}'s, for C{host}).
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None

    def __str__(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    @raise ValueError: saying what is wrong with C{url}.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url}: a redis:// or rediss:// URL is needed")
    query = parse_qs(parts.query)
    unknown = set(query) - {"ssl_ca_certs"}
    if unknown:
        raise ValueError(f"{url}: unknown parameter {sorted(unknown)[0]}")
    ca_file = query["ssl_ca_certs"][-1] if "ssl_ca_certs" in query else None
    if ca_file is not None and parts.scheme != "rediss":
        raise ValueError(f"{url}: ssl_ca_certs needs rediss://")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url}: bad port") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url}: the path is a database number")
    if not parts.hostname:
        raise ValueError(f"{url}: no host")
    return RedisAddress(
        parts.hostname,
        port,
        int(path or 0),
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        parts.scheme == "rediss",
        ca_file,
    )
