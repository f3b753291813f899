"""Shard attempts: one row per claim of a shard (its worker, start, end, outcome) with what the
attempt used, and the aggregates read from them; the throughput each model reached per task and
device, added to as attempts succeed. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from db.models import Job, Shard, ShardAttempt, Throughput

# What ``end_attempt`` may set.
USAGE_FIELDS = (
    "device",
    "device_name",
    "gpus",
    "wall_seconds",
    "load_seconds",
    "busy_seconds",
    "cpu_seconds",
    "gpu_seconds",
    "energy_joules",
    "devices",
    "tokens_in",
    "tokens_out",
)


def start_attempt(
    session: Session,
    shard_id: uuid.UUID,
    job_id: uuid.UUID,
    attempt: int,
    worker: str,
    now: datetime,
) -> None:
    """The attempt's row, written in the transaction of its claim."""
    session.execute(
        insert(ShardAttempt).values(
            shard_id=shard_id,
            job_id=job_id,
            attempt=attempt,
            worker=worker,
            started_at=now,
            seen_at=now,
            records_succeeded=0,
            records_failed=0,
        )
    )


def touch_attempt(session: Session, shard_id: uuid.UUID, attempt: int, now: datetime) -> None:
    """The attempt's worker was alive at ``now``."""
    session.execute(
        update(ShardAttempt)
        .where(ShardAttempt.shard_id == shard_id, ShardAttempt.attempt == attempt)
        .values(seen_at=now),
        execution_options={"synchronize_session": False},
    )


