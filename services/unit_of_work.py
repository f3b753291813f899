"""A unit of work: one session plus its outbox, the task messages to send once it commits.

The boundary that opens it (an HTTP request, a worker task scope) commits and then sends; a
rollback drops the outbox, so no message ever names a row that was not committed. A crash between
the commit and the sends is covered by the reconciler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session


@dataclass
class UnitOfWork:
    session: Session
    outbox: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def send_after_commit(self, task_name: str, *args: Any, **options: Any) -> None:
        """Queue ``task_name(*args)`` for after the commit (``options``: e.g. ``countdown``)."""
        self.outbox.append((task_name, args, options))
