"""SQL of the OpenAI-compatible surface: files, batches, fine-tuning jobs and the models it lists, always scoped to one tenant.

Lists are newest first, paged with ``after`` (the id of the last row of the previous page), the
way OpenAI's list endpoints page. Imports: ``barge.status``, ``db.models``, ``db.base``; nothing above ``db``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from barge.status import IN_PROGRESS, QUEUED, SHARD_PENDING, SHARD_RUNNING
from db.models import Job, OpenAIBatch, OpenAIFile, OpenAIFineTuningJob, Shard

Row = TypeVar("Row", OpenAIFile, OpenAIBatch, OpenAIFineTuningJob)


def add_openai_file(session: Session, row: OpenAIFile) -> OpenAIFile:
    session.add(row)
    session.flush()
    return row


def openai_file_usage(session: Session, tenant_id: uuid.UUID) -> tuple[int, int]:
    """The tenant's files (uploads and the files Barge wrote) and their bytes in all."""
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(OpenAIFile.bytes), 0)).where(
            OpenAIFile.tenant_id == tenant_id
        )
    ).one()
    return int(count), int(size)


def get_openai_file(session: Session, tenant_id: uuid.UUID, file_id: str) -> OpenAIFile | None:
    return session.scalar(
        select(OpenAIFile).where(OpenAIFile.id == file_id, OpenAIFile.tenant_id == tenant_id)
    )


def delete_openai_file(session: Session, row: OpenAIFile) -> None:
    session.delete(row)
    session.flush()


def _page(
    session: Session, query: Select[Any], model: type[Row], limit: int, after: Row | None
) -> tuple[list[Row], bool]:
    if after is not None:
        query = query.where(
            or_(
                model.created_at < after.created_at,
                and_(model.created_at == after.created_at, model.id < after.id),
            )
        )
    rows = list(
        session.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1))
    )
    return rows[:limit], len(rows) > limit


def list_openai_files(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    after: OpenAIFile | None = None,
    purpose: str | None = None,
) -> tuple[list[OpenAIFile], bool]:
    """A page of the tenant's files and whether more follow."""
    query = select(OpenAIFile).where(OpenAIFile.tenant_id == tenant_id)
    if purpose is not None:
        query = query.where(OpenAIFile.purpose == purpose)
    return _page(session, query, OpenAIFile, limit, after)


def add_openai_batch(session: Session, row: OpenAIBatch) -> OpenAIBatch:
    session.add(row)
    session.flush()
    return row


def get_openai_batch(session: Session, tenant_id: uuid.UUID, batch_id: str) -> OpenAIBatch | None:
    return session.scalar(
        select(OpenAIBatch).where(OpenAIBatch.id == batch_id, OpenAIBatch.tenant_id == tenant_id)
    )


def openai_batch_for_job(session: Session, job_id: uuid.UUID) -> OpenAIBatch | None:
    return session.scalar(select(OpenAIBatch).where(OpenAIBatch.job_id == job_id))


def openai_batch_retries(session: Session, batch_ids: list[str]) -> dict[str, list[str]]:
    """The batches retrying each of these (Barge's extension), oldest first."""
    if not batch_ids:
        return {}
    out: dict[str, list[str]] = {}
    rows = session.execute(
        select(OpenAIBatch.retry_of, OpenAIBatch.id)
        .where(OpenAIBatch.retry_of.in_(batch_ids))
        .order_by(OpenAIBatch.created_at, OpenAIBatch.id)
    )
    for parent, child in rows:
        out.setdefault(str(parent), []).append(child)
    return out


def openai_ids(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The OpenAI batch or fine-tuning job id each of these Barge jobs runs, where it runs one."""
    if not job_ids:
        return {}
    out: dict[uuid.UUID, str] = {}
    for model in (OpenAIBatch, OpenAIFineTuningJob):
        rows = session.execute(select(model.job_id, model.id).where(model.job_id.in_(job_ids)))
        out.update({job_id: str(openai_id) for job_id, openai_id in rows if job_id})
    return out


def take_due_openai_batches(
    session: Session, now: datetime, limit: int
) -> list[tuple[OpenAIBatch, Job]]:
    """Batches whose completion window has ended while their job still has requests to run
    (queued, or running with a shard not yet settled), locked (others skip them). A job whose
    every shard has settled only waits for its finalize: its batch completes."""
    unsettled = (
        select(Shard.id)
        .where(Shard.job_id == Job.id, Shard.status.in_((SHARD_PENDING, SHARD_RUNNING)))
        .exists()
    )
    rows = session.execute(
        select(OpenAIBatch, Job)
        .join(Job, Job.id == OpenAIBatch.job_id)
        .where(
            OpenAIBatch.expires_at < now,
            OpenAIBatch.expired_at.is_(None),
            or_(
                Job.status == QUEUED,
                and_(Job.status.in_(IN_PROGRESS), or_(Job.shards_total.is_(None), unsettled)),
            ),
        )
        .order_by(OpenAIBatch.expires_at)
        .limit(limit)
        .with_for_update(of=[OpenAIBatch, Job], skip_locked=True)
    ).all()
    return [(batch, job) for batch, job in rows]


def list_openai_batches(
    session: Session, tenant_id: uuid.UUID, limit: int, after: OpenAIBatch | None = None
) -> tuple[list[OpenAIBatch], bool]:
    """A page of the tenant's batches and whether more follow."""
    query = select(OpenAIBatch).where(OpenAIBatch.tenant_id == tenant_id)
    return _page(session, query, OpenAIBatch, limit, after)


def add_fine_tuning_job(session: Session, row: OpenAIFineTuningJob) -> OpenAIFineTuningJob:
    session.add(row)
    session.flush()
    return row


def get_fine_tuning_job(
    session: Session, tenant_id: uuid.UUID, job_id: str
) -> OpenAIFineTuningJob | None:
    return session.scalar(
        select(OpenAIFineTuningJob).where(
            OpenAIFineTuningJob.id == job_id, OpenAIFineTuningJob.tenant_id == tenant_id
        )
    )


def list_fine_tuning_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    after: OpenAIFineTuningJob | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[list[OpenAIFineTuningJob], bool]:
    """A page of the tenant's fine-tuning jobs (those whose metadata holds every pair of
    ``metadata``) and whether more follow."""
    query = select(OpenAIFineTuningJob).where(OpenAIFineTuningJob.tenant_id == tenant_id)
    for key, value in (metadata or {}).items():
        query = query.where(OpenAIFineTuningJob.meta[key].as_string() == value)
    return _page(session, query, OpenAIFineTuningJob, limit, after)


def fine_tuning_job_for(session: Session, job_id: uuid.UUID) -> OpenAIFineTuningJob | None:
    """The OpenAI fine-tuning job a Barge job runs, if any."""
    return session.scalar(select(OpenAIFineTuningJob).where(OpenAIFineTuningJob.job_id == job_id))
