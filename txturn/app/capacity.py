# -*- test-case-name: tests.test_service -*-
"""
What a server can hold, from its descriptor limit and relay ports: the
defaults of C{--total-quota} and C{--user-quota} that depend on the
machine (L{resolve_quotas}).
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from typing import Sequence

from txturn.core.config import ServerConfig, user_quota_for


def resolve_quotas(
    config: ServerConfig,
    descriptor_quota: int,
    relay_addresses: Sequence[str],
    relay_ports: range,
) -> ServerConfig:
    """
    C{config} with its defaults that depend on this server filled in:
    the total quota from the descriptor limit, and the per-user quota
    as half of what the server can hold (the smaller of the total
    quota and the relay ports of its largest address family: the
    whole range, even for a worker, which shares users' counts with
    the others).
    """
    if not config.total_quota and descriptor_quota:
        config = replace(config, total_quota=descriptor_quota)
    if config.user_quota is None and config.total_quota:
        families = [ip_address(a).version for a in relay_addresses]
        addresses = max([families.count(4), families.count(6), 1])
        capacity = min(config.total_quota, len(relay_ports) * addresses)
        config = replace(config, user_quota=user_quota_for(capacity))
    return config
