"""
Tests for L{txturn.observers.metrics}: in memory on the core, and scraped over HTTP
from a running service while turnutils_uclient relays through it.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any

from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from tests.test_interop import UdpDrops, assert_relayed, require, spawn, uclient_args
from tests.test_service import free_udp_port
from txturn.app.service import TurnService
from txturn.auth.credentials import StaticCredentials
from txturn.core.counters import Counter
from txturn.core.peer_policy import PeerPolicy
from txturn.core.server import ServerConfig
from txturn.observers.metrics import COUNTED, Metrics
from txturn.testing import (
    FakeRelayAllocator,
    RecordingClientChannel,
    StunClient,
    authenticated_request,
    make_server,
)
from txturn.transports.dtls import DtlsCounter
from txturn.util.counting import FAMILIES
from txturn.wire.stun import Attr, Method

reactor: Any = _reactor
CLIENT = ("198.51.100.1", 5000)
PEER = ("203.0.113.1", 6000)


def value(text: str, name: str, **labels: str) -> float:
    """
    The value of one sample in Prometheus's text format, 0 if absent.
    """
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, number = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric == name and ",".join(sorted(label_text.rstrip("}").split(","))) == wanted:
            return float(number)
    return 0.0


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.relays = FakeRelayAllocator()
        self.server = make_server(clock=self.clock, relays=self.relays)
        self.metrics = Metrics(self.server, [("udp", self.relays_pool())])
        self.channel = RecordingClientChannel()

    def relays_pool(self) -> Any:
        from txturn.transports.port_pool import PortPool

        return PortPool(["192.0.2.1"], 50000, 50009)

    def scrape(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def request(self, method: int, attrs: list[tuple[int, Any]], client: StunClient) -> Any:
        return authenticated_request(self.server, self.channel, client, method, attrs, CLIENT)

    def test_live(self) -> None:
        """
        Allocations, channels and relayed traffic show while the
        allocation lives; once it ends the gauge is back to 0 and the
        traffic stays counted.
        """
        client = StunClient("u", "p")
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], client)
        self.request(
            Method.CHANNEL_BIND,
            [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)],
            client,
        )
        for _ in range(3):
            self.server.datagram_received(self.channel, b"\x40\x00\x00\x04ping", CLIENT)
        self.relays.opened[0].receiver(b"pong!", PEER)
        self.relays.opened[0].receiver(b"stranger", ("203.0.113.9", 1))
        text = self.scrape()
        self.assertEqual(value(text, "turn_allocations", transport="udp", family="ipv4"), 1)
        self.assertEqual(value(text, "turn_channels"), 1)
        self.assertEqual(value(text, "turn_permissions"), 1)
        self.assertEqual(value(text, "turn_relayed_packets_total", direction="to_peers"), 3)
        self.assertEqual(value(text, "turn_relayed_bytes_total", direction="to_peers"), 12)
        self.assertEqual(value(text, "turn_relayed_bytes_total", direction="to_client"), 5)
        self.assertEqual(value(text, "turn_dropped_packets_total", reason="no_permission"), 1)
        self.assertEqual(value(text, "turn_requests_total", method="allocate", code="401"), 1)
        self.assertEqual(value(text, "turn_requests_total", method="allocate", code="200"), 1)
        self.assertEqual(
            value(text, "turn_relay_ports_free", address="192.0.2.1", protocol="udp"), 10
        )
        self.channel.sent.clear()
        self.request(Method.REFRESH, [(Attr.LIFETIME, 0)], client)
        text = self.scrape()
        self.assertEqual(value(text, "turn_allocations", transport="udp", family="ipv4"), 0)
        self.assertEqual(value(text, "turn_relayed_packets_total", direction="to_peers"), 3)
        self.assertEqual(value(text, "turn_allocations_ended_total", reason="refresh"), 1)

    def test_every_counter_exported(self) -> None:
        """
        Each thing the core, the admission of connections, a DTLS listener
        and a credential cache count is a sample of the family and label
        its enum member names, with its count summed over the parts that
        count it.
        """
        for counter in Counter:
            self.server.count(counter)
        self.server.count(Counter.REDIRECTED)
        # Two DTLS listeners (IPv4 and IPv6) count the same things.
        parts: list[collections.Counter[Any]] = [collections.Counter() for _ in range(3)]
        for kind in COUNTED[1:]:
            for member in kind:
                parts[0][member] += 1
        parts[1][DtlsCounter.REFUSED_SESSIONS] += 1
        metrics = Metrics(self.server, [], lambda: parts)
        text = generate_latest(metrics.registry).decode()
        twice = (Counter.REDIRECTED, DtlsCounter.REFUSED_SESSIONS)
        for kind in COUNTED:
            for member in kind:
                name = FAMILIES[member.family][1]
                label = f'{{{name}="{member.label}"}}' if member.label else ""
                count = 2.0 if member in twice else 1.0
                self.assertIn(f"turn_{member.family}_total{label} {count}", text, member)

    def test_auth_failures(self) -> None:
        """
        Failed authentications are counted by reason.
        """
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], StunClient("u", "wrong"))
        self.clock.advance(1)  # a fresh nonce: failures are announced once per nonce
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], StunClient("nobody", "x"))
        text = self.scrape()
        self.assertEqual(value(text, "turn_auth_failures_total", reason="bad integrity"), 1)
        self.assertEqual(value(text, "turn_auth_failures_total", reason="unknown user"), 1)


class ScrapeTests(TestCase):
    """
    /metrics of a running service, scraped over HTTP while uclient relays.
    """

    @defer.inlineCallbacks
    def test_scrape_while_relaying(self) -> Any:
        """
        The packet counters move while uclient's allocations live, and the
        allocation gauge falls back once they end.
        """
        uclient = require("turnutils_uclient")
        peer_port = free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        service = TurnService(
            reactor,
            StaticCredentials("txturn", {"test": "secret"}),
            [("127.0.0.1", 0)],
            ["127.0.0.1"],
            policy=PeerPolicy(allow_loopback=True),
            config=ServerConfig(realm="txturn"),
            transports={"udp"},
            metrics_listen=("127.0.0.1", 0),
        )
        service.startService()
        self.addCleanup(service.stopService)
        url = f"http://127.0.0.1:{service.port_of('metrics')}/metrics".encode()
        agent = Agent(reactor)

        @defer.inlineCallbacks
        def scrape() -> Any:
            response = yield agent.request(b"GET", url)
            body = yield readBody(response)
            return body.decode()

        drops = UdpDrops()
        calls = getProcessOutputAndValue(
            uclient,
            uclient_args(service.port_of("udp"), peer_port, 150, 2),
            env=os.environ.copy(),
        )
        # uclient sets up its allocations and channels, then relays for 3 s;
        # on a loaded machine the setup alone has taken over 5 s.
        for _ in range(150):
            yield deferLater(reactor, 0.1, lambda: None)
            first = yield scrape()
            if value(first, "turn_relayed_packets_total", direction="to_peers"):
                break
        yield deferLater(reactor, 0.5, lambda: None)
        second = yield scrape()
        live = value(first, "turn_allocations", transport="udp", family="ipv4")
        self.assertGreater(live, 0)
        moved = [
            value(text, "turn_relayed_packets_total", direction="to_peers")
            for text in (first, second)
        ]
        self.assertGreater(moved[0], 0)
        self.assertGreater(moved[1], moved[0])
        out, err, code = yield calls
        assert_relayed(self, (out + err).decode(errors="replace"), drops)
        for allocation in list(service.server.allocations.values()):
            allocation.close()  # what expiry does, without the wait
        after = yield scrape()
        self.assertEqual(value(after, "turn_allocations", transport="udp", family="ipv4"), 0)
        self.assertGreaterEqual(
            value(after, "turn_relayed_packets_total", direction="to_peers"), moved[1]
        )
        self.assertTrue(re.search(r"turn_relay_ports_free\{", after))


class DashboardTests(SynchronousTestCase):
    def test_dashboard_names_real_metrics(self) -> None:
        """
        Every metric doc/grafana-dashboard.json queries is one txturn
        exports.
        """
        import json

        from tests import source_path

        path = source_path("doc", "grafana-dashboard.json")
        with open(path) as f:
            dashboard = json.load(f)
        exported = set(
            re.findall(
                r"^# TYPE (\S+)",
                generate_latest(Metrics(make_server(), []).registry).decode(),
                re.M,
            )
        )
        exported |= {name + "_total" for name in exported}
        queried = {
            name
            for panel in dashboard["panels"]
            for target in panel["targets"]
            for name in re.findall(r"\bturn_[a-z_]+", target["expr"])
        }
        self.assertTrue(queried)
        self.assertEqual(queried - exported, set())
