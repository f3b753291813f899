"""Shards: claims with a fencing token, heartbeats, and the conditional updates that settle them. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    Uuid,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from db.base import UTCDateTime, utcnow
from db.models import Job, Shard, Tenant
from db.state import (
    CANCELLING,
    FAILED,
    PAUSE_STATES,
    PAUSING,
    RUNNING,
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
            _waited(Shard, now),
        )
        .values(**_claimed(now, worker, lease))
        .returning(Shard.attempt),
        execution_options={"synchronize_session": False},
    )
    row = result.first()
    return int(row[0]) if row else None


def _claimed(now: datetime, worker: str, lease: timedelta) -> dict[str, Any]:
    """What a claim sets: a new attempt, its holder and lease, fresh progress."""
    return {
        "status": SHARD_RUNNING,
        "attempt": Shard.attempt + 1,
        "worker": worker,
        "lease_expires_at": now + lease,
        "heartbeat_at": now,
        "started_at": now,
        "records_succeeded": 0,
        "records_failed": 0,
        "tokens_out": 0,
    }


def _waited(shard: Any, now: Any) -> Any:
    """The shard's back-off after a failed attempt (if any) has ended."""
    return or_(shard.not_before.is_(None), shard.not_before <= now)


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
    tokens_out: int | None = None,
) -> bool:
    """Extend the lease and record progress; False when the lease was lost (stop working)."""
    held = heartbeat_job_status(
        session, shard_id, attempt, lease, succeeded, failed, steps_done, tokens_out
    )
    return held is not None


def heartbeat_job_status(
    session: Session,
    shard_id: uuid.UUID,
    attempt: int,
    lease: timedelta,
    succeeded: int,
    failed: int,
    steps_done: int | None = None,
    tokens_out: int | None = None,
) -> str | None:
    """``heartbeat_shard`` that also reads the job's status in the same statement (the lease
    skips its next status check with it); None when the lease was lost."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + lease,
        "heartbeat_at": now,
        "records_succeeded": succeeded,
        "records_failed": failed,
    }
    if steps_done is not None:
        values["steps_done"] = steps_done
    if tokens_out is not None:
        values["tokens_out"] = tokens_out
    job_status = select(Job.status).where(Job.id == Shard.job_id).scalar_subquery()
    row = session.execute(
        update(Shard).where(_held(shard_id, attempt)).values(**values).returning(job_status),
        execution_options={"synchronize_session": False},
    ).first()
    return None if row is None else str(row[0] or "gone")


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
    usage: dict[str, int] | None = None,
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
        "usage": usage,
    }
    if steps_done is not None:
        values["steps_done"] = steps_done
    if usage and "completion_tokens" in usage:
        values["tokens_out"] = usage["completion_tokens"]
    return _update_held(session, shard_id, attempt, values)


def release_shard(
    session: Session, shard_id: uuid.UUID, attempt: int, error: str, retry_in: float = 0.0
) -> bool:
    """Give a held shard back (pending) after a retryable failure; no claim takes it again
    for ``retry_in`` seconds (its back-off)."""
    return _back_to_pending(
        session,
        shard_id,
        attempt,
        last_error=error,
        records_succeeded=0,  # the attempt's progress goes with it: no part holds it
        records_failed=0,
        tokens_out=0,
        not_before=utcnow() + timedelta(seconds=retry_in) if retry_in > 0 else None,
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
            tokens_out=0,
        ),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel_pending_shards(
    session: Session, job_id: uuid.UUID, reason: str = "job cancelled"
) -> int:
    result = session.execute(
        update(Shard)
        .where(Shard.job_id == job_id, Shard.status == SHARD_PENDING)
        .values(
            status=SHARD_CANCELLED,
            finished_at=utcnow(),
            last_error=reason,
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


def _not_paused() -> Any:
    """The shard's job is not pausing or paused: its units are sent again by the resume."""
    return Shard.job_id.not_in(select(Job.id).where(Job.status.in_(PAUSE_STATES)))


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
            _not_paused(),
        )
        .limit(limit)
    )
    return _take(session, query, now)


