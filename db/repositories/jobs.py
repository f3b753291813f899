"""Jobs: lookups, locks, listing with cursors, progress, and the locations jobs use. Repositories flush; only boundaries commit."""

from __future__ import annotations

import base64
import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, case, cast, exists, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from db.base import utcnow
from db.models import Job, OpenAIBatch, OpenAIFineTuningJob, Shard
from db.state import (
    CANCELLING,
    FAILED,
    FINAL,
    IN_PROGRESS,
    QUEUED,
    RUNNING,
    SHARD_CANCELLED,
    SHARD_FAILED,
    SHARD_PENDING,
    SHARD_RUNNING,
    SHARD_SUCCEEDED,
)

# --- jobs -------------------------------------------------------------------------------------


def get_job(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Job | None:
    query = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return session.scalar(query)


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job row, locked until the transaction ends (a no-op lock on SQLite)."""
    return session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def job_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) ``encode_cursor`` wrote; ValueError for anything it could not have
    written (a timestamp without a time zone, out of range in UTC, ...)."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, _, job_id = base64.urlsafe_b64decode(padded).decode().partition("|")
    at = datetime.fromisoformat(created)
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the cursor's timestamp has no time zone")
    try:
        at = at.astimezone(UTC)
    except OverflowError:
        raise ValueError("the cursor's timestamp is out of range") from None
    return at, uuid.UUID(job_id)


def list_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    status: str | None = None,
    type_: str | None = None,
    cursor: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
    matching: str | None = None,
) -> list[Job]:
    """Newest first; ``cursor`` is the (created_at, id) of the last job of the previous page;
    ``matching``: only jobs it finds (``_matching``)."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if matching:
        query = query.where(_matching(tenant_id, matching))
    if status:
        query = query.where(Job.status == status)
    if type_:
        query = query.where(Job.type == type_)
    if cursor:
        created, last_id = cursor
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(query))


def _matching(tenant_id: uuid.UUID, text: str) -> Any:
    """Jobs that ``text`` finds: its id (whole, or the start of it), the id of the OpenAI batch
    or fine-tuning job it runs, or text in its metadata (keys and values, any case)."""
    like = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    found: list[Any] = [
        cast(Job.meta, String).ilike(f"%{like}%", escape="\\"),
        cast(Job.id, String).ilike(f"{like}%", escape="\\"),
    ]
    with contextlib.suppress(ValueError):
        found.append(Job.id == uuid.UUID(text))
    for model in (OpenAIBatch, OpenAIFineTuningJob):
        found.append(
            Job.id.in_(select(model.job_id).where(model.id == text, model.tenant_id == tenant_id))
        )
    return or_(*found)


@dataclass
class Progress:
    records_succeeded: int = 0
    records_failed: int = 0
    shards_done: int = 0
    shards_running: int = 0
    steps_done: int = 0


def progress_for(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Progress]:
    """Counts summed over shards (workers write shard rows only, never a hot job row)."""
    if not job_ids:
        return {}
    done = func.sum(
        case((Shard.status.in_([SHARD_SUCCEEDED, SHARD_FAILED, SHARD_CANCELLED]), 1), else_=0)
    )
    running = func.sum(case((Shard.status == SHARD_RUNNING, 1), else_=0))
    rows = session.execute(
        select(
            Shard.job_id,
            func.coalesce(func.sum(Shard.records_succeeded), 0),
            func.coalesce(func.sum(Shard.records_failed), 0),
            func.coalesce(done, 0),
            func.coalesce(running, 0),
            func.coalesce(func.sum(Shard.steps_done), 0),
        )
        .where(Shard.job_id.in_(job_ids))
        .group_by(Shard.job_id)
    )
    out = {job_id: Progress() for job_id in job_ids}
    for job_id, ok, failed, n_done, n_running, steps in rows:
        out[job_id] = Progress(int(ok), int(failed), int(n_done), int(n_running), int(steps))
    return out


def jobs_ahead(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """For each job, how many other running jobs, planned before it, still have shards to run
    (over every tenant: they share the GPU workers). One aggregate query."""
    if not job_ids:
        return {}
    me, other = aliased(Job), aliased(Job)
    unsettled = exists().where(
        Shard.job_id == other.id, Shard.status.in_([SHARD_PENDING, SHARD_RUNNING])
    )
    rows = session.execute(
        select(me.id, func.count(other.id))
        .select_from(me)
        .join(
            other,
            and_(other.status == RUNNING, other.started_at < me.started_at, other.id != me.id),
        )
        .where(me.id.in_(job_ids), unsettled)
        .group_by(me.id)
    )
    out = dict.fromkeys(job_ids, 0)
    out.update({job_id: int(n) for job_id, n in rows})
    return out


# --- locations a job reads and writes ---------------------------------------------------------


def lock_submissions(session: Session) -> None:
    """Serialise the location check and insert of concurrent submissions until commit (a
    Postgres transaction-level advisory lock; SQLite serialises writers already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(SUBMISSION_LOCK)))


SUBMISSION_LOCK = 0x62617267  # "barg"
FILES_LOCK = 0x66696C65  # "file": a tenant's OpenAI uploads, against its files quotas
REGISTRY_LOCK = 0x6D6F646C  # "modl": a tenant's registrations, against its versions quota
WEBHOOKS_LOCK = 0x77686F6B  # "whok": a tenant's webhook endpoints, against their limit


def lock_tenant_submissions(session: Session, tenant_id: uuid.UUID) -> None:
    """Serialise one tenant's submissions until commit, so that its quota check (counting its
    active jobs) and its insert are taken in turn; other tenants' submissions do not wait.
    A Postgres advisory lock in the two-key space (apart from SUBMISSION_LOCK's), taken before
    that one by every submission, so the two never deadlock."""
    lock_tenant(session, SUBMISSION_LOCK, tenant_id)


def lock_tenant(session: Session, space: int, tenant_id: uuid.UUID) -> None:
    """Serialise one tenant's work of one kind (``space``: SUBMISSION_LOCK, FILES_LOCK,
    REGISTRY_LOCK) until commit: a Postgres advisory lock in the two-key space."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(tenant_id.bytes[:4], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(space, key)))


