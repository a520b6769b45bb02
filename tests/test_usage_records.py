"""
Tests for L{txturn.observers.usage}.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txturn.observers.usage import UsageRecords
from txturn.testing import RecordingClientChannel, StunClient, authenticated_request, make_server
from txturn.wire.stun import Attr, Method

CLIENT = ("198.51.100.1", 5000)
PEER = ("203.0.113.1", 6000)


class UsageRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_server(realm="example.org", clock=self.clock)
        self.files: list[io.StringIO] = []
        self.records = UsageRecords(self.open, "example.org", lambda: 1_700_000_000.0)
        self.server.add_observer(self.records)
        self.channel = RecordingClientChannel()
        self.client = StunClient("u", "p")

    def open(self) -> Any:
        self.files.append(io.StringIO())
        self.files[-1].close = lambda: None  # type: ignore[method-assign]
        return self.files[-1]

    def request(self, method: int, attrs: list[tuple[int, Any]]) -> Any:
        return authenticated_request(self.server, self.channel, self.client, method, attrs, CLIENT)

    def test_record(self) -> None:
        """
        An allocation that ends writes one JSON line with who, where,
        when, how long, how much each way and why.
        """
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)])
        self.assertEqual(self.files[0].getvalue(), "")
        allocation = self.server.allocations[(self.channel, CLIENT)]
        relay = allocation.relays[1]
        relay.receiver(b"hello", PEER)
        self.clock.advance(42)
        self.channel.sent.clear()
        self.request(Method.REFRESH, [(Attr.LIFETIME, 0)])
        [line] = self.files[0].getvalue().splitlines()
        self.assertEqual(
            json.loads(line),
            {
                "allocation": allocation.id,
                "user": "u",
                "realm": "example.org",
                "client": "198.51.100.1:5000",
                "server": "192.0.2.1:3478",
                "transport": "udp",
                "relayed": [f"{relay.address[0]}:{relay.address[1]}"],
                "start": "2023-11-14T22:13:20+00:00",
                "duration": 42.0,
                "to_peers": {"packets": 0, "bytes": 0},
                "to_client": {"packets": 1, "bytes": 5},
                "dropped": {},
                "reason": "refresh",
            },
        )

    def test_reopen(self) -> None:
        """
        After reopen (logrotate moved the file) records go to the new one.
        """
        self.records.reopen()
        self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
        self.clock.advance(700)  # it expires
        self.assertEqual(self.files[0].getvalue(), "")
        self.assertEqual(json.loads(self.files[1].getvalue())["reason"], "expired")
