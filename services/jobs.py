"""Jobs as a user sees them (status, progress with rate and ETA, where the outputs are), and
cancelling, pausing and resuming one.

Pause: a running job moves to ``pausing``; no new shard of it is claimed, the shards running
finish (a fine-tune checkpoints at its next step and gives its worker back), and once none runs
under a live lease it is ``paused`` (``pause_if_idle``: at the pause, as each unit settles, and
by the reconciler). Resume moves a pausing or paused job back to ``running`` and sends every
unit no one holds again. A pausing or paused job counts as active for quotas and can be
cancelled."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from barge.errors import Conflict, IllegalTransition
from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.settings import Settings
from barge.status import CANCELLING, FINAL, PAUSE_STATES, PAUSED, PAUSING, QUEUED, RUNNING
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job
from services import audit, retries, usage
from services.context import ServiceContext
from services.unit_of_work import UnitOfWork


def rate_and_eta(
    done: int, total: int | None, elapsed: float | None, running: bool
) -> tuple[float | None, float | None]:
    """Work per second so far, and the seconds left at that rate (while running)."""
    rate = round(done / elapsed, 2) if elapsed and elapsed > 0 and done else None
    eta = round(max(0, total - done) / rate, 1) if rate and running and total is not None else None
    return rate, eta


def examples_per_step(spec: dict[str, Any]) -> int:
    hp = spec.get("hyperparameters") or {}
    assert isinstance(hp, dict)
    return int(hp.get("batch_size", 16)) * int(hp.get("gradient_accumulation_steps", 1))


def waits_for_a_gpu_worker(job: Job, progress: repo.Progress) -> bool:
    """Running, with shards to run and none of them running."""
    unsettled = (job.shards_total or 0) - progress.shards_done
    return job.status == RUNNING and unsettled > 0 and progress.shards_running == 0


def waiting_for(job: Job, progress: repo.Progress, ahead: int = 0) -> str | None:
    """What a job waits for, in words; None while its shards run, or once it is finalized.
    ``ahead``: the running jobs planned before it that still have shards to run."""
    if job.status == QUEUED:
        return "waiting to be planned"
    if job.status == PAUSED:
        return "paused: resume it to go on"
    if job.manifest is not None:
        return None
    if waits_for_a_gpu_worker(job, progress):
        if not ahead:
            return "waiting for a GPU worker"
        return f"waiting for a GPU worker: {ahead} job{'' if ahead == 1 else 's'} ahead"
    if (job.shards_total or 0) - progress.shards_done <= 0:
        return "finalizing"
    if job.status == PAUSING:
        n = progress.shards_running
        return f"pausing: waiting for {n} running shard{'' if n == 1 else 's'} to finish"
    if job.status != RUNNING:  # cancelling, or failed: its running shards stop within a batch
        n = progress.shards_running
        return f"waiting for {n} running shard{'' if n == 1 else 's'} to stop"
    return None


@dataclass(frozen=True)
class JobView:
    """A job as its tenant sees it: the row, its progress, and what they tell (the rate and
    ETA of its work, where its manifest and errors are, what it waits for, its token usage).
    The API's ``JobOut`` is made from it."""

    job: Job
    progress: repo.Progress
    steps_done: int | None  # a fine-tune's optimizer steps done; None for other jobs
    records_per_second: float | None
    eta_seconds: float | None
    manifest: str | None  # its _manifest.json, once written
    errors: str | None  # its errors/ prefix, once a record failed
    waiting: str | None
    usage: dict[str, int] | None  # token totals (generate and OpenAI batches), once final
    resources: dict[str, Any] | None = None  # what its attempts used (``services.usage``)
    retries: dict[str, Any] | None = None  # its retries and effective counts (``services.retries``)

    def as_dict(self) -> dict[str, Any]:
        """The view as plain values, in the shape the API answers (``JobOut``) and the console
        renders."""
        job, progress = self.job, self.progress
        return {
            "id": str(job.id),
            "type": job.type,
            "status": job.status,
            "spec": job.spec,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "progress": {
                "records_total": job.records_total,
                "records_succeeded": progress.records_succeeded,
                "records_failed": progress.records_failed,
                "shards_total": job.shards_total,
                "shards_done": progress.shards_done,
                "records_per_second": self.records_per_second,
                "eta_seconds": self.eta_seconds,
                "steps_done": self.steps_done,
                "steps_total": job.steps_total,
            },
            "output": {"uri": job.output_uri, "manifest": self.manifest, "errors": self.errors},
            "error": job.error,
            "metadata": job.meta or {},
            "waiting": self.waiting,
            "usage": self.usage,
            "resources": self.resources,
            "retries": self.retries,
        }


