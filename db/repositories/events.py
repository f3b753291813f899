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
