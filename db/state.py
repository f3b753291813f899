"""The job state machine: the one place job status changes.

``queued → running → succeeded | failed``, with ``cancelling → cancelled`` from any non-final
state, and ``running → pausing → paused → running`` (pause and resume; ``pausing → running``
too: a resume before the running shards finished). A pausing or paused job may still succeed
or fail: the shards running at the pause settle it. Every transition is a conditional UPDATE on
the current status (so two processes cannot both move the same job), stamps its time and
appends a ``job_events`` row; one to a final state also writes its webhook deliveries
(``db.outbox``) in the same transaction, and on Postgres sends ``NOTIFY barge_job_final`` with
the job's id, delivered as it commits (what ``GET /v1/jobs/{id}?wait=`` wakes on).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from barge.errors import IllegalTransition
from barge.status import (  # the vocabulary; re-exported for the state machine's callers
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL,
    IN_PROGRESS,
    JOB_STATUSES,
    PAUSE_STATES,
    PAUSED,
    PAUSING,
    QUEUED,
    RUNNING,
    SHARD_CANCELLED,
    SHARD_FAILED,
    SHARD_FINAL,
    SHARD_PENDING,
    SHARD_RUNNING,
    SHARD_SUCCEEDED,
    SUCCEEDED,
)
from db import outbox
from db.base import utcnow
from db.models import Job, JobEvent

__all__ = [
    "CANCELLED",
    "CANCELLING",
    "FAILED",
    "FINAL",
    "IN_PROGRESS",
    "JOB_STATUSES",
    "PAUSED",
    "PAUSE_STATES",
    "PAUSING",
    "QUEUED",
    "RUNNING",
    "SHARD_CANCELLED",
    "SHARD_FAILED",
    "SHARD_FINAL",
    "SHARD_PENDING",
    "SHARD_RUNNING",
    "SHARD_SUCCEEDED",
    "SUCCEEDED",
    "TRANSITIONS",
    "is_legal",
    "transition",
]

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED, CANCELLING}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, PAUSING}),
    PAUSING: frozenset({PAUSED, RUNNING, SUCCEEDED, FAILED, CANCELLING}),
    PAUSED: frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLING}),
    CANCELLING: frozenset({CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def is_legal(src: str, dst: str) -> bool:
    return dst in TRANSITIONS.get(src, frozenset())


JOB_FINAL_CHANNEL = "barge_job_final"  # Postgres NOTIFY channel: a job id, as it commits final


def notify_final(session: Session, job_id: uuid.UUID) -> None:
    """On Postgres, ``NOTIFY`` the job's id on ``JOB_FINAL_CHANNEL``: delivered when (and
    only if) this transaction commits, to the API processes waiting on the job
    (``api.waits``); nothing on another database (they check instead)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :id)"),
            {"channel": JOB_FINAL_CHANNEL, "id": str(job_id)},
        )


def transition(
    session: Session,
    job: Job,
    to: str,
    *,
    message: str = "",
    error: str | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Move ``job`` to ``to`` or raise IllegalTransition; flushes, never commits."""
    src = job.status
    if not is_legal(src, to):
        raise IllegalTransition(f"job {job.id} cannot go from {src} to {to}")
    now = utcnow()
    values: dict[str, Any] = {"status": to, "updated_at": now}
    if to == RUNNING and job.started_at is None:
        values["started_at"] = now
    if to in FINAL:
        values["finished_at"] = now
    if error is not None:
        values["error"] = error
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.status == src).values(**values),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(job)
        raise IllegalTransition(
            f"job {job.id} changed concurrently (now {job.status}); cannot go from {src} to {to}"
        )
    for key, value in values.items():
        set_committed_value(job, key, value)
    if to in FINAL:
        notify_final(session, job.id)
    event = JobEvent(
        job_id=job.id,
        at=now,
        kind="status",
        from_status=src,
        to_status=to,
        message=message or (error or ""),
        data=data or {},
    )
    session.add(event)
    session.flush()
    if to in FINAL:  # its webhooks, in this very transaction
        outbox.job_finished(session, job, to, now)
    return event
