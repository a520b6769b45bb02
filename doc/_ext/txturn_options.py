"""
Sphinx directives that write the configuration reference (and with it
the man page) from the code: ``.. txturn-options::`` from the option
table (``txturn.app.option_table``), every option in the groups of
``twistd turn --help`` with its default, coturn's name and what a reload
does with it, so the reference cannot drift from the code; and
``.. txturn-admin-usage::`` from txturn-admin's argument parser.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from txturn.app.option_table import GROUPS, in_group


class OptionsDirective(SphinxDirective):
    """
    ``.. txturn-options::``: every row of the option table, in the groups
    of ``--help``, with its default, coturn's name and what a reload does.
    """

    has_content = False

    def run(self) -> list[Any]:
        lines: list[str] = []
        for title in GROUPS:
            lines += [f".. rubric:: {title or 'Other'}", ""]
            for spec in in_group(title):
                spelling = f"--{spec.name}" if spec.flag else f"--{spec.name}={spec.metavar}"
                if spec.short:
                    spelling = f"-{spec.short}, {spelling}"
                lines.append(f"``{spelling}``")
                body = " ".join(spec.help.split())
                if spec.default:
                    body += f" Default: ``{spec.default}``."
                if spec.coturn:
                    body += f" coturn: ``{spec.coturn}``."
                if spec.reload.value != "not a setting":
                    body += f" Reload: {spec.reload.value}."
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

        from txturn.tools.admin import _parser

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


#: newsfragments/ types, in the order towncrier renders them (pyproject.toml).
_FRAGMENT_TYPES = {
    "feature": "Features",
    "bugfix": "Fixes",
    "removal": "Deprecations and removals",
    "doc": "Documentation",
    "misc": "For developers",
}


class NewsFragmentsDirective(SphinxDirective):
    """
    ``.. txturn-newsfragments::``: the changes not yet released, from
    ``newsfragments/`` as ``towncrier build`` will gather them, so the
    changelog on the site is current between releases.
    """

    has_content = False

    def run(self) -> list[Any]:
        import os

        directory = os.path.join(os.path.dirname(self.env.srcdir), "newsfragments")
        found: dict[str, list[str]] = {kind: [] for kind in _FRAGMENT_TYPES}
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        for name in names:
            issue, _, rest = name.partition(".")
            kind = rest.split(".")[0]
            if kind not in found:
                continue
            path = os.path.join(directory, name)
            self.env.note_dependency(path)
            with open(path, encoding="utf-8") as f:
                text = " ".join(f.read().split())
            found[kind].append(f"- {text} (issue {issue})")
        lines: list[str] = []
        for kind, entries in found.items():
            if entries:
                lines += [f".. rubric:: {_FRAGMENT_TYPES[kind]}", "", *entries, ""]
        node = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, node)
        return list(node.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("txturn-newsfragments", NewsFragmentsDirective)
    app.add_directive("txturn-options", OptionsDirective)
    app.add_directive("txturn-admin-usage", AdminUsageDirective)
    return {"parallel_read_safe": True}
