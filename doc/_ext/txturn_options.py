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


class AdminUsageDirective(SphinxDirective):
    """
    ``.. txturn-admin-usage::``: the commands and options of
    ``txturn-admin``, from its own argument parser.
    """

    has_content = False

    def run(self) -> list[Any]:
        import argparse

        from txturn.admin import _parser

        parser = _parser()
        lines: list[str] = [".. rubric:: Options", ""]
        lines += _actions(parser._actions)
        lines += [".. rubric:: Commands", ""]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, command in action.choices.items():
                    usage = " ".join(command.format_usage().split()[1:])
                    lines += [f"``{usage}``", f"    {helps.get(name, '')}", ""]
                    lines += ["    " + line if line else "" for line in _actions(command._actions)]
        node = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, node)
        return list(node.children)


def _actions(actions: list[Any]) -> list[str]:
    import argparse

    lines: list[str] = []
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        spelling = ", ".join(action.option_strings) or action.dest
        if action.option_strings and action.nargs != 0:
            spelling += f" {action.metavar or action.dest.upper()}"
        lines += [f"``{spelling}``", f"    {' '.join((action.help or '').split())}", ""]
    return lines


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("txturn-options", OptionsDirective)
    app.add_directive("txturn-admin-usage", AdminUsageDirective)
    return {"parallel_read_safe": True}
