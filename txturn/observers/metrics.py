# -*- test-case-name: tests.test_metrics -*-
"""
Live metrics in Prometheus's format, through C{prometheus_client}.

L{Metrics} is an observer of the core (L{IServerObserver}): requests by
method and result, authentication failures by reason, allocations
created and ended, and the traffic of ended allocations are counted from
lifecycle events.  Everything else is read when Prometheus scrapes, not
when packets pass: the allocations alive now (by client transport and
relay family), their permissions and channels, the packets and bytes
they have relayed so far (so traffic shows while a call lasts, not only
when it ends), drops by reason, and free relay ports.  The relay path
pays nothing beyond the counters it keeps anyway.

The scrape runs in the reactor thread (L{MetricsPage}), so it reads the
core's state without racing it; C{prometheus_client}'s own Twisted
resource collects in a thread pool, which would.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from txturn.auth.cache import CacheCounter
from txturn.core.counters import Counter
from txturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AuthenticationFailed,
    IServerObserver,
    RequestAnswered,
)
from txturn.fastpath.xdp import XdpCounter
from txturn.transports.admission import AdmissionCounter
from txturn.transports.dtls import DtlsCounter
from txturn.util.counting import FAMILIES, Counted
from txturn.wire.stun import FAMILY_IPV6, Method

#: Every enum of counters the server has, exported whether or not counted.
COUNTED: tuple[type[Counted], ...] = (
    Counter,
    AdmissionCounter,
    DtlsCounter,
    CacheCounter,
    XdpCounter,
)

if TYPE_CHECKING:
    from txturn.core.server import TurnServer
    from txturn.transports.port_pool import PortPool

#: Method numbers -> the names in the C{method} label.
_METHODS = {int(m): m.name.lower() for m in Method}


@implementer(IServerObserver)
class Metrics:
    """
    The metrics of one server, in their own registry.

    @param pools: (protocol, port pool) pairs whose free ports are shown.
    @param counted: the counters of the parts beside the core, at each
        scrape (L{txturn.util.counting}).
    """

    def __init__(
        self,
        server: "TurnServer",
        pools: list[tuple[str, "PortPool"]],
        counted: Callable[[], Iterable[Mapping[Any, int]]] = tuple,
    ) -> None:
        self._server = server
        self._pools = pools
        #: The counters of the parts beside the core (admission, DTLS
        #: listeners, credential caches), asked at each scrape.
        self._counted = counted
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._auth_failures: collections.Counter[str] = collections.Counter()
        self._created: collections.Counter[str] = collections.Counter()
        self._ended: collections.Counter[str] = collections.Counter()
        #: Packets and bytes of ended allocations, by direction.
        self._ended_traffic: collections.Counter[tuple[str, str]] = collections.Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        server.add_observer(self)

    def observe(self, event: object) -> None:
        if isinstance(event, RequestAnswered):
            method = _METHODS.get(event.method, f"0x{event.method:03x}")
            self._requests[(method, str(event.code or 200))] += 1
        elif isinstance(event, AuthenticationFailed):
            self._auth_failures[event.reason] += 1
        elif isinstance(event, AllocationCreated):
            self._created[event.transport] += 1
        elif isinstance(event, AllocationDeleted):
            self._ended[event.reason] += 1
            traffic = self._ended_traffic
            traffic[("to_peers", "packets")] += event.to_peers.packets
            traffic[("to_peers", "bytes")] += event.to_peers.bytes
            traffic[("to_client", "packets")] += event.to_client.packets
            traffic[("to_client", "bytes")] += event.to_client.bytes

    def collect(self) -> Iterator[Metric]:
        """
        Every metric, read now (C{prometheus_client}'s collector protocol).
        """
        yield from self._allocations()
        requests = CounterMetricFamily(
            "turn_requests",
            "Requests answered, by method and result code.",
            labels=["method", "code"],
        )
        for (method, code), count in sorted(self._requests.items()):
            requests.add_metric([method, code], count)
        yield requests
        failures = CounterMetricFamily(
            "turn_auth_failures", "Failed authentications, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self._auth_failures.items()):
            failures.add_metric([reason], count)
        yield failures
        yield from self._counters()
        yield from self._ports()

    def _allocations(self) -> Iterator[Metric]:
        live: collections.Counter[tuple[str, str]] = collections.Counter()
        permissions = channels = 0
        traffic = collections.Counter(self._ended_traffic)
        for allocation in self._server.allocations.values():
            for family in allocation.relays:
                live[
                    (allocation.client.transport_name, "ipv6" if family == FAMILY_IPV6 else "ipv4")
                ] += 1
            permissions += len(allocation.permissions)
            channels += len(allocation.channels)
            allocation.take_counters()
            traffic[("to_peers", "packets")] += allocation.to_peers_packets
            traffic[("to_peers", "bytes")] += allocation.to_peers_bytes
            traffic[("to_client", "packets")] += allocation.to_client_packets
            traffic[("to_client", "bytes")] += allocation.to_client_bytes
        gauge = GaugeMetricFamily(
            "turn_allocations",
            "Relayed addresses allocated now, by client transport and relay family.",
            labels=["transport", "family"],
        )
        for (transport_name, family_name), count in sorted(live.items()):
            gauge.add_metric([transport_name, family_name], count)
        yield gauge
        yield GaugeMetricFamily("turn_permissions", "Permissions installed now.", value=permissions)
        yield GaugeMetricFamily("turn_channels", "Channels bound now.", value=channels)
        yield GaugeMetricFamily(
            "turn_tcp_data_connections",
            "RFC 6062 peer data connections open now.",
            value=len(self._server.peer_connections.entries),
        )
        created = CounterMetricFamily(
            "turn_allocations_created",
            "Allocations made, by client transport.",
            labels=["transport"],
        )
        for transport, count in sorted(self._created.items()):
            created.add_metric([transport], count)
        yield created
        ended = CounterMetricFamily(
            "turn_allocations_ended", "Allocations ended, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self._ended.items()):
            ended.add_metric([reason], count)
        yield ended
        for unit in ("packets", "bytes"):
            relayed = CounterMetricFamily(
                f"turn_relayed_{unit}",
                f"{unit.capitalize()} relayed, by direction, live allocations included.",
                labels=["direction"],
            )
            for direction in ("to_peers", "to_client"):
                relayed.add_metric([direction], traffic[(direction, unit)])
            yield relayed

    def _counters(self) -> Iterator[Metric]:
        """
        Every member of every counter enum (the core's, the admission of
        connections, DTLS, the credential cache), summed over the parts
        that count it, in the family and with the label it names; a
        member nothing has counted yet is 0 (a test checks that none is
        left out).
        """
        totals: collections.Counter[Counted] = collections.Counter(self._server.counters)
        for counters in self._counted():
            totals.update(counters)
        families: dict[str, CounterMetricFamily] = {}
        for kind in COUNTED:
            for counter in kind:
                family = families.get(counter.family)
                if family is None:
                    help, label = FAMILIES[counter.family]
                    family = families[counter.family] = CounterMetricFamily(
                        f"turn_{counter.family}", help, labels=[label] if label else None
                    )
                labels = [counter.label] if counter.label is not None else []
                family.add_metric(labels, totals.get(counter, 0))
        yield from families.values()
        yield GaugeMetricFamily(
            "turn_revocations",
            "Credentials revoked now (txturn-admin revoke).",
            value=len(self._server.revocations),
        )
        ledger = self._server.ledger
        if ledger is not None:
            yield GaugeMetricFamily(
                "turn_fleet_connected",
                "1 while the fleet's Redis answers (quotas are the fleet's), 0 while "
                "this server counts on its own.",
                value=1 if ledger.available else 0,
            )

    def _ports(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "turn_relay_ports_free",
            "Relay ports of the range not in use, by relay address and protocol.",
            labels=["address", "protocol"],
        )
        for protocol, pool in self._pools:
            for host, count in sorted(pool.free().items()):
                free.add_metric([host, protocol], count)
        yield free

    def page(self) -> "MetricsPage":
        return MetricsPage(self.registry)


class MetricsPage(Resource):
    """
    C{/metrics}, rendered in the reactor thread.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(  # type: ignore[no-untyped-call]
            b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii")
        )
        return generate_latest(self._registry)
