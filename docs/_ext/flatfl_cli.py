"""``{flatfl-cli} COMMAND``: the ``--help`` text of a flatfl command, rendered from flatfl.cli's parsers.

The reference cannot drift from the program: the page is built from ``flatfl.cli.build_parser()`` itself,
the same object ``flatfl COMMAND --help`` prints. ``COMMAND`` is ``flatfl`` (the top level), a command
(``train``) or a command and its sub-command (``data shakespeare``).
"""

from __future__ import annotations

import argparse

from docutils import nodes
from docutils.parsers.rst import Directive


def command_parser(words: list[str]) -> argparse.ArgumentParser:
    """The parser of ``flatfl WORDS...`` (no words: the top-level parser)."""
    from flatfl.cli import build_parser

    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
        parser = sub.choices[word]
    return parser


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    """The sub-commands of a parser, in the order ``--help`` lists them (empty for a leaf)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    return list(subs[0].choices) if subs else []


class FlatflCli(Directive):
    """Renders ``flatfl WORDS --help`` as a literal block."""

    required_arguments = 0
    optional_arguments = 3
    has_content = False

    def run(self) -> list[nodes.Node]:
        words = [w for w in self.arguments if w != "flatfl"]
        text = command_parser(words).format_help()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):  # noqa: ANN001, ANN201
    """Registers the ``flatfl-cli`` directive."""
    app.add_directive("flatfl-cli", FlatflCli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
