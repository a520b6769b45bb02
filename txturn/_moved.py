"""
Old import paths, kept for one release: each module that moved into a
subpackage leaves a stub here that re-exports what L{doc/library.rst}
documented, with a L{DeprecationWarning} on first use of each name
(L{twisted.python.deprecate.deprecatedModuleAttribute}).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from incremental import Version
from twisted.python.deprecate import deprecatedModuleAttribute

#: The release in which the flat module paths were deprecated.
DEPRECATED_IN = Version("txturn", 0, 2, 0)


def moved(old: str, new: str, names: Sequence[str]) -> None:
    """
    Make C{names} of module C{new} reachable from module C{old} (the
    caller's own, which must be imported), each with a deprecation
    warning that names the new path.
    """
    target = importlib.import_module(new)
    stub = sys.modules[old]
    for name in names:
        setattr(stub, name, getattr(target, name))
        deprecatedModuleAttribute(  # type: ignore[no-untyped-call]
            DEPRECATED_IN, f"use {new}.{name} instead", old, name
        )
