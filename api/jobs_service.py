"""Submitting, presenting and cancelling jobs for the HTTP API (the rules are in db.submission)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from api.deps import UnitOfWork
from api.schemas import JobOut, OutputOut, ProgressOut
from barge.errors import Conflict
from barge.queue import FINALIZE_JOB, PLAN_JOB
from barge.settings import Settings
from barge.specs import JobSpec
from barge.storage import ObjectStore, S3Uri
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job, Tenant
from db.submission import create_job


def submit(
    uow: UnitOfWork,
    settings: Settings,
    store: ObjectStore,
    tenant: Tenant,
    spec: JobSpec,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Create the job and queue its planning for after the commit; (job, created)."""
    job, created = create_job(uow.session, settings, store, tenant.id, spec, idempotency_key)
    if created:
        uow.send_after_commit(PLAN_JOB, str(job.id))
    return job, created


def present(job: Job, progress: repo.Progress, now: datetime | None = None) -> JobOut:
    now = now or utcnow()
    # What counts as work done, and how much there is: records, or a fine-tune's examples
    # (optimizer steps times examples per step).
    steps_done: int | None = None
    total: int | None
    if job.steps_total is not None:
        steps_done = progress.steps_done
        per_step = _examples_per_step(job.spec)
        done, total = steps_done * per_step, job.steps_total * per_step
    else:
        done, total = progress.records_succeeded + progress.records_failed, job.records_total
    rate: float | None = None
    eta: float | None = None
    if job.started_at is not None:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        if elapsed > 0 and done:
            rate = round(done / elapsed, 2)
    if rate and job.status == state.RUNNING and total is not None:
        eta = round(max(0, total - done) / rate, 1)
    out = S3Uri.parse(job.output_uri)
    manifest = str(out.join("_manifest.json")) if job.manifest is not None else None
    errors = str(out.join("errors/")) if progress.records_failed else None
    return JobOut(
        id=str(job.id),
        type=job.type,
        status=job.status,
        spec=job.spec,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=ProgressOut(
            records_total=job.records_total,
            records_succeeded=progress.records_succeeded,
            records_failed=progress.records_failed,
            shards_total=job.shards_total,
            shards_done=progress.shards_done,
            records_per_second=rate,
            eta_seconds=eta,
            steps_done=steps_done,
            steps_total=job.steps_total,
        ),
        output=OutputOut(uri=job.output_uri, manifest=manifest, errors=errors),
        error=job.error,
        metadata=job.meta or {},
    )


def _examples_per_step(spec: dict[str, object]) -> int:
    hp = spec.get("hyperparameters") or {}
    assert isinstance(hp, dict)
    return int(hp.get("batch_size", 16)) * int(hp.get("gradient_accumulation_steps", 1))


def present_many(session: Session, jobs: list[Job]) -> list[JobOut]:
    progress = repo.progress_for(session, [j.id for j in jobs])
    now = utcnow()
    return [present(j, progress[j.id], now) for j in jobs]


def cancel(uow: UnitOfWork, job: Job) -> Job:
    if job.status in state.FINAL:
        raise Conflict(f"job {job.id} is already {job.status}; there is nothing to cancel")
    if job.status == state.CANCELLING:
        return job
    state.transition(uow.session, job, state.CANCELLING, message="cancel requested")
    repo.cancel_pending_shards(uow.session, job.id)
    uow.send_after_commit(FINALIZE_JOB, str(job.id))
    return job
