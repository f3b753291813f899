"""Queries and conditional updates. Repositories flush; only boundaries commit."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ApiKey, DropRule, Job, JobEvent, Model, Shard, Tenant
from db.state import (
    FINAL,
    SHARD_CANCELLED,
    SHARD_FAILED,
    SHARD_PENDING,
    SHARD_RUNNING,
    SHARD_SUCCEEDED,
)

# --- tenants and keys -------------------------------------------------------------------------


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, tenant_name: str) -> str:
    """Create (or reuse) the tenant and a new key; returns the key, which is stored hashed."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = "bk_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10]))
    session.flush()
    return key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
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


def active_job_for_output(session: Session, output_uri: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.output_uri == output_uri, Job.status.not_in(FINAL)).limit(1)
    )


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
) -> list[Job]:
    """Newest first; ``cursor`` is the (created_at, id) of the last job of the previous page."""
    query = select(Job).where(Job.tenant_id == tenant_id)
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


# --- shards -----------------------------------------------------------------------------------


def shards_of(session: Session, job_id: uuid.UUID) -> list[Shard]:
    return list(session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index)))


def claim_shard(session: Session, shard_id: uuid.UUID, worker: str, lease: timedelta) -> int | None:
    """Take the shard if it is pending or its lease expired; returns the new attempt (the fencing
    token) or None when someone else holds it or it is finished."""
    now = utcnow()
    result = session.execute(
        update(Shard)
        .where(
            Shard.id == shard_id,
            or_(
                Shard.status == SHARD_PENDING,
                and_(Shard.status == SHARD_RUNNING, Shard.lease_expires_at < now),
            ),
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
    result = session.execute(
        update(Shard).where(_held(shard_id, attempt)).values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


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
    result = session.execute(
        update(Shard).where(_held(shard_id, attempt)).values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


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
            or_(
                Shard.status == SHARD_PENDING,
                and_(Shard.status == SHARD_RUNNING, Shard.lease_expires_at < now),
            ),
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


# --- metrics (aggregates over every tenant, one GROUP BY each) ---------------------------------


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


# --- model registry ---------------------------------------------------------------------------


def register_model(
    session: Session,
    tenant_id: uuid.UUID,
    name: str,
    uri: str,
    task: str,
    *,
    base_model: str | None = None,
    metrics: dict[str, Any] | None = None,
    job_id: uuid.UUID | None = None,
) -> Model:
    """Add the next version of ``name`` (1, 2, ...); the unique (tenant, name, version) constraint
    makes two concurrent registrations fail rather than share a version."""
    latest = session.scalar(
        select(func.max(Model.version)).where(Model.tenant_id == tenant_id, Model.name == name)
    )
    model = Model(
        tenant_id=tenant_id,
        name=name,
        version=(latest or 0) + 1,
        uri=uri,
        task=task,
        base_model=base_model,
        metrics=metrics or {},
        job_id=job_id,
    )
    session.add(model)
    session.flush()
    return model


def model_versions(session: Session, tenant_id: uuid.UUID, name: str | None = None) -> list[Model]:
    """Every version of ``name``, newest first; without a name, the newest version of each."""
    if name is not None:
        return list(
            session.scalars(
                select(Model)
                .where(Model.tenant_id == tenant_id, Model.name == name)
                .order_by(Model.version.desc())
            )
        )
    newest = (
        select(Model.name, func.max(Model.version).label("version"))
        .where(Model.tenant_id == tenant_id)
        .group_by(Model.name)
        .subquery()
    )
    return list(
        session.scalars(
            select(Model)
            .join(newest, and_(Model.name == newest.c.name, Model.version == newest.c.version))
            .where(Model.tenant_id == tenant_id)
            .order_by(Model.name)
        )
    )


# --- drop folders ----------------------------------------------------------------------------

REMOVED_MARK = "~removed~"  # a removed rule's name: NAME~removed~<id>, never a valid rule name
DROP_NAME_CHARS = 200  # drop_rules.name is a String(200)


def drop_rules(session: Session, tenant_id: uuid.UUID) -> list[DropRule]:
    """The tenant's rules, removed ones (disabled and renamed) included, by name."""
    return list(
        session.scalars(
            select(DropRule).where(DropRule.tenant_id == tenant_id).order_by(DropRule.name)
        )
    )


def live_drop_rule(session: Session, tenant_id: uuid.UUID, name: str) -> DropRule | None:
    """The tenant's enabled rule named ``name``; a removed rule is never found again."""
    return session.scalar(
        select(DropRule).where(
            DropRule.tenant_id == tenant_id,
            DropRule.name == name,
            DropRule.enabled.is_(True),
        )
    )


def add_drop_rule(
    session: Session, tenant_id: uuid.UUID, name: str, prefix: str, template: dict[str, Any]
) -> DropRule | None:
    """The new rule, or None when the tenant has a rule of that name (checked, and enforced by
    the unique (tenant, name) constraint when two adds race)."""
    if session.scalar(
        select(DropRule.id).where(DropRule.tenant_id == tenant_id, DropRule.name == name)
    ):
        return None
    rule = DropRule(tenant_id=tenant_id, name=name, prefix=prefix, template=template)
    try:
        with session.begin_nested():
            session.add(rule)
    except IntegrityError:
        return None
    return rule


def remove_drop_rule(session: Session, rule: DropRule) -> None:
    """Disable the rule and free its name: it becomes NAME~removed~<id>, cut to fit the column
    (jobs it created keep pointing at it)."""
    suffix = f"{REMOVED_MARK}{rule.id.hex}"
    rule.enabled = False
    rule.name = rule.name[: DROP_NAME_CHARS - len(suffix)] + suffix
    session.flush()


# --- locations a job reads and writes --------------------------------------------------------


def lock_submissions(session: Session) -> None:
    """Serialise the location check and insert of concurrent submissions until commit (a
    Postgres transaction-level advisory lock; SQLite serialises writers already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(SUBMISSION_LOCK)))


SUBMISSION_LOCK = 0x62617267  # "barg"


def ancestors(prefix: str) -> list[str]:
    """``s3://b/x/y/`` → ``[s3://b/, s3://b/x/, s3://b/x/y/]``."""
    scheme, _, rest = prefix.partition("://")
    parts = rest.rstrip("/").split("/")
    return [f"{scheme}://{'/'.join(parts[: i + 1])}/" for i in range(len(parts))]


def job_with_output_overlapping(session: Session, prefix: str) -> Job | None:
    """A job (any status) whose output prefix equals, contains or lies inside ``prefix``."""
    return session.scalar(
        select(Job)
        .where(
            or_(
                Job.output_uri.in_(ancestors(prefix)),
                func.substr(Job.output_uri, 1, len(prefix)) == prefix,
            )
        )
        .order_by(Job.created_at)
        .limit(1)
    )


def active_jobs(session: Session) -> list[Job]:
    """Jobs not yet final (their inputs and outputs are in use)."""
    return list(session.scalars(select(Job).where(Job.status.not_in(FINAL))))
