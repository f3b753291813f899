"""Durations as people write them (``30d``, ``12h``, ``90m``, ``1h30m``) and times given as
either an ISO 8601 time or a duration ago: key lifetimes, rotation grace, audit filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from barge.errors import InvalidSpec, excerpt

MAX_DURATION = timedelta(days=10 * 366)
_PART = re.compile(r"(\d{1,9})\s*(w|d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(
    text: str, field: str, *, allow_zero: bool = False, maximum: timedelta = MAX_DURATION
) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum such as ``1h30m`` (a bare number is
    seconds); InvalidSpec naming ``field`` otherwise."""
    raw = text.strip()
    if raw.isdigit():
        raw += "s"
    parts = _PART.findall(raw)
    if not parts or _PART.sub("", raw).strip():
        raise InvalidSpec(
            f"{field}: {excerpt(text)} is not a duration; write e.g. 30d, 12h, 90m or 1h30m",
            field=field,
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit.lower()] for n, unit in parts)
    if seconds == 0 and not allow_zero:
        raise InvalidSpec(f"{field}: the duration must be longer than 0", field=field)
    if seconds > maximum.total_seconds():
        raise InvalidSpec(f"{field}: at most {maximum.days} days", field=field)
    return timedelta(seconds=seconds)


def parse_time(text: str, field: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC when it names no zone) or a duration before ``now`` (``1h``)."""
    raw = text.strip()
    if raw and (raw[-1:].lower() in _UNIT_SECONDS or raw.isdigit()) and _PART.match(raw):
        return now - parse_duration(raw, field, allow_zero=True)
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidSpec(
            f"{field}: {excerpt(text)} is neither an ISO 8601 time (2026-01-31T12:00:00Z) nor "
            "a duration ago (1h, 7d)",
            field=field,
        ) from None
