"""The lifecycle of a unit of work (an inference shard, or a whole fine-tune): claim, run under a
lease, settle. Every way a unit can end is decided here, once.

1. **claim**: a conditional UPDATE takes the unit under a new attempt, the fencing token. A
   duplicate delivery finds it claimed and does nothing; a unit of a job no longer running is
   cancelled; one that has used ``BARGE_MAX_ATTEMPTS`` fails the job.
2. **run**: the job kind's ``Runner`` (``worker.runners.records``, ``worker.runners.finetune.run``; chosen by
   ``worker.runners``) works under a ``Lease`` (``worker.lease``): between batches it checks the
   job still runs (else ``Stop``), every few seconds it heartbeats with progress, and
   ``beat()`` before a write proves the attempt still holds the unit (else ``LeaseLost``). It
   returns a ``Result``.
3. **settle**: the result, or the exception the run raised, becomes an ``Outcome``, and
   ``finish_shard`` is called in one shape only (``_record``): done, cancelled, failed, retried
   (re-queued with a back-off until ``BARGE_MAX_ATTEMPTS``), handed off (re-queued at once),
   or dropped because the lease was lost. The last unit of a job to settle sends
   ``finalize_job``. Messages go through ``ctx.unit_of_work()``: after the commit.

Imports: ``barge``, ``db``, ``services.scopes``, ``worker.context``, ``worker.lease``,
``worker.metrics``. Never the
runners (they import this module), ``api`` or ``cli``.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from barge.errors import PermanentJobError, describe
from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.specs import JobSpec
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job, Shard, Tenant
from services import scopes
from services.unit_of_work import UnitOfWork
from worker import metrics
from worker.context import WorkerContext
from worker.lease import Lease, LeaseLost, ShardWork, Stop
from worker.outputs import JsonlPart, ParquetPart, put_part

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How a claimed unit ended. The value is the ``status`` label of the shard metric."""

    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"  # the job stopped running (cancelled or failed) meanwhile
    FAILED = "failed"  # the unit, and so the job, failed
    ERROR = "error"  # an unexpected error: re-queued, or failed after BARGE_MAX_ATTEMPTS
    LEASE_LOST = "lease_lost"  # another attempt holds the unit; nothing of this one counts
    HANDED_OFF = "handed_off"  # stopped cleanly at a checkpoint; the next claim continues


# How often an inference shard reads its job's status between batches: a cancel stops it
# within one batch or this long, whichever is longer. Reading it before every batch cost a
# database round trip per batch (a quarter of an ONNX shard's time with fast batches).
INFERENCE_STATUS_CHECK_SECONDS = 0.25

# The shard status each outcome that finishes a unit records.
_SHARD_STATUS = {
    Outcome.SUCCEEDED: state.SHARD_SUCCEEDED,
    Outcome.CANCELLED: state.SHARD_CANCELLED,
    Outcome.FAILED: state.SHARD_FAILED,
}


@dataclass(frozen=True)
class Result:
    """What a run came to, for ``settle`` to record: SUCCEEDED, CANCELLED (stopped with what it
    finished) or HANDED_OFF (at ``steps_done``).

    ``publish`` is work committed in the same transaction that marks the unit succeeded (a
    fine-tune registers its model): it runs only while the job is still running; otherwise the
    unit ends CANCELLED and nothing is published."""

    outcome: Outcome
    succeeded: int = 0
    failed: int = 0
    output_key: str | None = None
    errors_key: str | None = None
    error: str | None = None
    steps_done: int | None = None
    usage: dict[str, int] | None = None  # token counts of the unit's records
    publish: Callable[[Session, Job], None] | None = None


def part_result(
    ctx: WorkerContext,
    work: ShardWork,
    output: str,
    part: JsonlPart | ParquetPart,
    errors: JsonlPart,
    stopped: bool,
    usage: dict[str, int] | None = None,
) -> Result:
    """PUT a shard's part and errors file (``worker.outputs.put_part``) and say what was
    written: SUCCEEDED, or CANCELLED when the run stopped early with what it finished."""
    output_key, errors_key = put_part(ctx.store, output, work.index, work.attempt, part, errors)
    return Result(
        Outcome.CANCELLED if stopped else Outcome.SUCCEEDED,
        succeeded=part.count,
        failed=errors.count,
        output_key=output_key,
        errors_key=errors_key,
        usage=usage,
    )


@dataclass(frozen=True)
class Runner:
    """How one kind of unit runs. ``run`` works under the lease and returns its ``Result``;
    ``time_limit_error`` is the failure when ``BARGE_SHARD_SOFT_TIME_LIMIT`` hits (formatted
    with ``limit``, in seconds); ``status_check_seconds`` throttles the lease's status check."""

    run: Callable[[WorkerContext, ShardWork, Lease], Result]
    time_limit_error: str
    status_check_seconds: float = INFERENCE_STATUS_CHECK_SECONDS


