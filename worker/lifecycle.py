"""The lifecycle of a unit of work (an inference shard, or a whole fine-tune): claim, run under a
lease, settle. Every way a unit can end is decided here, once.

1. **claim**: a conditional UPDATE takes the unit under a new attempt, the fencing token. A
   duplicate delivery finds it claimed and does nothing; a unit of a job no longer running is
   cancelled; one that has used ``BARGE_MAX_ATTEMPTS`` fails the job; a unit of a pausing or
   paused job is left pending (its message is spent: resume sends it again).
2. **run**: the run step of the job's kind (``worker.kinds.kind_for``; the step is in
   ``worker.runners``) works under a ``Lease`` (``worker.lease``): between batches it checks the
   job still runs (else ``Stop``), every few seconds it heartbeats with progress, and
   ``beat()`` before a write proves the attempt still holds the unit (else ``LeaseLost``). It
   returns a ``Result``.
3. **settle**: the result, or the exception the run raised, becomes an ``Outcome``, and
   ``finish_shard`` is called in one shape only (``_record``): done, cancelled, failed, retried
   (re-queued with a back-off until ``BARGE_MAX_ATTEMPTS``), handed off (re-queued at once),
   or dropped because the lease was lost. The last unit of a job to settle sends
   ``finalize_job``; the last running unit of a pausing job to settle makes it paused
   (``services.jobs.pause_if_idle``). Messages go through ``ctx.unit_of_work()``: after the commit.

Imports: ``barge``, ``db``, ``services.jobs`` (pause), ``services.scopes``, ``worker.context``, ``worker.kinds``,
``worker.lease``, ``worker.metrics``, ``worker.presence`` (in the run step's process only: the
warm models, noted as a unit that loaded one ends), ``worker.usage`` (each attempt's row and
what it used); never ``worker.runners`` (the kinds name their run steps), ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from barge.errors import PermanentJobError, describe
from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.specs import JobSpec, parse_spec
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job, Shard, Tenant
from services import jobs, scopes
from services.unit_of_work import UnitOfWork
from worker import kinds, metrics, usage
from worker.context import WorkerContext
from worker.lease import Lease, LeaseLost, Outcome, Result, ShardWork, Stop

log = logging.getLogger(__name__)


# The shard status each outcome that finishes a unit records.
_SHARD_STATUS = {
    Outcome.SUCCEEDED: state.SHARD_SUCCEEDED,
    Outcome.CANCELLED: state.SHARD_CANCELLED,
    Outcome.FAILED: state.SHARD_FAILED,
}


def run_shard(
    ctx: WorkerContext,
    shard_id: uuid.UUID,
    kind_for: Callable[[JobSpec], kinds.JobKind] = kinds.kind_for,
) -> None:
    """Claim the unit, run it as its job's kind runs, record how it ended."""
    work = claim(ctx, shard_id)
    if work is None:
        return
    started = time.monotonic()
    outcome = run_claimed(ctx, work, kind_for(work.spec))
    metrics.SHARD_SECONDS.labels(work.spec.task, outcome.value).observe(time.monotonic() - started)


def run_claimed(ctx: WorkerContext, work: ShardWork, kind: kinds.JobKind) -> Outcome:
    """Run a claimed unit to its end and settle it: the one place where results and exceptions
    become outcomes."""
    lease = Lease(ctx, work, max(kind.status_check_seconds, ctx.settings.status_check_seconds))
    usage.Meter(ctx, work)  # the attempt's usage: seconds, tokens, energy
    started = time.monotonic()
    time_limit_error = kind.time_limit_error.format(limit=ctx.settings.shard_soft_time_limit)
    try:
        outcome = settle(ctx, work, _run(kind, ctx, work, lease))
    except LeaseLost:
        outcome = Outcome.LEASE_LOST
    except SoftTimeLimitExceeded:
        outcome = fail(ctx, work, time_limit_error)
    except Exception as exc:
        if time_ran_out(exc):
            outcome = fail(ctx, work, time_limit_error)
        elif isinstance(exc, PermanentJobError):
            outcome = fail(ctx, work, exc.message)
        else:
            log.exception("%s attempt %s failed", work.log_name, work.attempt)
            retry_or_fail(ctx, work, describe(exc))
            outcome = Outcome.ERROR
    finally:
        lease.close()  # settled, or given up: its keeper thread stops renewing
    usage.end_attempt(ctx, work, lease, outcome.value)  # unless its settlement ended it
    if outcome is Outcome.LEASE_LOST:
        log.warning("%s attempt %s lost its lease; dropping its work", work.log_name, work.attempt)
    _summary(work, lease, outcome, time.monotonic() - started)
    return outcome


