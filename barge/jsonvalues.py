"""JSON values a user sends that a JSON column cannot store faithfully, and how messages name
where they are. One implementation for request bodies, specs, templates and registry metadata."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MAX_NESTING = 32  # levels of lists and objects in metadata, params and templates

NAME_CHARS = 60  # a field name longer than this is cut when a message names it


def field_name(parts: Iterable[object]) -> str:
    """``a.b.3``: a location in a request, each part cut to NAME_CHARS (keys are user input)."""
    names = []
    for part in parts:
        name = str(part)
        names.append(name if len(name) <= NAME_CHARS else f"{name[:NAME_CHARS]}…")
    return ".".join(names)


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "text must not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (no lone surrogates such as \\ud800)"
    return None


def unstorable(value: Any, *, text: bool = True) -> tuple[tuple[Any, ...], str] | None:
    """Where and why a parsed JSON ``value`` holds something Postgres cannot store: a NaN or
    infinite number (``json.loads`` accepts ``NaN``, ``Infinity`` and ``1e400``) and, with
    ``text``, a string or key with a NUL or a lone surrogate (a bad key is reported at the object
    that holds it). The first problem in document order is the one reported."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        problem: str | None = None
        if isinstance(item, float) and not math.isfinite(item):
            problem = "numbers must be finite (NaN and Infinity are not JSON)"
        elif text and isinstance(item, str):
            problem = _text_problem(item)
        if problem:
            return path, problem
        if isinstance(item, dict):
            for key in item:
                if text and isinstance(key, str) and (key_problem := _text_problem(key)):
                    return path, f"keys: {key_problem}"
            stack.extend(((*path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(item))))
    return None


def check_json_value(value: Any) -> None:
    """Raise ValueError (with what is wrong and where) if ``value`` holds what a JSON column
    cannot store: NUL characters, lone surrogates, non-finite numbers, or nesting deeper than
    MAX_NESTING."""
    found = unstorable(value)
    if found is not None:
        path, problem = found
        raise ValueError(f"{problem} (at {field_name(path)})" if path else problem)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ValueError(f"is nested deeper than {MAX_NESTING} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
