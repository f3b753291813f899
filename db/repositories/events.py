"""Job events: the append-only history of a job. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import JobEvent

# --- events -----------------------------------------------------------------------------------


def add_event(
    session: Session, job_id: uuid.UUID, kind: str, message: str, **data: Any
) -> JobEvent:
    event = JobEvent(job_id=job_id, kind=kind, message=message, data=data)
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session, job_id: uuid.UUID, after: int = 0, limit: int = 500
) -> list[JobEvent]:
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )


def last_event(session: Session, job_id: uuid.UUID, kind: str) -> JobEvent | None:
    return session.scalar(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.kind == kind)
        .order_by(JobEvent.id.desc())
        .limit(1)
    )


def events_newest_first(
    session: Session,
    job_id: uuid.UUID,
    limit: int,
    before: int | None = None,
    kinds: tuple[str, ...] | None = None,
) -> tuple[list[JobEvent], bool]:
    """A page of the job's events, newest first, older than event ``before`` (the last of the
    previous page), of ``kinds`` if given; and whether more follow."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if before is not None:
        query = query.where(JobEvent.id < before)
    if kinds is not None:
        query = query.where(JobEvent.kind.in_(kinds))
    rows = list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