def time_ran_out(exc: BaseException) -> bool:
    """Whether the shard's soft time limit is what this exception is really about: a library
    that wraps every error it meets (transformers' lazy imports raise "Could not import module"
    from whatever interrupted them) must not turn "time is up" into a model error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SoftTimeLimitExceeded):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _summary(work: ShardWork, lease: Lease, outcome: Outcome, seconds: float) -> None:
    """One line per unit of work: what it did, how fast, how it ended."""
    if lease.steps_done is not None:
        done = f"step {lease.steps_done}"
    else:
        records = lease.succeeded + lease.failed
        done = (
            f"{records} records, {lease.failed} failed, "
            f"{records / seconds if seconds > 0 else 0.0:.1f} rec/s"
        )
    log.info(
        "%s attempt %s %s: %s, %.2f s",
        work.log_name,
        work.attempt,
        outcome.value,
        done,
        seconds,
        extra={"job_id": work.job_id, "shard": work.index},
    )


def _run(kind: kinds.JobKind, ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """The run step's result; a ``Stop`` it lets out ends the unit cancelled at its progress."""
    if work.denied:
        raise PermanentJobError(work.denied)
    try:
        result = kind.run(ctx, work, lease)
        # A model it loaded is warm here: said now, before the unit settles (imported here, as
        # ``worker_process_init`` does: presence reads the model cache, which the control
        # worker, importing this module, never loads).
        from worker import presence

        presence.note_if_models_changed(ctx)
        return result
    except Stop as stop:
        at = "" if lease.steps_done is None else f" at step {lease.steps_done}"
        return Result(
            Outcome.CANCELLED,
            error=f"stopped{at}: job is {stop.job_status}",
            steps_done=lease.steps_done,
        )


def settle(ctx: WorkerContext, work: ShardWork, result: Result) -> Outcome:
    """Record ``result`` if this attempt still holds the unit (fencing); LEASE_LOST if not."""
    if result.outcome is Outcome.HANDED_OFF:
        return _hand_off(ctx, work, result)
    with ctx.unit_of_work() as uow:
        outcome = _record(uow.session, work, result)
        if outcome is not Outcome.LEASE_LOST:
            uow.session.commit()  # the settlement, before counting (same connection)
            _send_finalize_if_last(uow, work.job_id)
            jobs.pause_if_idle(uow.session, work.job_id)
    return outcome


def _record(session: Session, work: ShardWork, result: Result) -> Outcome:
    """Mark the unit final (the one ``finish_shard`` call); a failed unit fails its job."""
    job: Job | None = None
    if result.publish is not None:
        job = repo.lock_job(session, work.job_id)
        if job is None or job.status not in state.IN_PROGRESS:
            result = replace(result, outcome=Outcome.CANCELLED, publish=None)
    held = repo.finish_shard(
        session,
        work.shard_id,
        work.attempt,
        _SHARD_STATUS[result.outcome],
        succeeded=result.succeeded,
        failed=result.failed,
        output_key=result.output_key,
        errors_key=result.errors_key,
        error=result.error,
        steps_done=result.steps_done,
        usage=result.usage,
    )
    if not held:
        return Outcome.LEASE_LOST
    counts = (result.succeeded, result.failed, result.steps_done)
    usage.end_in(session, work, result.outcome.value, counts, result.usage)
    if result.publish is not None:
        assert job is not None
        result.publish(session, job)
    elif result.outcome is Outcome.FAILED:
        job = repo.lock_job(session, work.job_id)
        if job is not None and job.status in state.IN_PROGRESS:
            state.transition(session, job, state.FAILED, error=result.error)
            repo.cancel_pending_shards(session, job.id, "not run: job is failed")
    return result.outcome


def fail(ctx: WorkerContext, work: ShardWork, message: str) -> Outcome:
    """Fail the unit, and with it its job."""
    return settle(ctx, work, Result(Outcome.FAILED, error=f"{work.label}: {message}"))