def end_attempt(
    session: Session,
    shard_id: uuid.UUID,
    attempt: int,
    now: datetime,
    *,
    outcome: str,
    succeeded: int,
    failed: int,
    steps_done: int | None = None,
    error: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bool:
    """How the attempt ended and what it used (``USAGE_FIELDS``); once only."""
    last_error = select(Shard.last_error).where(Shard.id == shard_id).scalar_subquery()
    values: dict[str, Any] = {
        "finished_at": now,
        "seen_at": now,
        "outcome": outcome,
        "records_succeeded": succeeded,
        "records_failed": failed,
        "steps_done": steps_done,
        # a failed or retried attempt's error is the one its shard noted
        "error": error if error is not None or outcome not in ("failed", "error") else last_error,
        **{k: v for k, v in (usage or {}).items() if k in USAGE_FIELDS},
    }
    result = session.execute(
        update(ShardAttempt)
        .where(
            ShardAttempt.shard_id == shard_id,
            ShardAttempt.attempt == attempt,
            ShardAttempt.outcome.is_(None),
        )
        .values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class AttemptRow:
    """An attempt with its shard's index and the shard's current attempt and status."""

    attempt: ShardAttempt
    index: int
    current_attempt: int
    shard_status: str


def attempts_of(session: Session, job_id: uuid.UUID, limit: int = 2000) -> list[AttemptRow]:
    """The job's attempts (the newest ``limit``), oldest first."""
    rows = session.execute(
        select(ShardAttempt, Shard.index, Shard.attempt, Shard.status)
        .join(Shard, Shard.id == ShardAttempt.shard_id)
        .where(ShardAttempt.job_id == job_id)
        .order_by(ShardAttempt.started_at.desc(), Shard.index.desc())
        .limit(limit)
    )
    return [AttemptRow(r[0], int(r[1]), int(r[2]), str(r[3])) for r in rows][::-1]


def attempts_for_jobs(session: Session, job_ids: list[uuid.UUID]) -> list[ShardAttempt]:
    """Every attempt of these jobs (their usage is summed per job)."""
    if not job_ids:
        return []
    return list(session.scalars(select(ShardAttempt).where(ShardAttempt.job_id.in_(job_ids))))


def attempt_rates(
    session: Session, tenant_id: uuid.UUID, model_uri: str, task: str | None, limit: int = 20
) -> list[tuple[int, float]]:
    """(records, wall seconds) of the tenant's newest succeeded attempts that ran this model for
    this task, for its steady rate."""
    query = (
        select(
            ShardAttempt.records_succeeded + ShardAttempt.records_failed,
            ShardAttempt.wall_seconds,
        )
        .join(Job, Job.id == ShardAttempt.job_id)
        .where(
            Job.tenant_id == tenant_id,
            Job.model_uri == model_uri,
            Job.type == "inference",
            ShardAttempt.outcome == "succeeded",
            ShardAttempt.wall_seconds > 0,
        )
        .order_by(ShardAttempt.finished_at.desc())
        .limit(limit)
    )
    if task is not None:
        query = query.where(Job.spec["task"].as_string() == task)
    return [(int(n), float(s or 0.0)) for n, s in session.execute(query)]


def worker_attempts(session: Session, workers: list[str], since: datetime) -> list[ShardAttempt]:
    """The attempts these workers held at any time since ``since`` (for their utilisation)."""
    if not workers:
        return []
    return list(
        session.scalars(
            select(ShardAttempt).where(
                ShardAttempt.worker.in_(workers),
                or_(ShardAttempt.finished_at.is_(None), ShardAttempt.finished_at >= since),
                ShardAttempt.seen_at >= since,
            )
        )
    )


USAGE_SUMS = (
    "wall_seconds",
    "busy_seconds",
    "cpu_seconds",
    "gpu_seconds",
    "energy_joules",
    "tokens_in",
    "tokens_out",
)


def usage_totals(session: Session) -> dict[str, dict[str, float]]:
    """Usage summed over every ended attempt, by device kind (``cpu``, ``cuda``, ...: the
    device's name up to its ``:``)."""
    sums = [func.coalesce(func.sum(getattr(ShardAttempt, name)), 0) for name in USAGE_SUMS]
    rows = session.execute(
        select(ShardAttempt.device, *sums)
        .where(ShardAttempt.outcome.is_not(None))
        .group_by(ShardAttempt.device)
    )
    out: dict[str, dict[str, float]] = {}
    for device, *values in rows:
        kind = (device or "unknown").split(":", 1)[0]
        totals = out.setdefault(kind, dict.fromkeys(USAGE_SUMS, 0.0))
        for name, value in zip(USAGE_SUMS, values, strict=True):
            totals[name] += float(value)
    return out


@dataclass(frozen=True)
class UsageGroup:
    """One job's attempts on one device of one worker, summed. ``*_known``: how many of the
    ``ended`` attempts measured that figure."""

    job_id: uuid.UUID
    worker: str
    device: str | None
    device_name: str | None
    gpus: int
    attempts: int
    ended: int
    sums: dict[str, float]
    known: dict[str, int]


# The figures summed per group, and whether each may be missing on an ended attempt.
GROUP_SUMS = (
    "wall_seconds",
    "busy_seconds",
    "cpu_seconds",
    "gpu_seconds",
    "energy_joules",
    "tokens_in",
    "tokens_out",
)


def usage_by_job(session: Session, job_ids: list[uuid.UUID]) -> list[UsageGroup]:
    """The usage of these jobs' attempts, summed per job, worker and device (one query)."""
    if not job_ids:
        return []
    columns = [getattr(ShardAttempt, name) for name in GROUP_SUMS]
    ended = func.count(ShardAttempt.outcome)
    rows = session.execute(
        select(
            ShardAttempt.job_id,
            ShardAttempt.worker,
            ShardAttempt.device,
            ShardAttempt.device_name,
            ShardAttempt.gpus,
            func.count(),
            ended,
            *[func.coalesce(func.sum(c), 0) for c in columns],
            *[func.count(c) for c in columns],
        )
        .where(ShardAttempt.job_id.in_(job_ids))
        .group_by(
            ShardAttempt.job_id,
            ShardAttempt.worker,
            ShardAttempt.device,
            ShardAttempt.device_name,
            ShardAttempt.gpus,
        )
    )
    n = len(GROUP_SUMS)
    out = []
    for row in rows:
        sums, known = row[7 : 7 + n], row[7 + n :]
        out.append(
            UsageGroup(
                job_id=row[0],
                worker=str(row[1]),
                device=row[2],
                device_name=row[3],
                gpus=int(row[4] or 0),
                attempts=int(row[5]),
                ended=int(row[6]),
                sums={k: float(v) for k, v in zip(GROUP_SUMS, sums, strict=True)},
                known={k: int(v) for k, v in zip(GROUP_SUMS, known, strict=True)},
            )
        )
    return out


def add_throughput(
    session: Session,
    key: tuple[str, str, str],
    records: int,
    seconds: float,
    tokens_out: int,
    now: datetime,
    load_seconds: float = 0.0,
) -> None:
    """Add one succeeded shard's records and processing seconds to (model, task, device)'s
    throughput, and its cold start's ``load_seconds`` apart (a load when above zero), in one
    statement (two shards settling at once both count)."""
    model, task, device = key
    loads = 1 if load_seconds > 0 else 0
    values = {
        "model": model,
        "task": task,
        "device": device,
        "shards": 1,
        "records": records,
        "seconds": seconds,
        "tokens_out": tokens_out,
        "loads": loads,
        "load_seconds": load_seconds,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    statement = upsert(Throughput).values(**values)
    table = Throughput.__table__.c
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.model, table.task, table.device],
            set_={
                "shards": table.shards + 1,
                "records": table.records + records,
                "seconds": table.seconds + seconds,
                "tokens_out": table.tokens_out + tokens_out,
                "loads": table.loads + loads,
                "load_seconds": table.load_seconds + load_seconds,
                "updated_at": now,
            },
        )
    )


def throughput_of(session: Session, model: str, task: str) -> list[Throughput]:
    """What ``model`` reached on each kind of device for ``task``, most records first."""
    return list(
        session.scalars(
            select(Throughput)
            .where(Throughput.model == model, Throughput.task == task)
            .order_by(Throughput.records.desc())
        )
    )