def run_shard(
    ctx: WorkerContext, shard_id: uuid.UUID, runner_for: Callable[[JobSpec], Runner]
) -> None:
    """Claim the unit, run it with the runner for its job's spec, record how it ended."""
    work = claim(ctx, shard_id)
    if work is None:
        return
    started = time.monotonic()
    outcome = run_claimed(ctx, work, runner_for(work.spec))
    metrics.SHARD_SECONDS.labels(work.spec.task, outcome.value).observe(time.monotonic() - started)


def run_claimed(ctx: WorkerContext, work: ShardWork, runner: Runner) -> Outcome:
    """Run a claimed unit to its end and settle it: the one place where results and exceptions
    become outcomes."""
    lease = Lease(ctx, work, runner.status_check_seconds)
    started = time.monotonic()
    time_limit_error = runner.time_limit_error.format(limit=ctx.settings.shard_soft_time_limit)
    try:
        outcome = settle(ctx, work, _run(runner, ctx, work, lease))
    except LeaseLost:
        outcome = Outcome.LEASE_LOST
    except SoftTimeLimitExceeded:
        outcome = fail(ctx, work, time_limit_error)
    except Exception as exc:
        if _time_ran_out(exc):
            outcome = fail(ctx, work, time_limit_error)
        elif isinstance(exc, PermanentJobError):
            outcome = fail(ctx, work, exc.message)
        else:
            log.exception("%s attempt %s failed", work.log_name, work.attempt)
            retry_or_fail(ctx, work, describe(exc))
            outcome = Outcome.ERROR
    finally:
        lease.close()  # settled, or given up: its keeper thread stops renewing
    if outcome is Outcome.LEASE_LOST:
        log.warning("%s attempt %s lost its lease; dropping its work", work.log_name, work.attempt)
    _summary(work, lease, outcome, time.monotonic() - started)
    return outcome


def _time_ran_out(exc: BaseException) -> bool:
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


def _run(runner: Runner, ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """The runner's result; a ``Stop`` it lets out ends the unit cancelled at its progress."""
    if work.denied:
        raise PermanentJobError(work.denied)
    try:
        return runner.run(ctx, work, lease)
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
    return outcome


def _record(session: Session, work: ShardWork, result: Result) -> Outcome:
    """Mark the unit final (the one ``finish_shard`` call); a failed unit fails its job."""
    job: Job | None = None
    if result.publish is not None:
        job = repo.lock_job(session, work.job_id)
        if job is None or job.status != state.RUNNING:
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
    if result.publish is not None:
        assert job is not None
        result.publish(session, job)
    elif result.outcome is Outcome.FAILED:
        job = repo.lock_job(session, work.job_id)
        if job is not None and job.status == state.RUNNING:
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


def _hand_off(ctx: WorkerContext, work: ShardWork, result: Result) -> Outcome:
    """Give the unit back at a checkpoint and re-queue it at once (not a failed attempt)."""
    step = result.steps_done
    assert step is not None
    with ctx.unit_of_work() as uow:
        handed = repo.hand_off_shard(uow.session, work.shard_id, work.attempt, step)
        if handed:
            repo.add_event(
                uow.session,
                work.job_id,
                "handoff",
                f"slice ended at step {step}; continuing from its checkpoint",
                step=step,
                attempt=work.attempt,
            )
            uow.send_after_commit(RUN_SHARD, str(work.shard_id), str(work.job_id), work.index)
    return Outcome.HANDED_OFF if handed else Outcome.LEASE_LOST


def job_event(ctx: WorkerContext, work: ShardWork, kind: str, message: str, **data: Any) -> None:
    """Append an event to the unit's job, in its own transaction."""
    with ctx.session() as session:
        repo.add_event(session, work.job_id, kind, message, **data)


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
    pending unit, since a message is spent only on claiming a unit, on settling the named one
    (its job stopped running: cancelled; it used its attempts: failed, with its job), or when
    no unit at all can be claimed now (a unit backing off still has its delayed message).
    Fencing (the attempt), the conditional claim and the back-off (``not_before``) are the
    repository's."""
    settled: uuid.UUID | None = None
    started = time.monotonic()
    with ctx.session() as session:
        named = repo.shard_job_tenant(session, shard_id)
        if named is not None and named[0].status not in state.SHARD_FINAL:
            shard, job, _tenant = named
            used_up = shard.attempt - shard.handoffs >= ctx.settings.max_attempts
            if job.status != state.RUNNING or used_up:
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
    return ShardWork.of(
        shard,
        job,
        attempt,
        scopes.denial(session, ctx.settings, job, held),
        held,
        claim_started=started,
    )


def _settle_unstarted(session: Session, shard: Shard, job: Job) -> bool:
    """Cancel the unit of a job that stopped running; fail one that used its attempts (and its
    job). True if this call settled it."""
    if job.status != state.RUNNING:
        return repo.settle_unstarted_shard(
            session, shard.id, state.SHARD_CANCELLED, f"not run: job is {job.status}"
        )
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
        # its other units' messages may be spent on other tenants' work (fair share): settle now
        repo.cancel_pending_shards(session, job.id, "not run: job is failed")
    return settled
