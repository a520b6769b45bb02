"""
The shape of the package: layered subpackages with one import direction
and no import cycle, read from the installed package's source.

    util <- wire <- auth <- core <- fastpath <- transports
         <- {observers, fleet} <- sessions <- app <- workers <- tools <- txturn.tap,
    txturn.service (the entry points); txturn.testing beside them all.

A module may import its own package and any layer below it, never one
above it nor a sibling of its own rank; every import counts, those made
inside functions or for type checking too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

#: Each subpackage's rank; a module may import only lower ranks (and its own
#: package).  observers and fleet share a rank: neither imports the other;
#: sessions is above fleet, whose Redis link answers for a whole fleet.
RANKS = {
    "util": 0,
    "wire": 1,
    "auth": 2,
    "core": 3,
    "fastpath": 4,
    "transports": 5,
    "observers": 6,
    "fleet": 6,
    "sessions": 7,
    "app": 8,
    "workers": 9,
    "tools": 10,
    # txturn.tap, txturn.service and the deprecated flat paths: 11.
    "testing": 12,
}
#: What a sans-io module may not import: the global reactor, Twisted's
#: socket ports, TLS (the socket module's address functions are allowed;
#: its sockets are not, L{SOCKETS}).
NOT_SANS_IO = (
    "twisted.internet.reactor",
    "twisted.internet.udp",
    "twisted.internet.tcp",
    "twisted.internet.ssl",
    "OpenSSL",
)
#: What opens a socket.
SOCKETS = ("socket", "socketpair", "create_connection", "create_server", "fromfd")
SANS_IO = ("wire", "core")


def package_root() -> str:
    spec = importlib.util.find_spec("txturn")
    assert spec is not None and spec.submodule_search_locations
    return list(spec.submodule_search_locations)[0]


def modules(root: str) -> dict[str, str]:
    """
    Dotted name -> source path of every module of the package.
    """
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = ["txturn", *os.path.relpath(path, root)[:-3].split(os.sep)]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(module: str, path: str, known: dict[str, str]) -> Iterator[str]:
    """
    Every module C{module} imports, anywhere in its source.
    """
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # "from txturn.util import privileged" imports a module.
                candidate = f"{target}.{alias.name}"
                yield candidate if candidate in known else target


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else "top"


def rank(module: str) -> int:
    return RANKS.get(layer(module), 11)


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.modules = modules(package_root())
        self.graph = {
            name: {
                target
                for target in imports(name, path, self.modules)
                if target in self.modules and target not in (name, "txturn")
            }
            for name, path in self.modules.items()
        }

    def test_subpackages(self) -> None:
        """
        Every layer is a package, and the only modules left at the top
        are the entry points and the deprecated flat paths.
        """
        for name in RANKS:
            self.assertIn(f"txturn.{name}", self.modules)
        top = {m for m in self.modules if m.count(".") == 1 and layer(m) == "top"}
        for module in top - {"txturn.tap", "txturn.service", "txturn._moved"}:
            with open(self.modules[module], encoding="utf-8") as f:
                self.assertIn("Deprecated since", f.read(), module)

    def test_one_direction(self) -> None:
        """
        No module imports a layer above its own, or a sibling layer.
        """
        upward = [
            f"{module} -> {target}"
            for module, targets in sorted(self.graph.items())
            for target in sorted(targets)
            if layer(target) != layer(module) and rank(target) >= rank(module)
        ]
        self.assertEqual(upward, [])

    def test_no_cycle(self) -> None:
        """
        No module imports itself through others.
        """
        cycles = []
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(module: str) -> None:
            state[module] = 1
            path.append(module)
            for target in sorted(self.graph[module]):
                if state.get(target) == 1:
                    cycles.append(path[path.index(target) :] + [target])
                elif target not in state:
                    visit(target)
            path.pop()
            state[module] = 2

        for module in sorted(self.graph):
            if module not in state:
                visit(module)
        self.assertEqual(cycles, [])

    def test_sans_io(self) -> None:
        """
        The codec and the core open no socket and name no global reactor.
        """
        found = [
            f"{module} imports {target}"
            for module, path in sorted(self.modules.items())
            if layer(module) in SANS_IO
            for target in imports(module, path, self.modules)
            if any(target == banned or target.startswith(banned + ".") for banned in NOT_SANS_IO)
        ]
        self.assertEqual(found, [])

    def test_no_socket(self) -> None:
        """
        Nor does either make a socket.
        """
        found = []
        for module, path in sorted(self.modules.items()):
            if layer(module) not in SANS_IO:
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "socket"
                    and node.attr in SOCKETS
                ):
                    found.append(f"{module}:{node.lineno} socket.{node.attr}")
        self.assertEqual(found, [])

    def test_test_machinery_apart(self) -> None:
        """
        Nothing the server runs imports the test machinery.
        """
        found = [
            f"{module} -> {target}"
            for module, targets in sorted(self.graph.items())
            if layer(module) != "testing"
            for target in targets
            if layer(target) == "testing"
        ]
        self.assertEqual(found, [])

    def test_detects(self) -> None:
        """
        The checks see what they look for: a core module importing the
        application is upward, and two modules importing each other are a
        cycle.
        """
        self.graph["txturn.core.server"].add("txturn.app.service")
        self.graph["txturn.app.service"].add("txturn.core.server")
        self.assertRaises(self.failureException, self.test_one_direction)
        self.assertRaises(self.failureException, self.test_no_cycle)


class MovedTests(SynchronousTestCase):
    """
    The flat paths doc/library.rst documented before the layers still
    work, and say where things are now.
    """

    def test_deprecated_paths(self) -> None:
        from txturn import server as old  # the stub module
        from txturn.core.server import TurnServer

        found = getattr(old, "TurnServer")  # noqa: B009 (not declared: set by moved())
        self.assertIs(found, TurnServer)
        warnings = self.flushWarnings()
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["category"], DeprecationWarning)
        self.assertIn("use txturn.core.server.TurnServer instead", warnings[0]["message"])

    def test_json_logger(self) -> None:
        """
        twistd --logger=txturn.json_log.stdout_observer, as operators'
        unit files say, still names the JSON observer.
        """
        from twisted.python.reflect import namedAny

        from txturn.observers.json_log import stdout_observer

        self.assertIs(namedAny("txturn.json_log.stdout_observer"), stdout_observer)
