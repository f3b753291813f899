"""Live workers: each worker process's presence (queues, device, warm models) and what its
shards are doing. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import Job, Shard, WorkerPresence
from db.state import SHARD_RUNNING


def note_worker(session: Session, name: str, now: datetime, **values: Any) -> None:
    """The worker is alive now, with these ``values`` (host, pid, queues, device, models, ...);
    its row is made on the first call."""
    result = session.execute(
        update(WorkerPresence).where(WorkerPresence.name == name).values(seen_at=now, **values),
        execution_options={"synchronize_session": False},
    )
    if not getattr(result, "rowcount", 0):
        session.add(WorkerPresence(name=name, started_at=now, seen_at=now, **values))
        session.flush()


def remove_worker(session: Session, name: str) -> None:
    session.execute(
        delete(WorkerPresence).where(WorkerPresence.name == name),
        execution_options={"synchronize_session": False},
    )


def workers_seen_since(session: Session, since: datetime) -> list[WorkerPresence]:
    return list(
        session.scalars(
            select(WorkerPresence)
            .where(WorkerPresence.seen_at >= since)
            .order_by(WorkerPresence.host, WorkerPresence.pid)
        )
    )


def prune_workers(session: Session, seen_before: datetime) -> int:
    """Forget workers not seen since ``seen_before`` (they stopped without saying so)."""
    result = session.execute(
        delete(WorkerPresence).where(WorkerPresence.seen_at < seen_before),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class Running:
    """A shard a worker holds under a live lease."""

    worker: str
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    index: int
    attempt: int
    started_at: datetime | None
    records: int


def running_shards(session: Session, now: datetime) -> list[Running]:
    """Every shard held under a live lease, with its job's tenant."""
    rows = session.execute(
        select(
            Shard.worker,
            Shard.job_id,
            Job.tenant_id,
            Shard.index,
            Shard.attempt,
            Shard.started_at,
            Shard.records_succeeded + Shard.records_failed,
        )
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status == SHARD_RUNNING, Shard.lease_expires_at >= now)
    )
    return [
        Running(str(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], int(r[6])) for r in rows if r[0]
    ]
