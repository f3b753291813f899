"""Aggregates over every tenant for /metrics, one GROUP BY each. Repositories flush; only boundaries commit."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, Shard

# --- metrics (aggregates over every tenant, one GROUP BY each) --------------------------------


def job_counts(session: Session) -> list[tuple[str, str, int]]:
    """(status, type, jobs) for every combination that has jobs."""
    rows = session.execute(
        select(Job.status, Job.type, func.count()).group_by(Job.status, Job.type)
    )
    return [(status, type_, int(n)) for status, type_, n in rows]


def shard_counts(session: Session) -> list[tuple[str, int]]:
    """(status, shards) for every shard status that has shards."""
    rows = session.execute(select(Shard.status, func.count()).group_by(Shard.status))
    return [(status, int(n)) for status, n in rows]


def record_totals(session: Session) -> tuple[int, int]:
    """Records succeeded and failed, summed over every shard."""
    row = session.execute(
        select(
            func.coalesce(func.sum(Shard.records_succeeded), 0),
            func.coalesce(func.sum(Shard.records_failed), 0),
        )
    ).one()
    return int(row[0]), int(row[1])
