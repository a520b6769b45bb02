"""
Tests for the twistd plugin and the packaging that ships it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from txturn import tap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(SynchronousTestCase):
    """
    C{twistd turn} is discoverable and lazy.
    """

    def test_discovered(self) -> None:
        """
        A plugin with tapname "turn" is found and provides IServiceMaker.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("turn", makers)
        verifyObject(IServiceMaker, makers["turn"])
        verifyObject(IPlugin, makers["turn"])
        self.assertIs(makers["turn"].options, tap.Options)
        self.assertIs(makers["turn"].makeService, tap.makeService)

    def test_no_init(self) -> None:
        """
        The source tree has no twisted/__init__.py or
        twisted/plugins/__init__.py, which would hide Twisted's own plugins.
        """
        for path in ["twisted/__init__.py", "twisted/plugins/__init__.py"]:
            self.assertFalse(os.path.exists(os.path.join(ROOT, path)), path)


class WheelTests(SynchronousTestCase):
    """
    The wheel carries the plugin file and nothing that shadows Twisted.
    """

    def test_wheel_contents(self) -> None:
        """
        Building the wheel yields twisted/plugins/txturn_plugin.py and the
        txturn package, and no twisted/__init__.py,
        twisted/plugins/__init__.py or dropin.cache.
        """
        if not os.path.exists(os.path.join(ROOT, "setup.cfg")):
            raise SkipTest("not running from a source tree")
        out = self.mktemp()
        os.makedirs(out)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                out,
                ROOT,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
        self.assertEqual(len(wheels), 1)
        names = set(zipfile.ZipFile(os.path.join(out, wheels[0])).namelist())
        self.assertIn("twisted/plugins/txturn_plugin.py", names)
        self.assertIn("txturn/server.py", names)
        self.assertIn("txturn/py.typed", names)
        for bad in [
            "twisted/__init__.py",
            "twisted/plugins/__init__.py",
            "twisted/plugins/dropin.cache",
        ]:
            self.assertNotIn(bad, names)
