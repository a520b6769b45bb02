"""
Tests for the twistd plugin and the packaging that ships it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from tests import SOURCE
from txturn import tap

ROOT = SOURCE


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
        self.assertIn("txturn/core/server.py", names)
        self.assertIn("txturn/py.typed", names)
        for bad in [
            "twisted/__init__.py",
            "twisted/plugins/__init__.py",
            "twisted/plugins/dropin.cache",
        ]:
            self.assertNotIn(bad, names)


class InstalledTests(SynchronousTestCase):
    """
    The suite runs against the installed package, and that package has
    everything the sources have: a module left out of the wheel (as
    C{txturn.workers} once was) fails here, not on an operator's
    C{--workers 2}.
    """

    def test_every_module_installed(self) -> None:
        """
        Every module under C{txturn/} in the checkout imports, and comes
        from the installation, not from the checkout.
        """
        package = os.path.join(SOURCE, "txturn")
        if not os.path.isdir(package):
            raise SkipTest("no source tree beside these tests")
        names = []
        for directory, subdirectories, files in os.walk(package):
            subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
            relative = os.path.relpath(directory, SOURCE).replace(os.sep, ".")
            for file in files:
                if file.endswith(".py"):
                    stem = file[: -len(".py")]
                    names.append(relative if stem == "__init__" else f"{relative}.{stem}")
        self.assertIn("txturn.workers.worker", names)
        for name in sorted(names):
            module = importlib.import_module(name)
            where = os.path.abspath(module.__file__ or "")
            self.assertFalse(
                where.startswith(package + os.sep),
                f"{name} was imported from the checkout ({where}): run the suite "
                "with .ci/test, which installs the wheel and runs it from outside",
            )

    def test_fast_path_installed(self) -> None:
        """
        Where a C compiler and Python's headers are, the installed package
        has the compiled fast path.
        """
        include = sysconfig.get_paths()["include"]
        if shutil.which("cc") is None or not os.path.exists(os.path.join(include, "Python.h")):
            raise SkipTest("no C compiler or Python headers here")
        import txturn

        installed = os.path.join(
            os.path.dirname(os.path.abspath(txturn.__file__ or "")), "fastpath"
        )
        built = [f for f in os.listdir(installed) if f.startswith("_forwarder.")]
        self.assertEqual(len(built), 1, os.listdir(installed))
        self.assertTrue(built[0].endswith(sysconfig.get_config_var("EXT_SUFFIX")))
