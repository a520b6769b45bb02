"""
Text a client or a server sent, made safe for a terminal or a log line.

A SOFTWARE attribute, an error reason or a username can hold escape
sequences (``ESC[2J`` clears an operator's terminal) or line breaks (a
forged log line).  L{printable} writes every control, format, surrogate,
private-use or unassigned character as a Python escape, and leaves the
rest, including every printable non-ASCII letter, as it was.
"""

from __future__ import annotations

import unicodedata


def printable(text: str, keep: str = "") -> str:
    """
    C{text} with every character that is not printable (Unicode category
    C*, or a line or paragraph separator) escaped as C{\\xNN},
    C{\\uNNNN} or C{\\UNNNNNNNN}; the characters in C{keep} (C{"\\n"} for
    a table of lines) are left.
    """
    if text.isprintable() and not keep:
        return text
    return "".join(
        c
        if c in keep or (c.isprintable() and unicodedata.category(c)[0] != "C")
        else c.encode("unicode_escape").decode("ascii")
        for c in text
    )
