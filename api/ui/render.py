"""The console's templates (Jinja2, autoescaped) and the filters they use to show numbers,
durations and times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def duration(seconds: float | None) -> str:
    """``3723`` → ``1h 2m 3s``; None → ``—``."""
    if seconds is None:
        return "—"
    seconds = max(0, round(float(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def number(value: float | None, digits: int = 1) -> str:
    """Thousands separated, ``digits`` decimals for a fraction; None → ``—``."""
    if value is None:
        return "—"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def when(value: datetime | float | str | None) -> str:
    """A time in UTC, to the second (from a datetime, Unix seconds or ISO 8601 text)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(job_id: Any) -> str:
    return str(job_id)[:8]


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.filters.update(duration=duration, number=number, when=when, short=short)
    env.trim_blocks = True
    env.lstrip_blocks = True
    return templates


templates = make_templates()


def fragment(name: str, context: dict[str, Any]) -> str:
    """A partial template rendered alone (what a live update swaps in)."""
    return templates.get_template(name).render(**context)
