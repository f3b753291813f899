"""How ``barge`` prints tables, through rich: boxed, aligned and coloured on a terminal; plain
aligned text everywhere else (a pipe, a file, a test), so that ``barge list | grep running`` and
``| head -1`` keep working.

What a command shows is a sequence of items: lines of text and tables made by ``table``.

- On a terminal, a rich ``Console`` prints them: rounded boxes, bold headers, statuses in colour
  (none under ``NO_COLOR``), columns fitted to the terminal's width. No cell is ever cut: text
  wraps, and a ``no_wrap`` column (ids, counts) keeps the width of its widest cell.
- Anywhere else, each table is laid out by rich with no box, no styles and two spaces between
  columns: a header line, then exactly one line per row (a newline inside a cell becomes a
  space), nothing after the last character of a line. Whether stdout is a terminal is decided
  by ``isatty`` alone: ``FORCE_COLOR`` does not put escape codes into a pipe.

Imports: rich only.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

__all__ = [
    "Column",
    "Item",
    "fit",
    "is_terminal",
    "lines",
    "show",
    "status",
    "table",
    "terminal_console",
    "terminal_view",
]

Item = str | Text | Table  # one line of text (or several), or a table

# The colour of a job, shard or key status on a terminal.
STATUS_STYLES = {
    "queued": "cyan",
    "pending": "cyan",
    "running": "bold blue",
    "pausing": "magenta",
    "paused": "magenta",
    "succeeded": "green",
    "failed": "bold red",
    "cancelling": "yellow",
    "cancelled": "yellow",
    "active": "green",
    "revoked": "red",
    "expired": "yellow",
}
# The narrowest a column of long text gets on a narrow terminal.
_WRAP_MIN = 16
# Wide enough that rich never narrows a column when it lays out a table for a pipe.
_PLAIN_WIDTH = 1_000_000


def status(value: str) -> Text:
    """A status cell: coloured on a terminal, plain text in a pipe."""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _cell(value: str | Text) -> Text:
    text = value if isinstance(value, Text) else Text(value)
    return text if "\n" not in text.plain else Text(text.plain.replace("\n", " "), text.style)


def table(columns: Sequence[Column | str], rows: Iterable[Sequence[str | Text]]) -> Table:
    """A table of ``rows`` under ``columns`` (names, or rich ``Column``s for alignment and
    ``no_wrap``). Cells are text as given: never read as rich markup."""
    # A fresh copy of each column: a Column holds its cells, and callers may keep theirs in constants.
    cols = [
        dataclasses.replace(c, _cells=[]) if isinstance(c, Column) else Column(c) for c in columns
    ]
    t = Table(*cols, box=box.ROUNDED, header_style="bold", highlight=False)
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    for col in t.columns:
        if col.no_wrap:  # an id keeps its width whatever the terminal's
            widest = max((c.cell_len for c in col.cells if isinstance(c, Text)), default=0)
            col.min_width = max(col.min_width or 0, widest, len(str(col.header)))
        else:  # long text (a URI, an error) wraps, never narrower than a few characters
            col.overflow = "fold"
            widest = max((c.cell_len for c in col.cells if isinstance(c, Text)), default=0)
            col.min_width = max(min(widest, _WRAP_MIN), len(str(col.header)))
    return t


def _plain_table(t: Table) -> list[str]:
    plain = copy.copy(t)
    plain.box = None
    plain.show_edge = False
    plain.pad_edge = False
    plain.header_style = ""
    plain.padding = (0, 1)
    out = io.StringIO()
    console = Console(
        file=out,
        width=_PLAIN_WIDTH,
        color_system=None,
        force_terminal=False,
        force_interactive=False,
        no_color=True,
        highlight=False,
        markup=False,
        emoji=False,
        legacy_windows=False,
    )
    console.print(plain, crop=False)
    return [line.rstrip() for line in out.getvalue().splitlines()]


def lines(*items: Item) -> Iterator[str]:
    """``items`` as plain text, line by line (what a pipe gets)."""
    for item in items:
        if isinstance(item, Table):
            yield from _plain_table(item)
        else:
            yield from (item.plain if isinstance(item, Text) else item).splitlines() or [""]


def terminal_console(file: IO[str]) -> Console:
    """A rich console on ``file`` (a terminal): its width, colours unless ``NO_COLOR``."""
    return Console(file=file, highlight=False, markup=False, emoji=False)


def terminal_view(*items: Item) -> Group:
    """``items`` as one rich renderable (what a terminal gets, or a live view redraws)."""
    return Group(*(Text(i) if isinstance(i, str) else i for i in items))


def _narrowest(view: RenderableType) -> int:
    """The width ``view`` needs at least on a terminal: each column at its minimum width, with
    its padding (one space each side) and the box's lines."""
    items = view.renderables if isinstance(view, Group) else [view]
    return max(
        (
            sum((c.min_width or 1) + 3 for c in t.columns) + 1
            for t in items
            if isinstance(t, Table) and t.columns
        ),
        default=0,
    )


def fit(console: Console, view: RenderableType) -> RenderableType:
    """``view``, with ``console`` widened to hold it if the terminal is narrower than its
    narrowest layout: the terminal then wraps the lines, rather than rich cutting an id."""
    needed = _narrowest(view)
    if needed > console.width:
        console.width = needed
    return view


def is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # not a real file, or a closed one
        return False


def show(*items: Item, file: IO[str] | None = None) -> None:
    """Print ``items`` on ``file`` (stdout): through rich on a terminal, as ``lines`` elsewhere
    (with ``print``, so a reader that went away is a ``BrokenPipeError`` for ``cli.main``)."""
    out = file or sys.stdout
    if is_terminal(out):
        console = terminal_console(out)
        console.print(fit(console, terminal_view(*items)))
    else:
        for line in lines(*items):
            print(line, file=out)
