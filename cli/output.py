"""How every list and get of ``barge`` prints what it got: one set of options, one function.

- no option: a table (``cli.tables``: boxed on a terminal, plain aligned lines in a pipe), or a
  few lines for a single object;
- ``-o wide``: the same with more columns;
- ``-o json`` (or ``--json``): the API's answer as it came, indented JSON;
- ``-o yaml``: the same as YAML;
- ``-o name`` (or ``-q``): the ids only, one per line, for ``xargs`` and loops.

Imports: ``cli.render``, ``cli.tables``, pyyaml.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml

from cli.render import to_json
from cli.tables import Item, show

FORMATS = ("json", "yaml", "wide", "name")

# Builds what a table shows: ``wide`` asks for the extra columns.
Shown = Callable[[bool], Sequence[Item]]


def add_output_options(parser: argparse.ArgumentParser, names: str = "ids") -> None:
    """``-o/--output``, ``--json`` and ``-q/--quiet`` on ``parser`` (a list or a get); ``names``
    says what ``-o name`` prints (ids, names, ...)."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=None,
        help=f"json or yaml: the API's answer as it came; wide: the table with more columns; "
        f"name: the {names} only, one per line (default: a table)",
    )
    group.add_argument(
        "--json", dest="output", action="store_const", const="json", help="the same as -o json"
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="output",
        action="store_const",
        const="name",
        help=f"the {names} only, one per line (the same as -o name)",
    )


def to_yaml(data: Any) -> str:
    # Through JSON first: what YAML shows is exactly what -o json shows (datetimes as strings).
    plain = json.loads(json.dumps(data, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)


def output_format(args: argparse.Namespace) -> str | None:
    """The format asked for on the command line, or None for the default table."""
    value = getattr(args, "output", None)
    return value if value in FORMATS else None


def emit(args: argparse.Namespace, data: Any, names: Iterable[Any], shown: Shown) -> None:
    """Print ``data`` (the API's answer) as ``args`` asks: JSON, YAML, ``names`` one per line,
    or the items ``shown`` builds (``shown(True)`` for ``-o wide``)."""
    fmt = output_format(args)
    if fmt == "json":
        print(to_json(data))
    elif fmt == "yaml":
        print(to_yaml(data), end="")
    elif fmt == "name":
        for name in names:
            print(name)
    else:
        show(*shown(fmt == "wide"))
