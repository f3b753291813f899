"""Planning: the job's kind splits it into units (``worker.kinds``: the shards of its input
objects, or a fine-tune's one unit), then the job starts and its units are dispatched. Each
planning run is counted; a run that fails is retried by the reconciler until
``BARGE_MAX_ATTEMPTS``.

A planned job over one of its tenant's quotas (shards, records, fine-tune steps) fails here,
before any shard exists, naming the limit.

Imports: ``barge``, ``db``, ``services.quotas``, ``services.scopes``, ``worker.context``,
``worker.kinds`` (no torch); never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from barge.errors import BargeError, PermanentJobError, ServiceUnavailable, StorageError, describe
from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.specs import parse_spec
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Tenant
from services import quotas, scopes
from worker.context import WorkerContext
from worker.kinds import kind_for
from worker.kinds.steps import Plan

log = logging.getLogger(__name__)

ERROR_CHARS = 1000  # of an exception's text kept in events and the job's error


@dataclass
class _Claim:
    attempt: int
    spec: dict[str, Any]
    model_ref: str
    output_uri: str


def plan_job(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    """Plan a queued job and dispatch its shards.

    Each planning run is counted (``jobs.plan_attempts``) and committed before it starts, so a
    run that kills its process counts too. A ``BargeError`` (bad input, bad model directory)
    fails the job at once; any other exception is recorded as a ``plan_error`` event and
    re-raised, and the reconciler re-sends the job; after ``BARGE_MAX_ATTEMPTS`` runs the job
    fails, naming the last error."""
    claim = _claim(ctx, job_id)
    if claim is None:
        return
    try:
        with _KeepDispatched(ctx, job_id):
            plan = _make_plan(ctx, job_id, claim)
        _check_quotas(ctx, job_id, plan)
        _start(ctx, job_id, plan)
    except BargeError as exc:
        if not isinstance(exc, TRANSIENT):
            _fail(ctx, job_id, f"planning failed: {exc.message}")
            return
        if not _count_failure(ctx, job_id, claim, exc):
            raise
    except Exception as exc:
        if not _count_failure(ctx, job_id, claim, exc):
            raise


# Failures another attempt may not meet (the object store or a service briefly down): counted
# like a crash, not fatal at once.
TRANSIENT = (StorageError, ServiceUnavailable)


def _count_failure(ctx: WorkerContext, job_id: uuid.UUID, claim: _Claim, exc: Exception) -> bool:
    """Record a planning run's failure; on the last allowed attempt fail the job and return
    True (otherwise the caller re-raises, and the reconciler re-sends the job)."""
    error = _describe(exc)
    max_attempts = ctx.settings.max_attempts
    with ctx.session() as session:
        repo.add_event(
            session,
            job_id,
            "plan_error",
            error,
            attempt=claim.attempt,
            max_attempts=max_attempts,
        )
    if claim.attempt < max_attempts:
        log.warning(
            "plan: job %s attempt %s/%s failed (%s); the reconciler re-sends it",
            job_id,
            claim.attempt,
            max_attempts,
            error,
        )
        return False
    log.exception("plan: job %s attempt %s/%s failed", job_id, claim.attempt, max_attempts)
    _fail(ctx, job_id, _gave_up(claim.attempt, error))
    return True


def _claim(ctx: WorkerContext, job_id: uuid.UUID) -> _Claim | None:
    """Count this planning run, in its own committed transaction; None when there is nothing to
    plan (the job is gone, already planned, final or cancelling, or has used its attempts and
    is now failed)."""
    max_attempts = ctx.settings.max_attempts
    with ctx.unit_of_work() as uow:
        session = uow.session
        job = repo.lock_job(session, job_id)
        if job is None:
            log.warning("plan: job %s does not exist", job_id)
            return None
        if job.status != state.QUEUED:
            # already planned (a duplicate delivery) or final; a cancelled job is finalized
            if job.status == state.CANCELLING:
                uow.send_after_commit(FINALIZE_JOB, str(job_id))
            return None
        if job.plan_attempts >= max_attempts:
            error = _gave_up(job.plan_attempts, _last_error(session, job_id, job.plan_attempts))
            state.transition(session, job, state.FAILED, error=error)
            uow.send_after_commit(FINALIZE_JOB, str(job_id))  # writes the failed job's manifest
            return None
        job.plan_attempts += 1
        job.dispatched_at = utcnow()  # the reconciler waits a grace period from here
        return _Claim(job.plan_attempts, dict(job.spec), job.model_uri or "", job.output_uri)


def _make_plan(ctx: WorkerContext, job_id: uuid.UUID, claim: _Claim) -> Plan:
    """The job's plan, made by its kind's plan step, with the job's scopes checked first."""
    with ctx.session() as session:  # the job row and its tenant's scopes as they are now
        job = repo.get_job(session, job_id)
        if job is not None:
            scopes.check_job(session, ctx.settings, job)
    spec = parse_spec(claim.spec)
    return kind_for(spec).plan(ctx, spec, job_id, claim.model_ref, claim.output_uri)


