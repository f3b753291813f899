"""What every answer of the OpenAI-compatible surface shares: a list page as OpenAI's list
endpoints answer it (what the official client's auto-pagination reads), and times as Unix
seconds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from services.openai_files import Page

T = TypeVar("T")


def timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def listing(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """A page of objects as OpenAI's list endpoints answer it."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def page_of(page: Page[T], shown: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    """A service's page, each item shown as its OpenAI object."""
    return listing([shown(item) for item in page.items], page.has_more)
