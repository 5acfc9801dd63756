"""How commands print data: tables through rich for people, ``--json`` for scripts.

One table style for every command (upper-case headers, numbers right-aligned). Colour is off
when stdout is not a terminal or ``NO_COLOR`` is set (rich reads both). Every cell is passed as
``rich.text.Text`` after ``escape``: a header or a job id is whatever its publisher wrote, and
neither rich markup (``[red]``) nor a terminal control character in it may act.

JSON goes to stdout as one object per command, or one object per line (JSON Lines) where a
command streams results (``publish``, ``status --watch``). Its shape is documented in
docs/cli.md and kept stable: fields are added, never renamed or removed. It is pure ASCII
(``\\u`` escapes), so a control character or a bidirectional override from a header cannot
act on the terminal that shows it either.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from jobsys.wire.display import escape

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])

#: Width of a table written to a pipe or a file: wide enough not to wrap ordinary rows (rich
#: would wrap at 80 columns), since a script should read ``--json`` anyway.
_PIPE_WIDTH = 200


def json_option(func: F) -> F:
    """Add ``--json``: print machine-readable output (documented in docs/cli.md)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        default=False,
        help="Print JSON instead of a table (shape in docs/cli.md).",
    )(func)


@dataclass(frozen=True)
class Column:
    """A table column: its header and how its cells line up."""

    header: str
    justify: Literal["left", "right"] = "left"
    #: Cut cells longer than this (with an ellipsis) so one odd value cannot widen the table.
    max_width: int | None = None


def console(*, stderr: bool = False) -> Console:
    """The console a command prints to (stdout, or stderr for progress and notes); made for
    each use, on the streams of the moment (a test runner swaps them)."""
    # rich is imported here, by the commands that print tables, so a worker never loads it.
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> None:
    """Print ``rows`` (plain strings; escaped here) under ``columns``."""
    console().print(table_of(columns, rows))


def table_of(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> Table:
    """``rows`` (plain strings; escaped here) under ``columns``, in the one table style."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(
            column.header.upper(),
            justify=column.justify,
            max_width=column.max_width,
            min_width=len(column.header),  # squeeze the wide values, never a header
            overflow="ellipsis",
            # One line per row, always: a value cut short (with an ellipsis) rather than a row
            # broken over lines that could be read as two; --json has every value whole.
            no_wrap=True,
        )
    for row in rows:
        table.add_row(*(Text(escape(cell)) for cell in row))
    return table


def print_json(value: Any) -> None:
    """Print ``value`` as one JSON document."""
    click.echo(json.dumps(value, indent=2, default=str))


def print_json_line(value: Any) -> None:
    """Print ``value`` as one line of JSON Lines, flushed (a reader may be waiting for it)."""
    click.echo(json.dumps(value, separators=(",", ":"), default=str))
    sys.stdout.flush()


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 job``, ``2 jobs``; ``nouns`` for an irregular plural (``1 entry``, ``2 entries``)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
