"""Job events: the append-only history of a job. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Job, JobEvent

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


def prune_events(session: Session, finished_before: datetime, limit: int) -> tuple[int, int]:
    """Delete the events of up to ``limit`` jobs that finished before ``finished_before`` and
    mark them pruned (``events_pruned_at``: a job is pruned once, found by
    ``ix_jobs_events_to_prune``); (jobs, events deleted). Rows another pass is pruning are
    skipped (SKIP LOCKED)."""
    jobs = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.finished_at.is_not(None),
                Job.events_pruned_at.is_(None),
                Job.finished_at < finished_before,
            )
            .order_by(Job.finished_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not jobs:
        return 0, 0
    result = session.execute(
        delete(JobEvent).where(JobEvent.job_id.in_(jobs)),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(Job)
        .where(Job.id.in_(jobs))
        .values(events_pruned_at=utcnow(), updated_at=Job.updated_at),
        execution_options={"synchronize_session": False},
    )
    return len(jobs), int(getattr(result, "rowcount", 0))
