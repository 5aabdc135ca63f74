"""Command modules that sit above the features they combine (imported by ``cli.py`` only when their command runs).

Nothing here imports torch at the top, so that ``deepfake COMMAND --help`` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import textwrap
from pathlib import Path

# The data module's source: its signature and docstring are the ``--data.*`` options of every command that reads
# data. Read with ``ast``, not imported, so that a command's --help does not load torch; no key is listed twice.
DATAMODULE_SOURCE = Path(__file__).resolve().parents[1] / "data" / "datamodule.py"


@functools.cache
def data_options() -> tuple[tuple[str, str], ...]:
    """``(key, first sentence of its description)`` of every ``DeepfakeDataModule.__init__`` argument, in order."""
    tree = ast.parse(DATAMODULE_SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepfakeDataModule")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    described: dict[str, str] = {}
    key = None
    for line in (ast.get_docstring(cls) or "").split("Args:", 1)[-1].splitlines():
        found = re.match(r"    (\w+): (.*)", line)
        if found:
            key, described[found.group(1)] = found.group(1), found.group(2)
        elif key and line.startswith("        "):
            described[key] += " " + line.strip()
        elif line.strip():
            key = None

    def first(text: str) -> str:  # its first sentence, in plain back-quotes
        return re.split(r"(?<!e\.g)(?<!i\.e)(?<=[a-zA-Z)`'])\. ", text, maxsplit=1)[0].rstrip(".").replace("``", "`")

    return tuple((a.arg, first(described.get(a.arg, ""))) for a in [*init.args.args[1:], *init.args.kwonlyargs])


def data_keys() -> list[str]:
    """Every ``--data.*`` key (the data module's signature)."""
    return [key for key, _ in data_options()]


class DataOptionsHelp(argparse.HelpFormatter):
    """argparse's help, with the data options' epilog kept as the table it is written as."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EPILOG_HEADING):  # the table, wrapped to the terminal's width (argparse's COLUMNS)
            return "\n".join(
                textwrap.fill(text, width, initial_indent=indent) if not text.startswith("  ") else text
                for text in _table(width).splitlines()
            )
        return super()._fill_text(text, width, indent)


EPILOG_HEADING = "data options"


def data_options_epilog() -> str:
    """The ``--help`` epilog of a command that reads data (``DataOptionsHelp`` lays out the table)."""
    return EPILOG_HEADING


def _table(width: int) -> str:
    """Every ``--data.*`` option with what it does, wrapped to ``width`` columns."""
    key_width = max(len(k) for k, _ in data_options()) + len("--data.") + 2
    rows = [
        textwrap.fill(
            text, max(width, key_width + 30), initial_indent=f"  {'--data.' + k:<{key_width}}",
            subsequent_indent=" " * (key_width + 2),
        )
        for k, text in data_options()
    ]  # fmt: skip
    return (
        f"{EPILOG_HEADING} (with --config FILE, read as `deepfake fit` reads them; `deepfake fit --help` describes "
        "them too; a Kaggle-layout folder without a test.csv needs --data.test_v2_csv null):\n" + "\n".join(rows)
    )