def _check_quotas(ctx: WorkerContext, job_id: uuid.UUID, plan: Plan) -> None:
    """A plan over one of its tenant's quotas (shards, records, fine-tune steps) fails the job
    with an error naming the limit and its value, after a ``quota_exceeded`` event."""
    with ctx.session() as session:
        job = repo.get_job(session, job_id)
        if job is None:
            return
        limits = quotas.effective(session.get(Tenant, job.tenant_id), ctx.settings)
        over = quotas.plan_overrun(
            limits, shards=len(plan.shards), records=plan.total, steps=plan.steps_total
        )
        if over is None:
            return
        repo.add_event(
            session,
            job_id,
            "quota_exceeded",
            over.message,
            quota=over.quota,
            limit=over.limit,
            value=over.value,
        )
    raise PermanentJobError(over.message)


def _start(ctx: WorkerContext, job_id: uuid.UUID, plan: Plan) -> None:
    """Create the shards and move the job to running in one transaction, then dispatch."""
    with ctx.unit_of_work() as uow:
        session = uow.session
        job = repo.lock_job(session, job_id)
        if job is None or job.status != state.QUEUED:
            # cancelled (its cancel sends finalize), failed, or planned by a duplicate meanwhile
            log.info("plan: job %s is no longer queued; its plan is dropped", job_id)
            return
        now = utcnow()
        for shard in plan.shards:
            shard.dispatched_at = now
            session.add(shard)
        job.records_total = plan.total
        job.shards_total = len(plan.shards)
        if plan.steps_total is not None:
            job.steps_total = plan.steps_total
        session.flush()
        state.transition(session, job, state.RUNNING, message=plan.message, data=plan.data)
        for shard in plan.shards:
            uow.send_after_commit(RUN_SHARD, str(shard.id), str(job_id), shard.index)
        if not plan.shards:
            uow.send_after_commit(FINALIZE_JOB, str(job_id))


def _fail(ctx: WorkerContext, job_id: uuid.UUID, error: str) -> None:
    with ctx.unit_of_work() as uow:
        job = repo.lock_job(uow.session, job_id)
        if job is None or job.status != state.QUEUED:
            return  # cancelled or settled meanwhile
        state.transition(uow.session, job, state.FAILED, error=error)
        uow.send_after_commit(FINALIZE_JOB, str(job_id))  # writes the failed job's manifest


def _gave_up(attempts: int, last_error: str) -> str:
    return f"planning failed after {attempts} attempts; last error: {last_error}"


def _last_error(session: Session, job_id: uuid.UUID, attempts: int) -> str:
    """The error of the last planning run, or what is known when it left none (its process
    died)."""
    event = repo.last_event(session, job_id, "plan_error")
    died = f"attempt {attempts} ended without an error: its process died (killed or out of memory?)"
    if event is None:
        return died
    if event.data.get("attempt") == attempts:
        return event.message
    return f"{died}; attempt {event.data.get('attempt')} failed with {event.message}"


def _describe(exc: Exception) -> str:
    """``Type: message`` as a job may show it (``barge.errors.describe``)."""
    return describe(exc, ERROR_CHARS)


class _KeepDispatched:
    """While a job is being planned, keep its ``dispatched_at`` fresh so the reconciler does not
    re-send it as lost: a planning run that takes longer than the dispatch grace (a large gzip
    is read to its end) is not a crash. A run whose process dies stops refreshing, and the job
    is re-sent one grace period later."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID):
        self._ctx = ctx
        self._job_id = job_id
        settings = ctx.settings
        self._every = max(0.1, min(settings.heartbeat_seconds, settings.dispatch_grace_seconds / 3))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="barge-plan-beat")

    def __enter__(self) -> _KeepDispatched:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                with self._ctx.session() as session:
                    repo.touch_dispatched(session, self._job_id)
            except Exception:  # a database blip: the next beat tries again
                log.warning("plan: job %s: could not refresh dispatched_at", self._job_id)
