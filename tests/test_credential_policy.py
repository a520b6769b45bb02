"""
Credentials that carry their own policy (L{txturn.auth.policy}):
the format, the minting helper and its CLI, and the core refusing what a
credential does not allow on every path, on a L{Clock}.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_interop import run_aioice, spawn, twistd_turn
from tests.test_server import CLIENT, PEER, REALM, ServerTestCase
from tests.test_service import free_udp_port
from txturn.auth.credentials import (
    CredentialChain,
    CredentialError,
    RestApiCredentials,
    rest_api_password,
)
from txturn.auth.policy import (
    NO_POLICY,
    CredentialPolicy,
    PolicyReader,
    mint_credential,
    parse_policy,
)
from txturn.core.counters import Counter
from txturn.testing import (
    FakeTcpRelayAllocator,
    RecordingClientChannel,
    StunClient,
    make_server,
)
from txturn.wire.stun import Attr, Class, Method

SECRET = "rest-secret"
#: Inside the credential's range, and outside it; the server allows both.
INSIDE = ("198.51.100.20", 7000)
OUTSIDE = PEER  # 203.0.113.5


def _field(body: dict[str, Any]) -> str:
    raw = json.dumps(body).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class FormatTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        A minted name carries the policy it was given, and the password
        is the plain REST password of the whole name.
        """
        username, password = mint_credential(
            SECRET, "alice", 2_000_000_000, peers=["198.51.100.0/24"], allocations=2, bps=1000
        )
        expiry, user, field = username.split(":")
        self.assertEqual((expiry, user), ("2000000000", "alice"))
        self.assertTrue(field.startswith("ey"))
        policy = PolicyReader().policy_of(username)
        self.assertEqual(policy.peers, (ipaddress.ip_network("198.51.100.0/24"),))
        self.assertEqual((policy.allocations, policy.bps), (2, 1000))
        key = RestApiCredentials(SECRET).key_for(username, REALM, 1, 0)
        self.assertIsNotNone(key)
        self.assertEqual(parse_policy(policy.encode()), policy)
        self.assertTrue(password)

    def test_plain_names_unchanged(self) -> None:
        """
        Static names, plain REST names and REST users with a colon whose
        third field is no policy carry none.
        """
        reader = PolicyReader()
        for name in (
            "alice",
            "1700000000:alice",
            "1700000000:alice:x",
            "a:b:eyJ",
            "1700000000:team:eyal",
        ):
            self.assertIs(reader.policy_of(name), NO_POLICY, name)

    def test_refused(self) -> None:
        """
        A policy field that does not parse, or names a restriction this
        server does not know, is refused rather than ignored.
        """
        reader = PolicyReader()
        for body in (
            {"peers": ["not a range"]},
            {"peers": "198.51.100.0/24"},
            {"allocations": 0},
            {"bps": True},
            {"bps": 10**309},
            {"allocations": 10**13},
            {"bandwidth": 5},
            {"peers": ["10.0.0.0/8"] * 33},
        ):
            with self.assertRaises(CredentialError, msg=str(body)):
                reader.policy_of(f"1700000000:u:{_field(body)}")
        with self.assertRaises(CredentialError):
            reader.policy_of("1700000000:u:eyJub3QganNvbg")
        with self.assertRaises(CredentialError):
            reader.policy_of("1700000000:u:eyJ" + "A" * 600)
        with self.assertRaises(CredentialError):
            mint_credential(SECRET, "a:b", 1)

    def test_narrows(self) -> None:
        """
        A restriction never widens the server's own limit.
        """
        policy = CredentialPolicy(allocations=3, bps=500)
        self.assertEqual(policy.narrow(0), 3)
        self.assertEqual(policy.narrow(2), 2)
        self.assertEqual(policy.narrow(10), 3)
        self.assertEqual(policy.narrow_bps(100), 100)
        self.assertEqual(policy.narrow_bps(0), 500)
        self.assertEqual(NO_POLICY.narrow(7), 7)

    def test_cli(self) -> None:
        """
        C{txturn-admin mint} prints a username and credential that work.
        """
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "txturn.tools.admin",
                "mint",
                "--secret",
                SECRET,
                "--user",
                "bob",
                "--ttl",
                "60",
                "--peer",
                "198.51.100.0/24",
                "--allocations",
                "1",
            ],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        minted = json.loads(out)
        policy = PolicyReader().policy_of(minted["username"])
        self.assertEqual(policy.allocations, 1)
        self.assertEqual(minted["credential"], rest_api_password(SECRET, minted["username"]))
        sha256 = json.loads(
            subprocess.run(
                [sys.executable, "-m", "txturn.tools.admin", "mint", "--secret", SECRET]
                + ["--user", "bob", "--hmac", "sha256"],
                capture_output=True,
                check=True,
                text=True,
            ).stdout
        )
        self.assertEqual(
            sha256["credential"], rest_api_password(SECRET, sha256["username"], "sha256")
        )


