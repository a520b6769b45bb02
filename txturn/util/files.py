"""
Files the server writes that name users and their addresses (usage
records, JSON logs): created readable by the server's user and group
only (0640, or less under a stricter umask), never by everyone.  An
existing file keeps the mode its operator gave it.
"""

from __future__ import annotations

import os
from typing import TextIO

#: The mode of a file created for appending records.
PRIVATE_MODE = 0o640


def append_private(path: str) -> TextIO:
    """
    C{path} opened for appending text, created with L{PRIVATE_MODE}.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    return os.fdopen(descriptor, "a", encoding="utf-8")