def active_job_count(session: Session, tenant_id: uuid.UUID) -> int:
    """The tenant's queued, running, pausing and paused jobs (ix_jobs_tenant_status)."""
    query = select(func.count()).where(
        Job.tenant_id == tenant_id, Job.status.in_([QUEUED, *IN_PROGRESS])
    )
    return int(session.scalar(query) or 0)


def ancestors(prefix: str) -> list[str]:
    """``s3://b/x/y/`` → ``[s3://b/, s3://b/x/, s3://b/x/y/]``."""
    scheme, _, rest = prefix.partition("://")
    parts = rest.rstrip("/").split("/")
    return [f"{scheme}://{'/'.join(parts[: i + 1])}/" for i in range(len(parts))]


def job_with_output_overlapping(
    session: Session, prefix: str, parent_id: uuid.UUID | None = None
) -> Job | None:
    """A job (any status) whose output prefix equals, contains or lies inside ``prefix``;
    ``parent_id``: a job whose output may contain ``prefix`` (a retry writes inside it)."""
    query = select(Job).where(
        or_(
            Job.output_uri.in_(ancestors(prefix)),
            func.substr(Job.output_uri, 1, len(prefix)) == prefix,
        )
    )
    if parent_id is not None:
        query = query.where(or_(Job.id != parent_id, Job.output_uri == prefix))
    return session.scalar(query.order_by(Job.created_at).limit(1))


def retries_of(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Job]]:
    """Each job's retries, in the order they were made (only jobs that have some)."""
    if not job_ids:
        return {}
    found: dict[uuid.UUID, list[Job]] = {}
    rows = session.scalars(
        select(Job).where(Job.parent_id.in_(job_ids)).order_by(Job.retry_index, Job.created_at)
    )
    for job in rows:
        assert job.parent_id is not None
        found.setdefault(job.parent_id, []).append(job)
    return found


def active_jobs(session: Session) -> list[Job]:
    """Jobs not yet final (their inputs and outputs are in use)."""
    return list(session.scalars(select(Job).where(Job.status.not_in(FINAL))))


def job_status(session: Session, job_id: uuid.UUID) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def final_job_ids(session: Session, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``job_ids`` are final (or gone: nothing more will happen to them); one query
    on the primary key."""
    if not job_ids:
        return set()
    live = set(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.status.not_in(FINAL))))
    return set(job_ids) - live


def touch_dispatched(session: Session, job_id: uuid.UUID) -> None:
    """A queued job's planning is alive: the reconciler waits a grace period from now."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == QUEUED).values(dispatched_at=utcnow()),
        execution_options={"synchronize_session": False},
    )


# --- what the reconciler re-sends --------------------------------------------------------------


def take_stale_queued_jobs(
    session: Session, now: datetime, grace: timedelta, limit: int
) -> list[uuid.UUID]:
    """Queued jobs not dispatched within ``grace``; stamped as dispatched now."""
    ids = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == QUEUED,
                or_(Job.dispatched_at.is_(None), Job.dispatched_at < now - grace),
            )
            .limit(limit)
        )
    )
    if ids:
        session.execute(
            update(Job).where(Job.id.in_(ids)).values(dispatched_at=now),
            execution_options={"synchronize_session": False},
        )
    return ids


def jobs_to_finalize(session: Session, before: datetime, limit: int) -> list[uuid.UUID]:
    """Jobs with every shard settled but no manifest, untouched since ``before``."""
    # A probe per job (LIMIT 1 on ix_shards_unsettled), not NOT EXISTS: over a backlog
    # Postgres hashed that into a scan of every unsettled shard.
    unsettled = (
        select(literal(1))
        .where(Shard.job_id == Job.id, Shard.status.in_([SHARD_PENDING, SHARD_RUNNING]))
        .limit(1)
        .scalar_subquery()
    )
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.manifest.is_(None),
                Job.status.in_([*IN_PROGRESS, CANCELLING, FAILED]),
                Job.updated_at < before,
                unsettled.is_(None),
            )
            .limit(limit)
        )
    )