def present(
    job: Job, progress: repo.Progress, now: datetime | None = None, ahead: int = 0
) -> JobView:
    """The job's public view."""
    now = now or utcnow()
    # What counts as work done, and how much there is: records, or a fine-tune's examples
    # (optimizer steps times examples per step).
    steps_done: int | None = None
    total: int | None
    if job.steps_total is not None:
        steps_done = progress.steps_done
        per_step = examples_per_step(job.spec)
        done, total = steps_done * per_step, job.steps_total * per_step
    else:
        done, total = progress.records_succeeded + progress.records_failed, job.records_total
    elapsed = None
    if job.started_at is not None:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
    rate, eta = rate_and_eta(done, total, elapsed, job.status == RUNNING)
    out = output_prefix(job)
    return JobView(
        job=job,
        progress=progress,
        steps_done=steps_done,
        records_per_second=rate,
        eta_seconds=eta,
        manifest=str(out.join("_manifest.json")) if job.manifest is not None else None,
        errors=str(out.join("errors/")) if progress.records_failed else None,
        waiting=waiting_for(job, progress, ahead),
        usage=(job.manifest or {}).get("usage"),
    )


def output_prefix(job: Job) -> S3Uri:
    """The job's output prefix (its row holds it as the submission normalised it)."""
    return S3Uri.parse(job.output_uri).as_prefix()


def present_many(
    session: Session, jobs: list[Job], settings: Settings | None = None
) -> list[JobView]:
    """The public view of each job: one query for their progress, one for their usage, and
    one more for the jobs ahead of those waiting for a GPU worker, if any. ``settings``: the
    prices of the usage's cost estimate."""
    progress = repo.progress_for(session, [j.id for j in jobs])
    waiting = [j.id for j in jobs if waits_for_a_gpu_worker(j, progress[j.id])]
    ahead = repo.jobs_ahead(session, waiting)
    used = usage.usage_for(session, settings, [j.id for j in jobs])
    children = repo.retries_of(session, [j.id for j in jobs])
    now = utcnow()
    return [
        replace(
            present(j, progress[j.id], now, ahead.get(j.id, 0)),
            resources=used.get(j.id),
            retries=retries.retries_view(session, j, children.get(j.id, [])),
        )
        for j in jobs
    ]


def cancel(ctx: ServiceContext, job: Job, reason: str = "cancel requested") -> Job:
    """The principal's cancel (``request_cancel``), audited when it changed the job's status."""
    before = job.status
    request_cancel(ctx.uow, job, reason)
    if job.status != before:
        audit.record(ctx, "job.cancel", f"job:{job.id}", was=before)
    return job


def request_cancel(uow: UnitOfWork, job: Job, reason: str = "cancel requested") -> Job:
    """Move the job to cancelling (durable: workers stop within one batch); pending shards are
    cancelled now and finalize is sent after the commit."""

    def step() -> Job:
        if job.status in FINAL:
            raise Conflict(f"job {job.id} is already {job.status}; there is nothing to cancel")
        if job.status == CANCELLING:
            return job
        state.transition(uow.session, job, CANCELLING, message=reason)
        repo.cancel_pending_shards(uow.session, job.id)
        uow.send_after_commit(FINALIZE_JOB, str(job.id))
        return job

    return while_it_moves(job, step, "cancel")


