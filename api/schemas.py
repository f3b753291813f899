"""Response bodies, and what every request body must be to be storable."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ProgressOut(BaseModel):
    records_total: int | None
    records_succeeded: int
    records_failed: int
    shards_total: int | None
    shards_done: int
    records_per_second: float | None
    eta_seconds: float | None
    steps_done: int | None = Field(None, description="Fine-tunes: optimizer steps done.")
    steps_total: int | None = Field(None, description="Fine-tunes: optimizer steps in all.")


class OutputOut(BaseModel):
    uri: str
    manifest: str | None
    errors: str | None


class JobOut(BaseModel):
    id: str
    type: str
    status: str
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: ProgressOut
    output: OutputOut
    error: str | None
    metadata: dict[str, Any]


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: str
    from_status: str | None
    to_status: str | None
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    events: list[EventOut]
    next_after: int


class ShardOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    index: int
    status: str
    source: str = Field(validation_alias="source_uri")
    start_record: int
    record_count: int
    attempt: int
    worker: str | None
    records_succeeded: int
    records_failed: int
    last_error: str | None
    lease_expires_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class ShardList(BaseModel):
    shards: list[ShardOut]


class ErrorOut(BaseModel):
    error: str
    message: str
    field: str | None = None
    detail: Any = None


# The error bodies every /v1 route can answer with, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 422)
}


# --- request values Postgres cannot store ------------------------------------------------------

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
