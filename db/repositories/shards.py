"""Shards: claims with a fencing token, heartbeats, and the conditional updates that settle them. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Shard
from db.state import (
    SHARD_CANCELLED,
    SHARD_PENDING,
    SHARD_RUNNING,
)

# --- shards -----------------------------------------------------------------------------------


def shards_of(session: Session, job_id: uuid.UUID) -> list[Shard]:
    return list(session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index)))


def _unheld(now: datetime) -> Any:
    """No one holds the shard: it is pending, or its holder's lease expired."""
    return or_(
        Shard.status == SHARD_PENDING,
        and_(Shard.status == SHARD_RUNNING, Shard.lease_expires_at < now),
    )


def claim_shard(session: Session, shard_id: uuid.UUID, worker: str, lease: timedelta) -> int | None:
    """Take the shard if it is pending or its lease expired; returns the new attempt (the fencing
    token) or None when someone else holds it or it is finished."""
    now = utcnow()
    result = session.execute(
        update(Shard)
        .where(
            Shard.id == shard_id,
            _unheld(now),
        )
        .values(
            status=SHARD_RUNNING,
            attempt=Shard.attempt + 1,
            worker=worker,
            lease_expires_at=now + lease,
            heartbeat_at=now,
            started_at=now,
            records_succeeded=0,
            records_failed=0,
        )
        .returning(Shard.attempt),
        execution_options={"synchronize_session": False},
    )
    row = result.first()
    return int(row[0]) if row else None


def _held(shard_id: uuid.UUID, attempt: int) -> Any:
    return and_(Shard.id == shard_id, Shard.attempt == attempt, Shard.status == SHARD_RUNNING)


def _update_held(
    session: Session, shard_id: uuid.UUID, attempt: int, values: dict[str, Any]
) -> bool:
    """Apply ``values`` only if ``attempt`` still holds the shard (fencing); whether it did."""
    result = session.execute(
        update(Shard).where(_held(shard_id, attempt)).values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def heartbeat_shard(
    session: Session,
    shard_id: uuid.UUID,
    attempt: int,
    lease: timedelta,
    succeeded: int,
    failed: int,
    steps_done: int | None = None,
) -> bool:
    """Extend the lease and record progress; False when the lease was lost (stop working)."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + lease,
        "heartbeat_at": now,
        "records_succeeded": succeeded,
        "records_failed": failed,
    }
    if steps_done is not None:
        values["steps_done"] = steps_done
    return _update_held(session, shard_id, attempt, values)


def finish_shard(
    session: Session,
    shard_id: uuid.UUID,
    attempt: int,
    status: str,
    *,
    succeeded: int,
    failed: int,
    output_key: str | None,
    errors_key: str | None,
    error: str | None = None,
    steps_done: int | None = None,
) -> bool:
    """Mark the shard final if ``attempt`` still holds it (fencing)."""
    values: dict[str, Any] = {
        "status": status,
        "records_succeeded": succeeded,
        "records_failed": failed,
        "output_key": output_key,
        "errors_key": errors_key,
        "last_error": error,
        "finished_at": utcnow(),
        "lease_expires_at": None,
    }
    if steps_done is not None:
        values["steps_done"] = steps_done
    return _update_held(session, shard_id, attempt, values)


def release_shard(session: Session, shard_id: uuid.UUID, attempt: int, error: str) -> bool:
    """Give a held shard back (pending) after a retryable failure."""
    return _back_to_pending(
        session,
        shard_id,
        attempt,
        last_error=error,
        records_succeeded=0,  # the attempt's progress goes with it: no part holds it
        records_failed=0,
    )


def hand_off_shard(session: Session, shard_id: uuid.UUID, attempt: int, steps_done: int) -> bool:
    """Give a held shard back (pending) after a clean stop at a checkpoint: the next claim
    continues it, and the hand-off does not count as a failed attempt."""
    return _back_to_pending(
        session, shard_id, attempt, handoffs=Shard.handoffs + 1, steps_done=steps_done
    )


def _back_to_pending(session: Session, shard_id: uuid.UUID, attempt: int, **values: Any) -> bool:
    result = session.execute(
        update(Shard)
        .where(_held(shard_id, attempt))
        .values(status=SHARD_PENDING, lease_expires_at=None, dispatched_at=utcnow(), **values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def settle_unstarted_shard(session: Session, shard_id: uuid.UUID, status: str, error: str) -> bool:
    """Finish a shard that no one holds (cancelled before it ran, or out of attempts)."""
    now = utcnow()
    result = session.execute(
        update(Shard)
        .where(
            Shard.id == shard_id,
            _unheld(now),
        )
        .values(
            status=status,
            last_error=error,
            finished_at=now,
            lease_expires_at=None,
            records_succeeded=0,  # nothing of a dead or released attempt was written
            records_failed=0,
        ),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel_pending_shards(session: Session, job_id: uuid.UUID) -> int:
    result = session.execute(
        update(Shard)
        .where(Shard.job_id == job_id, Shard.status == SHARD_PENDING)
        .values(
            status=SHARD_CANCELLED,
            finished_at=utcnow(),
            last_error="job cancelled",
            records_succeeded=0,
            records_failed=0,
        ),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def unfinished_shard_count(session: Session, job_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == job_id, Shard.status.in_([SHARD_PENDING, SHARD_RUNNING]))
        )
        or 0
    )


def _take(session: Session, query: Any, now: datetime) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """(shard id, job id, index) of the rows ``query`` selects, stamped as dispatched now."""
    rows = [(r[0], r[1], int(r[2])) for r in session.execute(query)]
    if rows:
        session.execute(
            update(Shard).where(Shard.id.in_([r[0] for r in rows])).values(dispatched_at=now),
            execution_options={"synchronize_session": False},
        )
    return rows


def _not_sent_since(before: datetime) -> Any:
    return or_(Shard.dispatched_at.is_(None), Shard.dispatched_at < before)


def take_expired_shards(
    session: Session, now: datetime, grace: timedelta, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Running shards whose lease expired (their worker died or stalled), not re-sent within
    ``grace``; stamped as dispatched now."""
    query = (
        select(Shard.id, Shard.job_id, Shard.index)
        .where(
            Shard.status == SHARD_RUNNING,
            Shard.lease_expires_at < now,
            _not_sent_since(now - grace),
        )
        .limit(limit)
    )
    return _take(session, query, now)


def pending_shard_count(session: Session) -> int:
    """Shards waiting to be claimed, over every job."""
    return int(
        session.scalar(select(func.count()).select_from(Shard).where(Shard.status == SHARD_PENDING))
        or 0
    )


def take_unclaimed_shards(
    session: Session, now: datetime, grace: timedelta, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Up to ``limit`` pending shards not (re-)sent within ``grace``, the longest waiting
    first; stamped as dispatched now."""
    if limit <= 0:
        return []
    query = (
        select(Shard.id, Shard.job_id, Shard.index)
        .where(Shard.status == SHARD_PENDING, _not_sent_since(now - grace))
        .order_by(Shard.dispatched_at.asc().nulls_first())
        .limit(limit)
    )
    return _take(session, query, now)
