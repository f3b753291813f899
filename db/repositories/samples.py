"""Progress samples: a job's counts over time, at most one row per job per slot, and their
pruning. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import case, delete, exists, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.base import UTCDateTime
from db.models import Job, JobSample, Shard
from db.state import FINAL, SHARD_RUNNING


def add_job_sample(
    session: Session, job_id: uuid.UUID, slot: int, at: datetime, *, replace: bool = False
) -> bool:
    """Note the job's progress now (its shards' counts summed) as the sample of ``slot``, unless
    that slot has one already (then nothing is written: at most one row per job per slot,
    however many workers heartbeat), or with ``replace`` in its place (an attempt that ended:
    the job's newest sample shows where it stands). Whether a row was written."""
    taken = select(exists().where(JobSample.job_id == job_id, JobSample.slot == slot))
    if not replace and session.scalar(taken):
        return False
    running = func.sum(case((Shard.status == SHARD_RUNNING, 1), else_=0))
    sums = select(
        literal(job_id),
        literal(slot),
        literal(at, UTCDateTime()),
        func.coalesce(func.sum(Shard.records_succeeded), 0),
        func.coalesce(func.sum(Shard.records_failed), 0),
        func.coalesce(func.sum(Shard.steps_done), 0),
        func.coalesce(func.sum(Shard.tokens_out), 0),
        func.coalesce(running, 0),
    ).where(Shard.job_id == job_id)
    columns = [
        "job_id",
        "slot",
        "at",
        "records_succeeded",
        "records_failed",
        "steps_done",
        "tokens_out",
        "shards_running",
    ]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    insert = dialect.insert(JobSample).from_select(columns, sums)
    keys = ["job_id", "slot"]
    statement = (
        insert.on_conflict_do_update(
            index_elements=keys,
            set_={c: getattr(insert.excluded, c) for c in columns if c not in keys},
        )
        if replace
        else insert.on_conflict_do_nothing(index_elements=keys)
    )
    result = session.execute(statement)
    return bool(getattr(result, "rowcount", 0))


def job_samples(session: Session, job_id: uuid.UUID, limit: int = 5000) -> list[JobSample]:
    """The job's samples, oldest first (the newest ``limit`` of them)."""
    newest = list(
        session.scalars(
            select(JobSample)
            .where(JobSample.job_id == job_id)
            .order_by(JobSample.slot.desc())
            .limit(limit)
        )
    )
    return newest[::-1]


def prune_samples(session: Session, finished_before: datetime, limit: int) -> int:
    """Delete the samples of up to ``limit`` jobs that finished before ``finished_before``; how
    many rows went. Found from the samples' side: that table holds only the jobs not pruned
    yet, so a pass costs the same with a million finished jobs as with ten."""
    done = list(
        session.scalars(
            select(JobSample.job_id)
            .join(Job, Job.id == JobSample.job_id)
            .where(Job.status.in_(sorted(FINAL)), Job.finished_at < finished_before)
            .group_by(JobSample.job_id)
            .limit(limit)
        )
    )
    if not done:
        return 0
    result = session.execute(
        delete(JobSample).where(JobSample.job_id.in_(done)),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0))