class CorePolicyTests(ServerTestCase):
    """
    A credential limited to 198.51.100.0/24, on a server whose own policy
    allows 203.0.113.0/24 too.
    """

    def setUp(self) -> None:
        super().setUp()
        self.tcp_relays = FakeTcpRelayAllocator()
        self.server = make_server(
            realm=REALM,
            clock=self.clock,
            credentials=CredentialChain([RestApiCredentials(SECRET)]),
            relays=self.relays,
            tcp_relays=self.tcp_relays,
        )
        self.username, password = mint_credential(
            SECRET,
            "alice",
            int(self.clock.seconds()) + 3600,
            peers=["198.51.100.0/24"],
            allocations=2,
            bps=50_000,
        )
        self.client = StunClient(self.username, password)

    def test_create_permission(self) -> None:
        self.assertSuccess(self.allocate())
        outside: list[tuple[int, Any]] = [(Attr.XOR_PEER_ADDRESS, OUTSIDE)]
        self.assertError(self.authed(Method.CREATE_PERMISSION, outside), 403)
        inside: list[tuple[int, Any]] = [(Attr.XOR_PEER_ADDRESS, INSIDE)]
        self.assertSuccess(self.authed(Method.CREATE_PERMISSION, inside))
        # Both at once: refused whole.
        self.assertError(self.authed(Method.CREATE_PERMISSION, inside + outside), 403)

    def test_channel_bind(self) -> None:
        self.assertSuccess(self.allocate())
        bind: list[tuple[int, Any]] = [
            (Attr.CHANNEL_NUMBER, 0x4000),
            (Attr.XOR_PEER_ADDRESS, OUTSIDE),
        ]
        self.assertError(self.authed(Method.CHANNEL_BIND, bind), 403)
        bind = [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, INSIDE)]
        self.assertSuccess(self.authed(Method.CHANNEL_BIND, bind))

    def test_send(self) -> None:
        """
        A Send indication to a peer outside the ranges is dropped even
        where a permission for its address exists (installed before the
        allocation's policy was narrowed, as a stand-in for any path that
        might skip the check).
        """
        self.assertSuccess(self.allocate())
        self.allocation.install_permission(OUTSIDE[0])
        self.allocation.install_permission(INSIDE[0])
        relay = self.relays.opened[0]
        for peer in (OUTSIDE, INSIDE):
            self.send(
                self.client.request(
                    Method.SEND,
                    [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, b"hello")],
                    authenticate=False,
                    cls=Class.INDICATION,
                )
            )
        self.assertEqual([to for _, to in relay.sent], [INSIDE])
        self.assertEqual(self.allocation.dropped[Counter.REFUSED_PEER], 1)

    def test_connect(self) -> None:
        """
        RFC 6062: Connect to a peer outside the ranges is 403; inside, it
        is tried; a peer outside that connects to the relay is closed.
        """
        self.channel = RecordingClientChannel("tcp")
        self.assertSuccess(self.authed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)]))
        self.assertError(self.authed(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, OUTSIDE)]), 403)
        self.send(self.client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, INSIDE)]))
        relay = self.tcp_relays.opened[0]
        self.assertEqual([peer for peer, _ in relay.connects], [INSIDE])
        self.allocation.install_permission(OUTSIDE[0])
        connection = relay.peer_connects(OUTSIDE)
        self.assertTrue(connection.closed)

    def test_allocations(self) -> None:
        """
        The credential's two allocations, under a --user-quota of 100:
        the third is 486.
        """
        for port in (40001, 40002):
            self.assertSuccess(self.allocate(address=(CLIENT[0], port)))
        self.assertError(self.allocate(address=(CLIENT[0], 40003)), 486)

    def test_bandwidth(self) -> None:
        self.assertSuccess(self.allocate())
        self.assertIsNotNone(self.allocation.bandwidth)
        self.assertEqual(self.allocation.bandwidth.rate, 50_000)

    def test_tampered(self) -> None:
        """
        A widened policy with the old password: 401, as for a wrong one.
        """
        expiry, user, _ = self.username.split(":")
        wider = f"{expiry}:{user}:{_field({'peers': ['0.0.0.0/0']})}"
        self.client = StunClient(wider, self.client.password)
        self.assertError(self.allocate(), 401)
        self.assertError(self.allocate(), 401)

    def test_expired(self) -> None:
        """
        Past its expiry, the credential gets 401.
        """
        self.clock.advance(3601)
        self.assertError(self.allocate(), 401)
        self.assertError(self.allocate(), 401)

    def test_plain_rest_unchanged(self) -> None:
        """
        A plain REST credential reaches any peer the server allows.
        """
        username, password = mint_credential(SECRET, "carol", int(self.clock.seconds()) + 60)
        self.client = StunClient(username, password)
        self.assertSuccess(self.allocate())
        self.assertSuccess(
            self.authed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, OUTSIDE)])
        )


