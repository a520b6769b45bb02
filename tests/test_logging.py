"""
No password, key or secret ever reaches the log, and failed
authentication is logged once per nonce, not per packet.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, eventAsText, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txturn.auth.credentials import long_term_key, rest_api_password
from txturn.tap import Options, makeService
from txturn.testing import RecordingClientChannel, StunClient
from txturn.wire.stun import Attr, Method

PASSWORD = "pa55-w0rd-never-logged"
SECRET = "rest-secret-never-logged"


class SecretsTests(SynchronousTestCase):
    """
    Secrets stay out of every log event.
    """

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def text(self) -> str:
        out = []
        for event in self.events:
            out.append(eventAsText(event))
            out.append(json.dumps({k: repr(v) for k, v in event.items()}))
        return "\n".join(out)

    def test_no_secrets(self) -> None:
        """
        A server with a configured user and a REST secret, driven through
        successful and failed authentications, never logs the password, the
        secret, a REST password or any long-term key, in any event field.
        """
        options = Options()
        options.parseOptions(
            [
                "--user",
                f"alice:{PASSWORD}",
                "--static-auth-secret",
                SECRET,
                "--relay-ip",
                "192.0.2.1",
                "--realm",
                "r",
            ]
        )
        clock = Clock()
        clock.advance(1_700_000_000)
        service = makeService(options, reactor=clock)
        server = service.server
        channel = RecordingClientChannel()
        rest_user = f"{int(clock.seconds()) + 100}:bob"
        rest_password = rest_api_password(SECRET, rest_user)
        clients = [
            StunClient("alice", PASSWORD),
            StunClient("alice", "wrong"),
            StunClient(rest_user, rest_password),
            StunClient("mallory", PASSWORD),
        ]
        for port, client in enumerate(clients):
            for _ in range(3):
                server.datagram_received(
                    channel,
                    client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                    ("198.51.100.1", port),
                )
                client.learn(channel.pop())
        text = self.text()
        self.assertIn("Authentication failed", text)
        secrets = [PASSWORD, SECRET, rest_password]
        secrets += [
            long_term_key(user, "r", password).hex()
            for user, password in [("alice", PASSWORD), (rest_user, rest_password)]
        ]
        for secret in secrets:
            self.assertNotIn(secret, text)

    def test_failures_once_per_nonce(self) -> None:
        """
        Ten failed attempts with one nonce make one log line naming the
        source address and user.
        """
        options = Options()
        options.parseOptions(["--user", "alice:right", "--relay-ip", "192.0.2.1"])
        server = makeService(options, reactor=Clock()).server
        channel = RecordingClientChannel()
        client = StunClient("alice", "wrong")
        client.learn(
            self.exchange(server, channel, client.request(Method.ALLOCATE, authenticate=False))
        )
        for _ in range(10):
            self.exchange(server, channel, client.request(Method.REFRESH))
        failures = [e for e in self.events if "Authentication failed" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["user"], "alice")
        self.assertEqual(failures[0]["client"], "198.51.100.1:7")

    def exchange(self, server: Any, channel: RecordingClientChannel, data: bytes) -> bytes:
        server.datagram_received(channel, data, ("198.51.100.1", 7))
        return channel.pop()
