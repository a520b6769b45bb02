"""
Secrets given to a command-line tool: from a file or the environment,
and a warning when they come on the command line, which every local user
can read in C{ps} (the server warns the same way about its own options).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO
from urllib.parse import urlsplit


def warn_on_argv(program: str, option: str, instead: str, out: TextIO | None = None) -> None:
    """
    Say on stderr that C{option} was given on the command line, and what
    keeps it out of C{ps}.
    """
    (out or sys.stderr).write(
        f"{program}: {option} on the command line is visible to every local user in ps; "
        f"use {instead}\n"
    )


def url_has_password(url: str | None) -> bool:
    """
    Whether C{url} (a C{redis://} URL) carries a password.
    """
    try:
        return bool(url) and urlsplit(url or "").password is not None
    except ValueError:
        return False


def first_line(path: str) -> str:
    """
    The first line of the file at C{path}, without its line break.
    """
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def from_environment(variable: str) -> str | None:
    return os.environ.get(variable) or None