def retry_or_fail(ctx: WorkerContext, work: ShardWork, message: str) -> None:
    """Give the unit back for another attempt after a back-off, or fail it once it has used
    ``BARGE_MAX_ATTEMPTS``."""
    if work.failed_attempts >= ctx.settings.max_attempts:
        fail(ctx, work, f"failed after {work.failed_attempts} attempts; last error: {message}")
        return
    back_off = min(60, 2**work.attempt)  # seconds; no claim takes the unit before (not_before)
    with ctx.unit_of_work() as uow:
        if repo.release_shard(uow.session, work.shard_id, work.attempt, message, back_off):
            repo.add_event(
                uow.session,
                work.job_id,
                "shard_error",
                f"{work.label} attempt {work.attempt} failed, will retry: {message}",
                shard=work.index,
                attempt=work.attempt,
            )
            uow.send_after_commit(
                RUN_SHARD,
                str(work.shard_id),
                str(work.job_id),
                work.index,
                countdown=back_off,
            )
            uow.session.commit()  # released, before counting what still runs
            jobs.pause_if_idle(uow.session, work.job_id)


def _hand_off(ctx: WorkerContext, work: ShardWork, result: Result) -> Outcome:
    """Give the unit back at a checkpoint and re-queue it at once (not a failed attempt); a
    paused job's unit is sent again when the job is resumed."""
    step = result.steps_done
    assert step is not None
    with ctx.unit_of_work() as uow:
        job = repo.lock_job(uow.session, work.job_id)
        paused = job is not None and job.status in state.PAUSE_STATES
        handed = repo.hand_off_shard(uow.session, work.shard_id, work.attempt, step)
        if handed:
            repo.add_event(
                uow.session,
                work.job_id,
                "paused" if paused else "handoff",
                f"paused at step {step}; the worker is free"
                if paused
                else f"slice ended at step {step}; continuing from its checkpoint",
                step=step,
                attempt=work.attempt,
            )
            if paused:
                jobs.pause_if_idle(uow.session, work.job_id)
            else:
                uow.send_after_commit(RUN_SHARD, str(work.shard_id), str(work.job_id), work.index)
    return Outcome.HANDED_OFF if handed else Outcome.LEASE_LOST