def cancel_abandoned_shards(session: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Cancel the running shards of stopping jobs (cancelling, failed) whose lease expired:
    their worker died, and a stopping job's unit is not run again, so no claim would ever
    settle it. The ids of their jobs (to finalize). Fencing holds: the dead attempt's settle
    finds the shard no longer running. Found with a plain read first, so a pass with nothing
    to cancel writes nothing (and waits on no lock)."""
    stopping_and_expired = and_(
        Shard.status == SHARD_RUNNING,
        Shard.lease_expires_at < now,
        Shard.job_id.in_(select(Job.id).where(Job.status.in_([CANCELLING, FAILED]))),
    )
    ids = list(session.scalars(select(Shard.id).where(stopping_and_expired).limit(limit)))
    if not ids:
        return []
    result = session.execute(
        update(Shard)
        .where(Shard.id.in_(ids), stopping_and_expired)  # as they are once their rows are ours
        .values(
            status=SHARD_CANCELLED,
            finished_at=now,
            lease_expires_at=None,
            last_error="not run: its worker stopped while the job was stopping",
            records_succeeded=0,
            records_failed=0,
        )
        .returning(Shard.job_id),
        execution_options={"synchronize_session": False},
    )
    return sorted({row[0] for row in result})


def pending_shard_count(session: Session) -> int:
    """Shards waiting to be claimed, over every job that is not pausing or paused (their
    messages are spent)."""
    query = select(func.count()).select_from(Shard)
    return int(session.scalar(query.where(Shard.status == SHARD_PENDING, _not_paused())) or 0)


def take_unclaimed_shards(
    session: Session, now: datetime, grace: timedelta, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Up to ``limit`` pending shards not (re-)sent within ``grace``, the longest waiting
    first; stamped as dispatched now."""
    if limit <= 0:
        return []
    query = (
        select(Shard.id, Shard.job_id, Shard.index)
        .where(Shard.status == SHARD_PENDING, _not_sent_since(now - grace), _not_paused())
        .order_by(Shard.dispatched_at.asc().nulls_first())
        .limit(limit)
    )
    return _take(session, query, now)


# --- pause and resume ----------------------------------------------------------------------------


def live_shard_count(session: Session, job_id: uuid.UUID, now: datetime) -> int:
    """The job's shards running under a live lease (a worker holds them)."""
    query = select(func.count()).select_from(Shard)
    live = and_(Shard.status == SHARD_RUNNING, Shard.lease_expires_at >= now)
    return int(session.scalar(query.where(Shard.job_id == job_id, live)) or 0)


def idle_pausing_jobs(session: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Pausing jobs none of whose shards runs under a live lease (their workers finished, or
    died): they are paused now."""
    live = exists().where(
        Shard.job_id == Job.id, Shard.status == SHARD_RUNNING, Shard.lease_expires_at >= now
    )
    query = select(Job.id).where(Job.status == PAUSING, ~live).limit(limit)
    return list(session.scalars(query))


def take_shards_to_resume(
    session: Session, job_id: uuid.UUID, now: datetime
) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """The resumed job's shards no one holds (pending, or running under an expired lease: their
    worker died while the job was paused); stamped as dispatched now."""
    query = (
        select(Shard.id, Shard.job_id, Shard.index)
        .where(Shard.job_id == job_id, _unheld(now))
        .order_by(Shard.index)
    )
    return _take(session, query, now)


# --- fair share ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """A running job with a shard to claim now, and its tenant's standing: how many of its
    shards run under a live lease, and when one of its running jobs last had a shard claimed
    (None: never)."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    running: int
    served: datetime | None

    @property
    def rank(self) -> tuple[int, bool, datetime]:
        """Lower goes first: fewest running, then least recently served (never first)."""
        return (self.running, self.served is not None, self.served or datetime.min)


# The fair-share statements are built once, with these parameters (a claim runs them often).
_NOW = bindparam("now", type_=UTCDateTime())
_MAX_ATTEMPTS = bindparam("max_attempts", type_=Integer())
_JOB_ID = bindparam("of_job", type_=Uuid())  # not a column's name: this is an UPDATE


def _claimable(shard: Any) -> Any:
    """``shard`` (the entity or an alias) may be claimed now: no one holds it, its back-off has
    ended and it has attempts left. Spelled with ix_shards_unsettled's predicate first."""
    return and_(
        shard.status.in_([SHARD_PENDING, SHARD_RUNNING]),
        or_(
            shard.status == SHARD_PENDING,
            and_(shard.status == SHARD_RUNNING, shard.lease_expires_at < _NOW),
        ),
        _waited(shard, _NOW),
        shard.attempt - shard.handoffs < _MAX_ATTEMPTS,
    )


@cache
def _turns_query() -> Any:
    # A probe per running job (LIMIT 1 on ix_shards_unsettled), not EXISTS: over a backlog
    # Postgres hashed the EXISTS into a scan of every shard (180 ms with 100,000 pending).
    ready = (
        select(literal(1))
        .where(Shard.job_id == Job.id, _claimable(Shard))
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )
    last_claim = select(func.max(Shard.started_at)).where(Shard.job_id == Job.id)
    jobs = (
        select(
            Job.id.label("job_id"),
            Job.tenant_id.label("tenant_id"),
            Job.created_at.label("created_at"),
            last_claim.scalar_subquery().label("served"),
            ready.label("ready"),
        )
        .where(Job.status == RUNNING)
        .cte("running_jobs")
    )
    served = (
        select(jobs.c.tenant_id, func.max(jobs.c.served).label("served"))
        .group_by(jobs.c.tenant_id)
        .cte("served")
    )
    load = (
        select(Job.tenant_id.label("tenant_id"), func.count().label("running"))
        .select_from(Shard)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status == SHARD_RUNNING, Shard.lease_expires_at >= _NOW)
        .group_by(Job.tenant_id)
        .cte("load")
    )
    running = func.coalesce(load.c.running, 0)
    return (
        select(jobs.c.job_id, jobs.c.tenant_id, running, served.c.served)
        .join(served, served.c.tenant_id == jobs.c.tenant_id)
        .outerjoin(load, load.c.tenant_id == jobs.c.tenant_id)
        .where(jobs.c.ready)
        .order_by(running, served.c.served.asc().nulls_first(), jobs.c.created_at, jobs.c.job_id)
    )


