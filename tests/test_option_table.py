"""
Tests for L{txturn.app.option_table}: every option the parser knows is a
row with a reload class, and a reload applies or reports every option.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txturn.app.config_file import ACCEPTED, ALIASES, coturn_name
from txturn.app.option_table import BY_NAME, GROUPS, OPTIONS, Reload
from txturn.app.options import Options
from txturn.app.signals import SignalHandlers
from txturn.core.events import AllocationCreated, AllocationDeleted, Traffic
from txturn.tap import makeService
from txturn.testing import self_signed_certificate


def _parser_names(options: Options) -> set[str]:
    """
    Every long spelling Twisted's parser accepts for C{options}.
    """
    names = {p[0] for p in options.optParameters} | {f[0] for f in options.optFlags}
    names |= {n[4:].replace("_", "-") for n in dir(options) if n.startswith("opt_")}
    return {n for n in names if len(n) > 1}


class TableTests(SynchronousTestCase):
    def test_every_option_has_a_row(self) -> None:
        """
        Whatever the command line accepts is a row of the table (by its
        name or coturn's), or one of coturn's flags txturn accepts and
        ignores; so every option has a reload class.
        """
        coturn = {spec.coturn: spec for spec in OPTIONS if spec.coturn}
        for name in sorted(_parser_names(Options())):
            spec = BY_NAME.get(name) or coturn.get(name)
            if spec is None:
                self.assertIn(name, ACCEPTED, f"--{name} has no row in the option table")
                continue
            self.assertIsInstance(spec.reload, Reload, name)

    def test_rows(self) -> None:
        """
        Each row is in a --help group, has help, and (unless a flag) a
        metavar; names and coturn names are unique.
        """
        self.assertEqual(len(BY_NAME), len(OPTIONS))
        coturn = [spec.coturn for spec in OPTIONS if spec.coturn]
        self.assertEqual(len(coturn), len(set(coturn)))
        for spec in OPTIONS:
            self.assertIn(spec.group, GROUPS, spec.name)
            self.assertTrue(spec.help.strip(), spec.name)
            if spec.default is not None:
                # The default parses, as the value of its kind.
                spec.initial()

    def test_help_from_table(self) -> None:
        """
        --help lists every option under its group, with its default.
        """
        text = Options().getUsage()
        for spec in OPTIONS:
            self.assertIn(f"--{spec.name}", text)
            if spec.default:
                self.assertIn(f"[default: {spec.default}]", " ".join(text.split()))

    def test_config_file_names(self) -> None:
        """
        The configuration file maps coturn's names through the table.
        """
        self.assertEqual(ALIASES["listening-port"], "port")
        self.assertEqual(ALIASES["relay-threads"], "workers")
        self.assertEqual(coturn_name("key"), "pkey")
        for spec in OPTIONS:
            if spec.coturn:
                self.assertEqual(ALIASES[spec.coturn], spec.name)


#: A line (or lines) of configuration file that sets each option to
#: something other than the base configuration has, where the row's
#: example will not do alone.
_CHANGES = {
    "usage-stream": ["redis=redis://127.0.0.1:1", "usage-stream=usage"],
    "external-ip": ["external-ip=203.0.113.5/192.0.2.1"],
    "relay-ip": ["relay-ip=192.0.2.2"],
    "Verbose": ["Verbose"],
}
#: What a reload says for an applied option, when not "--name old -> new".
_SAID = {
    "user": "users added: bob",
    "user-db": "users added: carol",
    "static-auth-secret-file": "--static-auth-secret",
    "cert": "certificate serial",
    "key": "--key",
    "Verbose": "--log-level",
}


class _Clock(Clock):
    """
    A Clock a drain can stop.
    """

    stopped = False

    def stop(self) -> None:
        self.stopped = True


class ReloadEveryOptionTests(SynchronousTestCase):
    """
    For each option in turn, a reload of a configuration file that
    changes it: the option is applied (and the log says from what to what)
    or named as taking a restart.  None is ignored silently.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "turnserver.conf")
        self.base = ["relay-ip=192.0.2.1", "user=alice:a"]
        self.write(self.base)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def write(self, lines: list[str]) -> None:
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def file(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def change(self, spec_name: str) -> tuple[list[str], list[str]]:
        """
        The configuration lines that C{spec_name} needs first, and those
        that change it.
        """
        lines = self._change(spec_name)
        return lines if isinstance(lines, tuple) else ([], lines)

    def _change(self, spec_name: str) -> list[str] | tuple[list[str], list[str]]:
        spec = BY_NAME[spec_name]
        if spec_name in _CHANGES:
            return _CHANGES[spec_name]
        if spec_name in ("cert", "key", "ca-file"):
            cert, key = self_signed_certificate(self.directory)
            if spec_name == "cert":
                return [f"cert={cert}", f"pkey={key}"]
            if spec_name == "key":
                # The same key, from its own file rather than the --cert file.
                with open(cert) as c, open(key) as k:
                    both = self.file("both.pem", c.read() + k.read())
                return [f"cert={both}"], [f"cert={both}", f"pkey={key}"]
            return [f"cert={cert}", f"pkey={key}"], [
                f"cert={cert}",
                f"pkey={key}",
                f"CA-file={cert}",
            ]
        files = {
            "user-db": ("users", "carol:c\n"),
            "static-auth-secret-file": ("secrets", "s3cret\n"),
            "nonce-key-file": ("nonce-keys", "n" * 16 + "\n"),
            "credential-file": ("credential", ""),
            "usage-file": ("usage.jsonl", ""),
        }
        if spec_name in files:
            name, text = files[spec_name]
            path = self.file(name, text)
            if spec_name == "credential-file":
                os.remove(path)
            return [f"{spec_name}={path}"]
        if spec_name in ("admin-port", "admin-token-file"):
            return self._admin_change(spec_name)
        if spec_name == "redis":
            return ["redis=redis://127.0.0.1:1"]
        if spec_name == "usage-stream":
            return _CHANGES["usage-stream"]
        if spec.flag:
            return [spec_name]
        assert spec.example is not None, f"{spec_name} has no example value"
        return [f"{spec_name}={spec.example}"]

    def _admin_change(self, spec_name: str) -> tuple[list[str], list[str]]:
        """
        The sessions API needs its token from the start.
        """
        token = f"admin-token-file={self.file('admin-token', 't' * 20 + chr(10))}"
        other = f"admin-token-file={self.file('admin-token-2', 'u' * 20 + chr(10))}"
        if spec_name == "admin-port":
            return [token], [token, "admin-port=9642"]
        return [token, "admin-port=9642"], [other, "admin-port=9642"]

    def reload_with(self, spec_name: str) -> list[str]:
        """
        Start from the base file (with whatever the option needs first),
        reload with the option changed; what the reload logged.
        """
        before, change = self.change(spec_name)
        self.write(self.base + before)
        options = Options()
        options.parseOptions(["-c", self.path])
        self.service = makeService(options, reactor=_Clock())
        # The reloader SIGHUP calls, which the drain reads as well.
        [self.handlers] = [s for s in self.service if isinstance(s, SignalHandlers)]
        self.write(self.base + change)
        del self.events[:]
        self.handlers._reload("SIGHUP")
        return [
            str(formatEvent(e))
            for e in self.events
            if e.get("log_namespace") == "txturn.tap" and "SIGHUP" in str(formatEvent(e))
        ]

    def test_every_option(self) -> None:
        silent = []
        for spec in OPTIONS:
            if spec.reload is Reload.NOT_A_SETTING or spec.name == "config":
                continue
            lines = self.reload_with(spec.name)
            text = "\n".join(lines)
            if spec.reload is Reload.RESTART:
                expected = f"--{spec.name}"
                ok = "which takes a restart" in text and expected in text.split("changed")[-2]
            else:
                expected = _SAID.get(spec.name, f"--{spec.name}")
                ok = expected in text and "failed" not in text
            if not ok:
                silent.append(f"--{spec.name} ({spec.reload.value}): {text!r}")
        self.assertEqual(silent, [])

    def test_detects_silence(self) -> None:
        """
        An option whose change a reload does not mention is found: with
        --drain-timeout left out of the comparison, as it once was.
        """
        from txturn.app import reload as reload_module

        everything = OPTIONS
        self.patch(
            reload_module, "OPTIONS", tuple(s for s in everything if s.name != "drain-timeout")
        )
        lines = self.reload_with("drain-timeout")
        self.assertFalse(any("--drain-timeout" in line for line in lines), lines)


class HonouredTests(ReloadEveryOptionTests):
    """
    The two options a reload once ignored while saying nothing now take
    effect: the drain waits the new --drain-timeout, and usage records go
    to the new --usage-file.
    """

    def test_every_option(self) -> None:
        pass

    def test_detects_silence(self) -> None:
        pass

    def test_drain_timeout(self) -> None:
        self.reload_with("drain-timeout")
        del self.events[:]
        assert self.handlers._drain is not None
        self.handlers._drain()
        said = [str(formatEvent(e)) for e in self.events]
        self.assertTrue(any("or in 60s" in line for line in said), said)

    def test_usage_file(self) -> None:
        self.reload_with("usage-file")
        path = os.path.join(self.directory, "usage.jsonl")
        emit = self.service.server.state.emit
        emit(AllocationCreated(1, "alice", ("192.0.2.9", 5000), "udp", (), 600.0))
        emit(
            AllocationDeleted(
                1, "alice", ("192.0.2.9", 5000), "udp", "refresh", 1.0, Traffic(0, 0), Traffic(0, 0)
            )
        )
        with open(path) as f:
            [record] = [json.loads(line) for line in f]
        self.assertEqual((record["user"], record["reason"]), ("alice", "refresh"))