def finalize_if_last(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    """Send ``finalize_job`` when no unit of the job is left unsettled. It counts after the
    settling transaction committed, so of two last units settling at once at least one sees
    the other settled."""
    with ctx.unit_of_work() as uow:
        _send_finalize_if_last(uow, job_id)


def _send_finalize_if_last(uow: UnitOfWork, job_id: uuid.UUID) -> None:
    """``finalize_if_last`` in a scope whose settlement is already committed."""
    if repo.unfinished_shard_count(uow.session, job_id) == 0:
        uow.send_after_commit(FINALIZE_JOB, str(job_id))


def claim(ctx: WorkerContext, shard_id: uuid.UUID) -> ShardWork | None:
    """Take a unit under a new attempt; None when there is nothing to run now.

    Fair share: a ``run_shard`` message is a token for one unit of work of any tenant, not a
    reservation of the unit it names. The named unit runs when its tenant's turn is as good as
    any other's: fewest units running under a live lease, then least recently served. Else the
    fairest tenant's next unit runs in its place (its oldest running job's lowest claimable
    shard), and so it does when the named unit is settled, held or backing off. So one
    tenant's backlog of messages cannot keep another tenant's job waiting behind it.

    The invariant the reconciler counts on holds: the gpu queue holds at least one message per
    pending unit of a running job, since a message is spent only on claiming a unit, on
    settling the named one (its job stopped running: cancelled; it used its attempts: failed,
    with its job), when no unit at all can be claimed now (a unit backing off still has its
    delayed message), or when the named unit's job is pausing or paused (resume sends every
    unit of the job again, and the reconciler leaves a paused job's units alone).
    Fencing (the attempt), the conditional claim and the back-off (``not_before``) are the
    repository's."""
    settled: uuid.UUID | None = None
    started = time.monotonic()
    with ctx.session() as session:
        named = repo.shard_job_tenant(session, shard_id)
        if named is not None and named[0].status not in state.SHARD_FINAL:
            shard, job, _tenant = named
            used_up = shard.attempt - shard.handoffs >= ctx.settings.max_attempts
            if job.status in state.PAUSE_STATES:
                named = None  # its message is spent; resume sends the job's units again
            elif job.status != state.RUNNING or used_up:
                if _settle_unstarted(session, shard, job):
                    settled = shard.job_id
                named = None
        else:
            named = None  # unknown, or a duplicate delivery of finished work
        work = None if settled else _take(ctx, session, named, started)
    if settled:
        finalize_if_last(ctx, settled)
    return work


def _take(
    ctx: WorkerContext,
    session: Session,
    named: tuple[Shard, Job, Tenant | None] | None,
    started: float,
) -> ShardWork | None:
    """Claim the named unit if fairness allows it, else the fairest tenant's next unit."""
    settings = ctx.settings
    lease = timedelta(seconds=settings.lease_seconds)
    turns = repo.fair_turns(session, utcnow(), settings.max_attempts)
    if named is not None:
        shard, job, tenant = named
        mine = next((t for t in turns if t.tenant_id == job.tenant_id), None)
        if mine is not None and mine.rank <= turns[0].rank:
            attempt = repo.claim_shard(session, shard.id, ctx.name, lease)
            if attempt is not None:
                return _taken(ctx, session, shard, job, tenant, attempt, started)
    for turn in turns:
        claimed = repo.claim_next_shard(
            session, turn.job_id, ctx.name, lease, settings.max_attempts
        )
        if claimed is not None:
            picked_id, attempt = claimed
            picked = session.get(Shard, picked_id)
            its_job = session.get(Job, turn.job_id)
            assert picked is not None and its_job is not None
            its_tenant = session.get(Tenant, its_job.tenant_id)
            return _taken(ctx, session, picked, its_job, its_tenant, attempt, started)
    return None  # nothing claimable now: held by live leases, backing off, or settled


def _taken(
    ctx: WorkerContext,
    session: Session,
    shard: Shard,
    job: Job,
    tenant: Tenant | None,
    attempt: int,
    started: float,
) -> ShardWork:
    """The claimed unit, with the scope check of its job done in the claim's transaction (the
    job row and the tenant's scopes as they are now)."""
    repo.start_attempt(session, shard.id, job.id, attempt, ctx.name, utcnow())
    if attempt > 1:
        repo.add_event(
            session,
            job.id,
            "shard_retry",
            f"shard {shard.index} attempt {attempt}",  # the worker's host stays in its log
            shard=shard.index,
            attempt=attempt,
            previous_error=shard.last_error,
        )
    # The tenant as the claim read it (no scopes at all if it is gone).
    held = scopes.scopes_of(tenant, ctx.settings) if tenant else scopes.Scopes(read=(), write=())
    work = ShardWork.of(
        shard,
        job,
        attempt,
        scopes.denial(session, ctx.settings, job, held),
        held,
        claim_started=started,
    )
    return replace(work, unit_name=kinds.kind_for(work.spec).unit_name)


def _settle_unstarted(session: Session, shard: Shard, job: Job) -> bool:
    """Cancel the unit of a job that stopped running; fail one that used its attempts (and its
    job). True if this call settled it."""
    if job.status != state.RUNNING:
        return repo.settle_unstarted_shard(
            session, shard.id, state.SHARD_CANCELLED, f"not run: job is {job.status}"
        )
    unit_name = kinds.kind_for(parse_spec(job.spec)).unit_name
    records = (
        f"{shard.record_count} records"
        if shard.pack_objects is not None
        else f"records {shard.start_record}-{shard.start_record + shard.record_count - 1}"
    )
    what = (
        f"the {unit_name}"
        if unit_name
        else f"shard {shard.index} ({shard.source_shown}, {records})"
    )
    error = (
        f"{what} gave up after {shard.attempt - shard.handoffs} attempts; last error: "
        f"{shard.last_error or 'the worker running it died or stalled'}"
    )
    settled = repo.settle_unstarted_shard(session, shard.id, state.SHARD_FAILED, error)
    if settled:
        state.transition(session, job, state.FAILED, error=error)
        # its other units' messages may be spent on other tenants' work (fair share): settle now
        repo.cancel_pending_shards(session, job.id, "not run: job is failed")
    return settled
