"""Units of work (shards) under a lease: claim with a fencing token, heartbeat, and settle as
failed, retried or handed off. An inference shard runs in ``worker.runner``; a fine-tune (one
unit for the whole job) in ``worker.finetune``."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.records import Format, Range
from barge.specs import FinetuneSpec, JobSpec, parse_spec
from db import repositories as repo
from db import state
from db.models import Shard
from worker import metrics
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def run_shard(ctx: WorkerContext, shard_id: uuid.UUID) -> None:
    from worker import finetune, runner  # they build on this module

    work = claim(ctx, shard_id)
    if work is None:
        return
    started = time.monotonic()
    if isinstance(work.spec, FinetuneSpec):
        status = finetune.run_claimed(ctx, work)
    else:
        status = runner.run_claimed(ctx, work)
    metrics.SHARD_SECONDS.labels(work.spec.task, status).observe(time.monotonic() - started)


class Stop(Exception):
    """Stop working on the shard: the job is no longer running."""

    def __init__(self, job_status: str):
        self.job_status = job_status
        super().__init__(f"job is {job_status}")


class LeaseLost(Exception):
    """Another attempt holds the shard now; this one must not write anything."""


@dataclass(frozen=True)
class ShardWork:
    shard_id: uuid.UUID
    job_id: uuid.UUID
    index: int
    attempt: int
    source: str
    fmt: Format
    rng: Range
    record_offset: int
    spec: JobSpec
    model_ref: str
    handoffs: int = 0
    output_uri: str = ""

    @property
    def label(self) -> str:
        """How messages name this unit."""
        if isinstance(self.spec, FinetuneSpec):
            return "fine-tune"
        return f"shard {self.index} ({self.source})"

    @property
    def failed_attempts(self) -> int:
        """Attempts that count against BARGE_MAX_ATTEMPTS (hand-offs are not failures)."""
        return self.attempt - self.handoffs


def claim(ctx: WorkerContext, shard_id: uuid.UUID) -> ShardWork | None:
    settings = ctx.settings
    with ctx.session() as session:
        shard = session.get(Shard, shard_id)
        if shard is None or shard.status in state.SHARD_FINAL:
            return None  # unknown, or a duplicate delivery of finished work
        job = repo.get_job(session, shard.job_id)
        assert job is not None
        if job.status != state.RUNNING:
            settled = repo.settle_unstarted_shard(
                session, shard.id, state.SHARD_CANCELLED, f"not run: job is {job.status}"
            )
        elif shard.attempt - shard.handoffs >= settings.max_attempts:
            what = (
                "the fine-tune"
                if job.type == "finetune"
                else f"shard {shard.index} ({shard.source_uri}, records {shard.start_record}-"
                f"{shard.start_record + shard.record_count - 1})"
            )
            error = (
                f"{what} gave up after {shard.attempt - shard.handoffs} attempts; last error: "
                f"{shard.last_error or 'the worker running it died or stalled'}"
            )
            settled = repo.settle_unstarted_shard(session, shard.id, state.SHARD_FAILED, error)
            if settled:
                state.transition(session, job, state.FAILED, error=error)
        else:
            attempt = repo.claim_shard(
                session, shard.id, ctx.name, timedelta(seconds=settings.lease_seconds)
            )
            if attempt is None:
                return None  # someone else holds a live lease
            if attempt > 1:
                repo.add_event(
                    session,
                    job.id,
                    "shard_retry",
                    f"shard {shard.index} attempt {attempt} on {ctx.name}",
                    shard=shard.index,
                    attempt=attempt,
                    previous_error=shard.last_error,
                )
            return ShardWork(
                shard_id=shard.id,
                job_id=job.id,
                index=shard.index,
                attempt=attempt,
                source=shard.source_uri,
                fmt=Format(shard.input_format, shard.compressed),
                rng=Range(
                    shard.start_record,
                    shard.record_count,
                    shard.first_line,
                    shard.byte_start,
                    shard.byte_end,
                ),
                record_offset=shard.record_offset,
                spec=parse_spec(job.spec),
                model_ref=job.model_uri or job.spec["model"],
                handoffs=shard.handoffs,
                output_uri=job.output_uri,
            )
    if settled:
        finalize_if_last(ctx, shard.job_id)
    return None


def fail(ctx: WorkerContext, work: ShardWork, message: str) -> None:
    error = f"{work.label}: {message}"
    with ctx.session() as session:
        if repo.finish_shard(
            session,
            work.shard_id,
            work.attempt,
            state.SHARD_FAILED,
            succeeded=0,
            failed=0,
            output_key=None,
            errors_key=None,
            error=error,
        ):
            job = repo.lock_job(session, work.job_id)
            if job is not None and job.status == state.RUNNING:
                state.transition(session, job, state.FAILED, error=error)
    finalize_if_last(ctx, work.job_id)


def retry_or_fail(ctx: WorkerContext, work: ShardWork, message: str) -> None:
    if work.failed_attempts >= ctx.settings.max_attempts:
        fail(ctx, work, f"failed after {work.failed_attempts} attempts; last error: {message}")
        return
    with ctx.session() as session:
        released = repo.release_shard(session, work.shard_id, work.attempt, message)
        if released:
            repo.add_event(
                session,
                work.job_id,
                "shard_error",
                f"{work.label} attempt {work.attempt} failed, will retry: {message}",
                shard=work.index,
                attempt=work.attempt,
            )
    if released:
        ctx.send(
            RUN_SHARD,
            str(work.shard_id),
            str(work.job_id),
            work.index,
            countdown=min(60, 2**work.attempt),
        )


def finalize_if_last(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    with ctx.session() as session:
        remaining = repo.unfinished_shard_count(session, job_id)
    if remaining == 0:
        ctx.send(FINALIZE_JOB, str(job_id))


class Control:
    """Between batches: is the job still running? Every few seconds: heartbeat and progress.

    ``check_seconds`` throttles the status check (a fine-tune's steps can be milliseconds)."""

    def __init__(self, ctx: WorkerContext, work: ShardWork, check_seconds: float = 0.0):
        self.ctx = ctx
        self.work = work
        self.succeeded = 0
        self.failed = 0
        self.steps_done: int | None = None
        self.check_seconds = check_seconds
        self._last_beat = time.monotonic()
        self._last_check = float("-inf")

    def between_batches(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.check_seconds:
            return
        self._last_check = now
        with self.ctx.session() as session:
            status = repo.job_status(session, self.work.job_id)
        if status != state.RUNNING:
            raise Stop(status or "gone")
        if time.monotonic() - self._last_beat >= self.ctx.settings.heartbeat_seconds:
            self.beat()

    def beat(self) -> None:
        with self.ctx.session() as session:
            held = repo.heartbeat_shard(
                session,
                self.work.shard_id,
                self.work.attempt,
                timedelta(seconds=self.ctx.settings.lease_seconds),
                self.succeeded,
                self.failed,
                self.steps_done,
            )
        if not held:
            raise LeaseLost()
        self._last_beat = time.monotonic()
