"""
Tests for L{txturn.tap}: option parsing, validation and makeService.
"""

from __future__ import annotations

import os
import sys
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from txturn.app import host_addresses as addresses
from txturn.app.host_addresses import ipv6_available
from txturn.app.service import TurnService
from txturn.auth.credentials import long_term_key
from txturn.auth.user_db import SqliteUsers
from txturn.tap import Options, Reloader, makeService
from txturn.testing import self_signed_certificate
from txturn.wire.stun import PasswordAlgorithm


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def test_default_listen_without_ipv6(self) -> None:
        """
        On a host where IPv6 cannot be bound, the default listens on IPv4
        only (and the suite passes there too).
        """
        self.patch(addresses, "ipv6_available", lambda: False)
        self.assertEqual(parse()["listen"], ["0.0.0.0"])

    def test_defaults(self) -> None:
        """
        With no arguments: port 3478 on all IPv4 and IPv6 addresses,
        relay ports 49152-65535, realm txturn, a SOFTWARE string.
        """
        options = parse()
        self.assertEqual(options["port"], 3478)
        self.assertEqual(options["listen"], ["0.0.0.0", "::"] if ipv6_available() else ["0.0.0.0"])
        self.assertEqual((options["min-port"], options["max-port"]), (49152, 65535))
        self.assertEqual(options["realm"], "txturn")
        self.assertTrue(options["software"].startswith("txturn "))
        self.assertFalse(options["allow-loopback-peers"])

    def test_repeatable(self) -> None:
        """
        --listen, --relay-ip and --user repeat; addresses are normalised.
        """
        options = parse(
            "--listen",
            "127.0.0.1",
            "--listen",
            "[::1]",
            "--relay-ip",
            "192.0.2.1",
            "--relay-ip",
            "2001:DB8::1",
            "--user",
            "a:b",
            "-u",
            "c:d:e",
        )
        self.assertEqual(options["listen"], ["127.0.0.1", "::1"])
        self.assertEqual(options["relay-ip"], ["192.0.2.1", "2001:db8::1"])
        self.assertEqual(options["user"], [("a", "b"), ("c", "d:e")])

    def test_no_software(self) -> None:
        """
        --no-software removes the SOFTWARE attribute.
        """
        self.assertIsNone(parse("--no-software")["software"])

    def test_errors(self) -> None:
        """
        Bad values stop parsing with a message naming the option.
        """
        for args, text in [
            (["--port", "x"], "--port must be a number, not 'x'"),
            (["--port", "70000"], "--port must be 0-65535, not 70000"),
            (
                ["--min-port", "6000", "--max-port", "5000"],
                "--min-port must be 1-65535 and not above --max-port",
            ),
            (["--listen", "example.com"], "--listen must be an IP address, not 'example.com'"),
            (["--user", "nopassword"], "--user must be NAME:PASSWORD, not 'nopassword'"),
            (["--realm", ""], "--realm must not be empty"),
            (["--stale-nonce", "0"], "--stale-nonce must be positive"),
            (
                ["--user-db", "/nonexistent/users"],
                "cannot read --user-db /nonexistent/users: No such file or directory",
            ),
        ]:
            error = self.assertRaises(UsageError, parse, *args)
            self.assertEqual(str(error), text)

    def test_bad_user_db(self) -> None:
        """
        A malformed user database is refused at startup with its line.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("good:pw\nbad\n")
        error = self.assertRaises(UsageError, parse, "--user-db", path)
        self.assertEqual(str(error), f"--user-db {path}: line 2: expected name:password")

    def test_help_grouped(self) -> None:
        """
        --help groups options like coturn's man page.
        """
        text = str(Options())
        for heading in ["Listening:", "Relays:", "Authentication:", "Peers:"]:
            self.assertIn(heading, text)
        self.assertIn("--static-auth-secret=SECRET", text)
        self.assertIn("--port=N", text)


class TransportOptionsTests(SynchronousTestCase):
    """
    Options for TLS, DTLS, transports and external addresses.
    """

    def certificate(self) -> tuple[str, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        return self_signed_certificate(directory)

    def test_defaults(self) -> None:
        """
        Every transport is on by default; TLS and DTLS use port 5349.
        """
        options = parse("--relay-ip", "192.0.2.1")
        self.assertEqual(options["transports"], {"udp", "tcp", "tls", "dtls"})
        self.assertEqual(options["tls-port"], 5349)

    def test_switches(self) -> None:
        """
        --no-udp, --no-tcp, --no-tls and --no-dtls switch each off; all four
        is an error.
        """
        options = parse("--no-udp", "--no-dtls", "--relay-ip", "192.0.2.1")
        self.assertEqual(options["transports"], {"tcp", "tls"})
        error = self.assertRaises(
            UsageError, parse, "--no-udp", "--no-tcp", "--no-tls", "--no-dtls"
        )
        self.assertEqual(
            str(error), "--no-udp, --no-tcp, --no-tls and --no-dtls leave nothing to serve"
        )

    def test_certificate(self) -> None:
        """
        --cert and --key reach the service as TLS credentials; --key
        defaults to the --cert file for a combined PEM.
        """
        cert, key = self.certificate()
        service = makeService(
            parse("--cert", cert, "--key", key, "--tls-port", "443", "--relay-ip", "192.0.2.1"),
            reactor=Clock(),
        )
        assert service.tls is not None
        self.assertEqual((service.tls.certificate, service.tls.key), (cert, key))
        self.assertEqual(service.tls_port, 443)
        combined = os.path.join(os.path.dirname(cert), "both.pem")
        with open(combined, "wb") as f:
            f.write(open(cert, "rb").read() + open(key, "rb").read())
        self.assertEqual(parse("--cert", combined, "--relay-ip", "192.0.2.1")["key"], None)

    def test_bad_certificate(self) -> None:
        """
        A bad certificate or key stops option parsing with a clear message.
        """
        cert, key = self.certificate()
        error = self.assertRaises(UsageError, parse, "--cert", key, "--key", key)
        self.assertEqual(str(error), f"no certificate in {key}")
        error = self.assertRaises(UsageError, parse, "--key", key)
        self.assertEqual(str(error), "--key needs --cert")

    def test_external_ip(self) -> None:
        """
        --external-ip PUBLIC/PRIVATE maps a relay address; PUBLIC alone maps
        the only relay address of its family; anything else is refused.
        """
        options = parse(
            "--relay-ip",
            "10.0.0.5",
            "--relay-ip",
            "fd00::5",
            "--external-ip",
            "203.0.113.9",
            "--external-ip",
            "2001:db8::9/fd00::5",
        )
        self.assertEqual(
            options["external-map"], {"10.0.0.5": "203.0.113.9", "fd00::5": "2001:db8::9"}
        )
        for args, text in [
            (
                [
                    "--relay-ip",
                    "10.0.0.5",
                    "--relay-ip",
                    "10.0.0.6",
                    "--external-ip",
                    "203.0.113.9",
                ],
                "--external-ip 203.0.113.9 without /PRIVATE needs exactly one relay address of its "
                "family; name the private one",
            ),
            (
                ["--relay-ip", "10.0.0.5", "--external-ip", "203.0.113.9/10.0.0.7"],
                "--external-ip: 10.0.0.7 is not a relay address",
            ),
            (
                ["--relay-ip", "10.0.0.5", "--external-ip", "bogus"],
                "--external-ip must be an IP address, not 'bogus'",
            ),
        ]:
            error = self.assertRaises(UsageError, parse, *args)
            self.assertEqual(str(error), text)


class TcpRelayOptionsTests(SynchronousTestCase):
    """
    Options for TCP allocations.
    """

    def test_defaults(self) -> None:
        """
        Both relay kinds on, a 30 s connect timeout, 64 KiB before a bind.
        """
        service = makeService(parse("--relay-ip", "192.0.2.1"), reactor=Clock())
        config = service.server.config
        self.assertEqual((config.udp_relay, config.tcp_relay), (True, True))
        self.assertEqual(config.tcp_connect_timeout, 30.0)
        self.assertEqual(service.tcp_relays.buffer_limit, 65536)

    def test_values(self) -> None:
        """
        The options reach the core and the TCP relay allocator.
        """
        service = makeService(
            parse(
                "--relay-ip",
                "192.0.2.1",
                "--no-udp-relay",
                "--tcp-connect-timeout",
                "45",
                "--tcp-buffer",
                "1000",
            ),
            reactor=Clock(),
        )
        config = service.server.config
        self.assertEqual((config.udp_relay, config.tcp_relay), (False, True))
        self.assertEqual(config.tcp_connect_timeout, 45.0)
        self.assertEqual(service.tcp_relays.buffer_limit, 1000)

    def test_errors(self) -> None:
        """
        A connect timeout under 30 s, a bad buffer size, or both relay
        kinds off are refused.
        """
        for args, text in [
            (
                ["--tcp-connect-timeout", "10"],
                "--tcp-connect-timeout must be at least 30 (RFC 6062)",
            ),
            (["--tcp-buffer", "lots"], "--tcp-buffer must be a whole number"),
            (["--tcp-buffer", "0"], "--tcp-buffer must be at least 1"),
            (["--user-quota", "-1"], "--user-quota must be at least 0"),
            (
                ["--no-udp-relay", "--no-tcp-relay"],
                "--no-udp-relay and --no-tcp-relay leave nothing to relay",
            ),
        ]:
            error = self.assertRaises(UsageError, parse, *args)
            self.assertEqual(str(error), text)


class PeerPolicyOptionsTests(SynchronousTestCase):
    """
    --allowed-peer-ip, --denied-peer-ip, and the server's own addresses.
    """

    def test_ranges(self) -> None:
        """
        Allowed ranges lift the default refusal; denied ones win; the
        service's own listening and relay addresses are refused as peers
        except on relay ports.
        """
        service = makeService(
            parse(
                "--listen",
                "8.8.4.4",
                "--relay-ip",
                "8.8.4.4",
                "--allowed-peer-ip",
                "10.0.0.0/8",
                "--denied-peer-ip",
                "10.1.0.0-10.1.255.255",
                "--min-port",
                "50000",
                "--max-port",
                "50100",
            ),
            reactor=Clock(),
        )
        policy = service.server.policy
        self.assertTrue(policy.allows("10.2.3.4"))
        self.assertFalse(policy.allows("10.1.2.3"))
        self.assertFalse(policy.allows("192.168.1.1"))
        self.assertFalse(policy.allows_peer("8.8.4.4", 3478))
        self.assertTrue(policy.allows_peer("8.8.4.4", 50050))

    def test_bad_range(self) -> None:
        """
        A malformed range is refused naming the option.
        """
        error = self.assertRaises(UsageError, parse, "--denied-peer-ip", "10.0.0.9-10.0.0.1")
        self.assertEqual(
            str(error), "--denied-peer-ip: 10.0.0.9-10.0.0.1: the range ends before it starts"
        )


class QuotaOptionsTests(SynchronousTestCase):
    """
    Quota and limit options reach the core.
    """

    def test_values(self) -> None:
        """
        --user-quota, --total-quota, --max-permissions and --max-bps become
        the core's configuration.
        """
        service = makeService(
            parse(
                "--relay-ip",
                "192.0.2.1",
                "--user-quota",
                "3",
                "--total-quota",
                "100",
                "--max-permissions",
                "10",
                "--max-bps",
                "125000",
            ),
            reactor=Clock(),
        )
        config = service.server.config
        self.assertEqual(
            (config.user_quota, config.total_quota, config.max_permissions, config.max_bps),
            (3, 100, 10, 125000),
        )


class NonceKeyFileTests(SynchronousTestCase):
    """
    --nonce-key-file: servers without Redis sharing their nonce keys.
    """

    def keys(self, *lines: str) -> str:
        path: str = self.mktemp()
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    def test_shared_and_rotated(self) -> None:
        """
        Two servers reading one file take each other's nonces; adding a
        key below, reloading, and moving it first rotates the key
        without refusing a nonce issued before.
        """
        path = self.keys("# the fleet's nonce keys", "first-key-0123456789")
        servers = []
        for _ in range(2):
            options = parse("--relay-ip", "192.0.2.1", "--nonce-key-file", path)
            service = makeService(options, reactor=Clock())
            servers.append((service, Reloader(service, options)))
        (a, reload_a), (b, reload_b) = servers
        before = a.server.nonces.issue("192.0.2.9", 0)
        self.assertTrue(b.server.nonces.is_valid(before, "192.0.2.9", 0))
        with open(path, "w") as f:
            f.write("second-key-0123456789\nfirst-key-0123456789\n")
        reload_a("SIGHUP")
        after = a.server.nonces.issue("192.0.2.9", 0)
        self.assertNotEqual(after, before)
        self.assertFalse(b.server.nonces.is_valid(after, "192.0.2.9", 0))
        reload_b("SIGHUP")
        for nonce in (before, after):
            self.assertTrue(b.server.nonces.is_valid(nonce, "192.0.2.9", 0))

    def test_refused(self) -> None:
        """
        A short key, an empty file, and the option beside --redis stop
        start-up with one line.
        """
        for args, text in [
            (["--nonce-key-file", self.keys("short")], "every key needs 16 characters or more"),
            (["--nonce-key-file", self.keys("# none")], "holds no secret"),
            (
                ["--nonce-key-file", self.keys("k" * 16), "--redis", "redis://127.0.0.1"],
                "--nonce-key-file is for servers without --redis",
            ),
        ]:
            error = self.assertRaises(UsageError, parse, *args)
            self.assertIn(text, str(error))


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{makeService}.
    """

    def test_users(self) -> None:
        """
        --user, --user-db and --static-auth-secret all work in one server.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("dbuser:dbpass\n")
        service = makeService(
            parse(
                "--user",
                "a:b",
                "--user-db",
                path,
                "--static-auth-secret",
                "s",
                "--relay-ip",
                "192.0.2.1",
                "--realm",
                "r",
            ),
            reactor=Clock(),
        )
        self.assertIsInstance(service, TurnService)
        creds = service.server.credentials
        self.assertEqual(creds.keys_for("a", "r", 1, 0), [long_term_key("a", "r", "b")])
        self.assertEqual(
            creds.keys_for("dbuser", "r", 1, 0), [long_term_key("dbuser", "r", "dbpass")]
        )
        self.assertEqual(len(creds.keys_for("99:x", "r", PasswordAlgorithm.MD5, 0)), 1)
        self.assertEqual(service.relay_addresses, ["192.0.2.1"])
        expected = [("0.0.0.0", 3478), ("::", 3478)] if ipv6_available() else [("0.0.0.0", 3478)]
        self.assertEqual(service.listen, expected)

    def test_generated_user(self) -> None:
        """
        With no credentials a random user is generated and announced; no
        other name gets in.
        """
        service = makeService(parse("--relay-ip", "192.0.2.1"), reactor=Clock())
        assert service._announce is not None
        username, password = service._announce
        creds = service.server.credentials
        self.assertEqual(
            creds.keys_for(username, "txturn", 1, 0), [long_term_key(username, "txturn", password)]
        )
        self.assertEqual(creds.keys_for("", "txturn", 1, 0), [])
        self.assertEqual(creds.keys_for("anonymous", "txturn", 1, 0), [])

    def test_policy(self) -> None:
        """
        --allow-loopback-peers reaches the peer policy.
        """
        service = makeService(
            parse("--allow-loopback-peers", "--relay-ip", "192.0.2.1"), reactor=Clock()
        )
        self.assertTrue(service.server.policy.allows("127.0.0.1"))
        service = makeService(parse("--relay-ip", "192.0.2.1"), reactor=Clock())
        self.assertFalse(service.server.policy.allows("127.0.0.1"))

    def test_default_relay(self) -> None:
        """
        Without --relay-ip, a specific --listen address is the relay address.
        """
        service = makeService(parse("--listen", "127.0.0.1"), reactor=Clock())
        self.assertEqual(service.relay_addresses, ["127.0.0.1"])


class SummaryTests(SynchronousTestCase):
    """
    makeService says what it runs, and warns about what weakens it.
    """

    def test_warnings(self) -> None:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        makeService(
            parse(
                "--relay-ip",
                "192.0.2.1",
                "--user",
                "a:b",
                "--allow-loopback-peers",
                "--allowed-peer-ip",
                "10.0.0.0/8",
            ),
            reactor=Clock(),
        )
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "txturn.tap"]
        self.assertEqual(lines[0], "Realm txturn; authentication: 1 static user(s)")
        self.assertIn(
            "--allow-loopback-peers: relays can reach this host's loopback services", lines
        )
        self.assertIn("--allowed-peer-ip 10.0.0.0/8: relays can reach this non-public range", lines)
        self.assertTrue(any(line.startswith("--user on the command line") for line in lines))


class ReloadTests(SynchronousTestCase):
    """
    L{Reloader} on a service built by makeService (nothing bound): what a
    SIGHUP changes, and what it keeps.
    """

    def setUp(self) -> None:
        self.path = str(self.mktemp())
        self.write("realm=example.org\nuser=alice:a\nuser-quota=10\nrelay-ip=192.0.2.1\n")
        self.options = parse("-c", self.path)
        self.service = makeService(self.options, reactor=Clock())
        self.reload = Reloader(self.service, self.options)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def lines(self) -> list[str]:
        return [str(formatEvent(e)) for e in self.events if e.get("log_namespace") == "txturn.tap"]

    def test_applied(self) -> None:
        """
        A new user and a new quota apply at once, and the log says so.
        """
        self.write(
            "realm=example.org\nuser=alice:a\nuser=bob:b\nuser-quota=3\nrelay-ip=192.0.2.1\n"
        )
        self.reload("SIGHUP")
        server = self.service.server
        self.assertEqual(server.config.user_quota, 3)
        self.assertEqual(
            server.credentials.keys_for("bob", "example.org", 1, 0),
            [long_term_key("bob", "example.org", "b")],
        )
        self.assertIn("SIGHUP: --user-quota 10 -> 3; users added: bob", self.lines())

    def test_warnings_once(self) -> None:
        """
        A configuration warning is given when the line appears, not again
        at every SIGHUP; a new one is.
        """
        text = "realm=example.org\nuser=alice:a\nrelay-ip=192.0.2.1\nno-such-option\n"
        self.write(text)
        self.reload("SIGHUP")
        self.reload("SIGHUP")
        warned = [line for line in self.lines() if "unknown option" in line]
        self.assertEqual(len(warned), 1, warned)
        self.write(text + "another-unknown\n")
        self.reload("SIGHUP")
        warned = [line for line in self.lines() if "unknown option" in line]
        self.assertEqual(len(warned), 2, warned)
        self.assertIn("another-unknown", warned[-1])

    def test_realm_kept(self) -> None:
        """
        A changed realm needs a restart: keys and nonces carry it, so the
        running realm stays, and the log says why.
        """
        self.write("realm=other\nuser=alice:a\nrelay-ip=192.0.2.1\n")
        self.reload("SIGHUP")
        self.assertEqual(self.service.server.config.realm, "example.org")
        self.assertEqual(
            self.service.server.credentials.keys_for("alice", "example.org", 1, 0),
            [long_term_key("alice", "example.org", "a")],
        )
        self.assertIn("SIGHUP: --realm changed, which takes a restart", self.lines())

    def test_workers_need_a_restart(self) -> None:
        """
        A new worker count, like the other options that shape sockets and
        processes, is said to need a restart rather than ignored.
        """
        self.write("realm=example.org\nuser=alice:a\nrelay-ip=192.0.2.1\nworkers=2\n")
        self.reload("SIGHUP")
        self.assertIn("SIGHUP: --workers changed, which takes a restart", self.lines())

    def test_database_needs_a_restart(self) -> None:
        """
        A user database named on reload is not opened (databases are
        opened once), and the log says so rather than ignoring it.
        """
        database = os.path.abspath(self.mktemp())
        SqliteUsers(database).add("example.org", "carol", "c")
        self.write(f"realm=example.org\nuser=alice:a\nrelay-ip=192.0.2.1\nuserdb={database}\n")
        self.reload("SIGHUP")
        self.assertIn("SIGHUP: --user-db changed, which takes a restart", self.lines())

    def test_bad_file_kept(self) -> None:
        self.write("realm=example.org\nuser-quota=lots\n")
        self.reload("SIGUSR2")
        self.assertEqual(self.service.server.config.user_quota, 10)
        [line] = [line for line in self.lines() if "reload failed" in line]
        self.assertEqual(
            line,
            f"SIGUSR2: reload failed, keeping the running settings: {self.path}:2: "
            "--user-quota must be a whole number or auto",
        )


class GeneratedUserTests(SynchronousTestCase):
    def test_credential_file(self) -> None:
        """
        With --credential-file, the generated user is written once (mode
        0600) and the same user comes back on the next start.
        """
        path = str(self.mktemp())
        first = makeService(parse("--relay-ip", "192.0.2.1", "--credential-file", path), Clock())
        second = makeService(parse("--relay-ip", "192.0.2.1", "--credential-file", path), Clock())
        self.assertIsNotNone(first._announce)
        self.assertEqual(first._announce, second._announce)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, "w") as f:
            f.write("garbage\n")
        error = self.assertRaises(UsageError, parse, "--credential-file", path)
        self.assertEqual(str(error), f"--credential-file {path}: expected name:password")

    def test_version(self) -> None:
        written: list[str] = []
        self.patch(sys.stdout, "write", written.append)
        error = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(error.code, 0)
        self.assertTrue(written[0].startswith("txturn "))


class ImportCostTests(SynchronousTestCase):
    def test_one_process_imports_no_worker_machinery(self) -> None:
        """
        C{twistd turn} without C{--workers} or C{--prometheus} loads
        neither the supervisor, AMP, C{twisted.web} nor C{prometheus_client}
        (about 5 MiB of resident memory); with C{--workers 2} the
        supervisor is loaded.
        """
        import subprocess

        probe = (
            "import sys\n"
            "from txturn.tap import Options, makeService\n"
            "options = Options()\n"
            "options.parseOptions(sys.argv[1:] + ['--listen', '127.0.0.1', '-u', 'a:b'])\n"
            "makeService(options)\n"
            "print(sorted(m for m in ('twisted.web.server', 'twisted.protocols.amp',"
            " 'prometheus_client', 'txturn.workers.supervisor') if m in sys.modules))\n"
        )
        alone, workers = (
            subprocess.run(
                [sys.executable, "-c", probe, *argv],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split("\n")[-2]
            for argv in ([], ["--workers", "2"])
        )
        self.assertEqual(alone, "[]")
        self.assertIn("txturn.workers.supervisor", workers)
