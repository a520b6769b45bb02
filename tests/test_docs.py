"""
The library example in doc/ runs as documented.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests import source_path
from txturn.app.options import Options
from txturn.auth.credentials import long_term_key, rest_api_password
from txturn.wire.stun import PasswordAlgorithm

reactor: Any = _reactor
EXAMPLE = source_path("doc", "examples", "embed.py")


class LibraryExampleTests(TestCase):
    """
    doc/examples/embed.py builds a working service inside a host tree.
    """

    @defer.inlineCallbacks
    def test_embed(self) -> Any:
        """
        The example's service joins the parent, listens when the parent
        starts, knows both kinds of user, and stops with the parent.
        """
        spec = importlib.util.spec_from_file_location("embed_example", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parent = MultiService()
        turn = module.add_turn_server(reactor, parent, [("127.0.0.1", 0)], ["127.0.0.1"])
        self.assertIs(turn.parent, parent)
        parent.startService()
        self.assertEqual([name for name, _ in turn.ports], ["udp", "tcp"])
        creds = turn.server.credentials
        self.assertEqual(
            creds.key_for("alice", "example.org", PasswordAlgorithm.MD5, 0),
            long_term_key("alice", "example.org", "correct horse battery staple"),
        )
        name = "4000000000:bob"
        password = rest_api_password("shared secret with the web backend", name)
        self.assertEqual(
            creds.key_for(name, "example.org", PasswordAlgorithm.MD5, 0),
            long_term_key(name, "example.org", password),
        )
        yield parent.stopService()
        self.assertEqual(turn.ports, [])


class TestingExampleTests(TestCase):
    """
    The txturn.testing example in doc/library.rst runs.
    """

    def test_testing_example(self) -> None:
        """
        The literal block after "as a real client does::" executes, and its
        asserts hold.
        """
        path = source_path("doc", "library.rst")
        with open(path) as f:
            lines = f.read().split("\n")
        start = next(i for i, line in enumerate(lines) if line.endswith("a real client does::"))
        block = []
        for line in lines[start + 2 :]:
            if line and not line.startswith("    "):
                break
            block.append(line[4:])
        self.assertIn("authenticated_request", "\n".join(block))
        exec(compile("\n".join(block), path, "exec"), {})  # noqa: S102 - the doc's own code


class ManPageTests(SynchronousTestCase):
    """
    The manual pages, built by Sphinx's man builder from the same option
    tables as --help.
    """

    def test_every_option(self) -> None:
        """
        twistd-turn(8) names every option of twistd turn, and
        txturn-admin(8) every command of txturn-admin.
        """
        try:
            import sphinx  # noqa: F401
        except ImportError:
            raise SkipTest("Sphinx is not installed (pip install '.[docs]')") from None
        out = self.mktemp()
        built = subprocess.run(
            [sys.executable, "-m", "sphinx", "-b", "man", "-q", "-W", source_path("doc"), out],
            capture_output=True,
            text=True,
        )
        self.assertEqual(built.returncode, 0, built.stderr)

        def page(name: str) -> str:
            with open(os.path.join(out, name)) as f:
                return f.read().replace("\\-", "-").replace("\\(aq", "'")

        turn = page("twistd-turn.8")
        options = Options()
        names = [p[0] for p in options.optParameters] + [f[0] for f in options.optFlags]
        self.assertGreater(len(names), 50)
        for name in names:
            self.assertIn(f"--{name}", turn)
        admin = page("txturn-admin.8")
        for command in ("add", "delete", "list", "init", "revoke", "unrevoke", "mint"):
            self.assertIn(f"txturn-admin {command} ", admin)


class MetricsTableTests(SynchronousTestCase):
    def test_every_counter_family(self) -> None:
        """
        doc/operations.rst lists every family of counters the metrics
        export.
        """
        import txturn.observers.metrics  # noqa: F401 (registers every family)
        from txturn.util.counting import FAMILIES

        with open(source_path("doc", "operations.rst"), encoding="utf-8") as f:
            text = f.read()
        self.assertTrue(FAMILIES)
        for name in FAMILIES:
            self.assertIn(f"``turn_{name}_total", text, name)
