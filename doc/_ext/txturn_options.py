"""
A Sphinx directive, ``.. txturn-options::``, that writes the configuration
reference from txturn's own ``Options``: every option, in the groups of
``twistd turn --help``, with its default and coturn's name beside it, so
the reference cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from txturn.config_file import coturn_name
from txturn.options import _GROUPS, _METAVARS, Options


def _entries() -> dict[str, tuple[str, str | None, str]]:
    """
    name -> (spelling, default, text) for every option.
    """
    options = Options()
    found: dict[str, tuple[str, str | None, str]] = {}
    for long, short, default, doc, *_ in options.optParameters:
        metavar = _METAVARS.get(long, "VALUE")
        found[long] = (f"--{long}={metavar}", default, doc)
    for long, short, doc in options.optFlags:
        found[long] = (f"--{long}", None, doc)
    for name in (
        "listen",
        "relay-ip",
        "user",
        "external-ip",
        "allowed-peer-ip",
        "denied-peer-ip",
        "nat64-prefix",
        "static-auth-secret",
        "alternate-server",
    ):
        method = getattr(options, "opt_" + name.replace("-", "_"))
        found[name] = (f"--{name}=VALUE", None, " ".join((method.__doc__ or "").split()))
    found["help"] = ("--help", None, "Show the help and exit.")
    found["version"] = ("--version", None, "Show txturn's version and exit.")
    return found


class OptionsDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[Any]:
        entries = _entries()
        lines: list[str] = []
        for title, names in _GROUPS:
            lines += [f".. rubric:: {title or 'Other'}", ""]
            for name in names:
                spelling, default, text = entries[name]
                lines.append(f"``{spelling}``")
                body = " ".join(text.split())
                if default:
                    body += f" Default: ``{default}``."
                coturn = coturn_name(name)
                if coturn:
                    body += f" coturn: ``{coturn}``."
                lines += [f"    {body}", ""]
        node = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, node)
        return list(node.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("txturn-options", OptionsDirective)
    return {"parallel_read_safe": True}