def fair_turns(session: Session, now: datetime, max_attempts: int) -> list[Turn]:
    """Every running job that has a shard to claim now, fairest first: its tenant's running
    shards (fewest first), then its tenant's last claim (least recent first, never before
    all), then the job's age (oldest first). One query: per running job two index probes
    (ix_shards_unsettled, ix_shards_job_started), and the live leases (ix_shards_status_lease)."""
    rows = session.execute(_turns_query(), {"now": now, "max_attempts": max_attempts})
    return [Turn(r[0], r[1], int(r[2]), r[3]) for r in rows]


@cache
def _claim_next_query() -> Any:
    candidate = aliased(Shard)
    pick = (
        select(candidate.id)
        .where(candidate.job_id == _JOB_ID, _claimable(candidate))
        .order_by(candidate.index)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(Shard)
        .where(Shard.id == pick, _claimable(Shard))
        .values(
            status=SHARD_RUNNING,
            attempt=Shard.attempt + 1,
            worker=bindparam("holder", type_=String()),
            lease_expires_at=bindparam("lease_end", type_=UTCDateTime()),
            heartbeat_at=_NOW,
            started_at=_NOW,
            records_succeeded=0,
            records_failed=0,
            tokens_out=0,
        )
        .returning(Shard.id, Shard.attempt)
    )


def claim_next_shard(
    session: Session,
    job_id: uuid.UUID,
    worker: str,
    lease: timedelta,
    max_attempts: int,
) -> tuple[uuid.UUID, int] | None:
    """Claim the job's lowest claimable shard (as ``claim_shard`` does a named one): its id and
    the new attempt, or None when it has none now. Concurrent claims skip a row another one is
    taking (SKIP LOCKED on Postgres; SQLite serialises writers), and the UPDATE checks again
    that no one holds it."""
    now = utcnow()
    params = {
        "now": now,
        "max_attempts": max_attempts,
        "of_job": job_id,
        "holder": worker,
        "lease_end": now + lease,
    }
    result = session.execute(
        _claim_next_query(), params, execution_options={"synchronize_session": False}
    )
    row = result.first()
    return (row[0], int(row[1])) if row else None


def shard_job_tenant(
    session: Session, shard_id: uuid.UUID
) -> tuple[Shard, Job, Tenant | None] | None:
    """The shard, its job and their tenant (None if it is gone), in one query."""
    row = session.execute(
        select(Shard, Job, Tenant)
        .join(Job, Job.id == Shard.job_id)
        .outerjoin(Tenant, Tenant.id == Job.tenant_id)
        .where(Shard.id == shard_id)
    ).first()
    return (row[0], row[1], row[2]) if row else None