@defer.inlineCallbacks
def aioice_received(port: int, username: str, password: str, count: int) -> Any:
    """
    How many of C{count} datagrams aioice's client relayed through the
    server on C{port} with these credentials; 0 if it could not allocate.
    """
    script = os.path.join(os.path.dirname(__file__), "clients", "aioice_echo.py")
    out, err, code = yield getProcessOutputAndValue(
        sys.executable,
        [script, "127.0.0.1", str(port), username, password, str(count)],
        env=os.environ.copy(),
    )
    return json.loads(out.decode().splitlines()[-1])["received"] if code == 0 else 0


class RealClientTests(TestCase):
    """
    aioice through a real C{twistd turn} with policy-carrying credentials:
    one whose ranges hold the echo peer relays; one whose ranges do not
    gets nothing through, and the server says why.
    """

    @defer.inlineCallbacks
    def rest_server(self, *extra: str) -> Any:
        """
        An installed server taking REST credentials of C{SECRET}, relaying
        to loopback peers; its port and its output, once it listens.
        """
        port = free_udp_port()
        watcher = spawn(
            twistd_turn(
                port,
                "--static-auth-secret",
                SECRET,
                *extra,
                "--relay-ip",
                "127.0.0.1",
                "--allow-loopback-peers",
            ),
            self,
        )
        yield watcher.wait_for(rb"TURN listening on UDP")
        return port, watcher

    @defer.inlineCallbacks
    def test_aioice(self) -> Any:
        port, watcher = yield self.rest_server()
        expiry = int(time.time()) + 600
        allowed = mint_credential(SECRET, "alice", expiry, peers=["127.0.0.0/8"], allocations=1)
        result = yield run_aioice(self, port, *allowed, 10)
        self.assertEqual((result["received"], result["intact"]), (10, True))
        elsewhere = mint_credential(SECRET, "bob", expiry, peers=["198.51.100.0/24"])
        self.assertEqual((yield aioice_received(port, *elsewhere, 5)), 0)
        yield watcher.wait_for(
            rb"Refused peer 127\.0\.0\.1:\d+ for \S+:bob:\S+: outside the credential"
        )

    @defer.inlineCallbacks
    def test_aioice_sha256(self) -> Any:
        """
        C{--rest-api-hmac sha256}: aioice relays with a credential that
        C{txturn-admin mint --hmac sha256} made, and gets nothing through
        with a SHA-1 one for the same secret.
        """
        port, watcher = yield self.rest_server("--rest-api-hmac", "sha256")
        yield watcher.wait_for(rb"REST API with 1 secret\(s\), HMAC-SHA256")
        minted = {}
        for hmac_name in ("sha256", "sha1"):
            out, err, code = yield getProcessOutputAndValue(
                sys.executable,
                ["-m", "txturn.tools.admin", "mint", "--secret", SECRET, "--user", "alice"]
                + ["--hmac", hmac_name],
                env=os.environ.copy(),
            )
            self.assertEqual(code, 0, err)
            minted[hmac_name] = json.loads(out)
        good = minted["sha256"]
        result = yield run_aioice(self, port, good["username"], good["credential"], 10)
        self.assertEqual((result["received"], result["intact"]), (10, True))
        bad = minted["sha1"]
        self.assertEqual((yield aioice_received(port, bad["username"], bad["credential"], 3)), 0)