def while_it_moves(job: Job, step: Callable[[], Job], what: str) -> Job:
    """``step()``; when a worker moved the job between our read and our UPDATE (queued →
    running, pausing → paused: ``IllegalTransition`` with the job refreshed), ``step()`` again
    on what the job is now, up to ``CANCEL_TRIES`` times, instead of a 409 for a race the user
    cannot see."""
    for _ in range(CANCEL_TRIES):
        seen = job.status
        try:
            return step()
        except IllegalTransition:
            if job.status == seen:
                raise
    raise Conflict(f"job {job.id} kept changing (now {job.status}); ask to {what} it again")


CANCEL_TRIES = 5  # a job moves at most a few times a second: a cancel racing it tries again


def final_among(session: Session, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``job_ids`` are final (or gone): what ``GET /v1/jobs/{id}?wait=`` waits for."""
    return repo.final_job_ids(session, job_ids)


def shards_view(session: Session, settings: Settings, job: Job) -> list[dict[str, Any]]:
    """The job's shards as its owner sees them: the worker of each by its label
    (``usage.worker_label``), like the job's usage and the console's timeline."""
    rows = []
    for shard in repo.shards_of(session, job.id):
        row = {c: getattr(shard, c) for c in SHARD_FIELDS}
        row["worker"] = shard.worker and usage.worker_label(settings, shard.worker)
        rows.append(row)
    return rows


SHARD_FIELDS = (
    "index",
    "status",
    "source_uri",
    "pack_objects",
    "pack_first",
    "pack_last",
    "start_record",
    "record_count",
    "attempt",
    "records_succeeded",
    "records_failed",
    "last_error",
    "lease_expires_at",
    "started_at",
    "finished_at",
)


def pause(ctx: ServiceContext, job: Job) -> Job:
    """Pause a running job (audited): no new shard of it is claimed; the running ones finish,
    and then it is paused. Pausing a pausing or paused job changes nothing; any other status
    is a 409."""

    def step() -> Job:
        if job.status in PAUSE_STATES:
            return job
        if job.status != RUNNING:
            raise Conflict(
                f"job {job.id} is {job.status}; only a running job can be paused", field="status"
            )
        state.transition(ctx.session, job, PAUSING, message="pause requested")
        audit.record(ctx, "job.pause", f"job:{job.id}")
        pause_if_idle(ctx.session, job.id)
        return job

    return while_it_moves(job, step, "pause")


def resume(ctx: ServiceContext, job: Job) -> Job:
    """Resume a pausing or paused job (audited): it runs again, and every unit of it no one
    holds is sent again after the commit. Resuming a running job changes nothing; any other
    status is a 409."""

    def step() -> Job:
        if job.status == RUNNING:
            return job
        if job.status not in PAUSE_STATES:
            raise Conflict(
                f"job {job.id} is {job.status}; only a pausing or paused job can be resumed",
                field="status",
            )
        before = job.status
        state.transition(ctx.session, job, RUNNING, message="resumed")
        for shard_id, job_id, index in repo.take_shards_to_resume(ctx.session, job.id, utcnow()):
            ctx.uow.send_after_commit(RUN_SHARD, str(shard_id), str(job_id), index)
        audit.record(ctx, "job.resume", f"job:{job.id}", was=before)
        return job

    return while_it_moves(job, step, "resume")


def pause_if_idle(session: Session, job_id: uuid.UUID, at: datetime | None = None) -> bool:
    """Move a pausing job none of whose units runs under a lease live ``at`` (now by default)
    to paused; whether it did. Takes the job's lock, so of two units settling at once the
    later one sees both settled."""
    job = repo.lock_job(session, job_id)
    if job is None or job.status != PAUSING:
        return False
    if repo.live_shard_count(session, job_id, at or utcnow()):
        return False
    state.transition(session, job, PAUSED, message="paused: no shard of it runs")
    return True
