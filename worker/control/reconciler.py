"""The reconciler (run by the scheduler every few seconds): re-sends work whose message was lost
or whose lease expired, finalizes jobs whose shards are all settled, and expires OpenAI batches
whose completion window has ended. (Old progress samples, events and workers long gone are
the retention task's: ``worker.control.retention``.)

A pausing or paused job's shards are neither re-sent nor failed (resume sends them), and a
pausing job none of whose shards holds a lease that ended less than a lease ago (its last
worker died, not merely renewed late) is paused.

Imports: ``barge``, ``db``, ``services.jobs``, ``services.openai_batches``, ``worker.context``;
never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from barge.queue import FINALIZE_JOB, GPU_QUEUE, PLAN_JOB, RUN_SHARD, ready_messages
from db import repositories as repo
from db.base import utcnow
from services import jobs, openai_batches
from worker.context import WorkerContext

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    plans: int = 0
    shards: int = 0
    finalizes: int = 0
    expired: int = 0
    abandoned: int = 0
    paused: int = 0


def _lost_messages(ctx: WorkerContext, pending: int) -> int:
    """How many pending shards may have lost their message: those the GPU queue cannot be
    holding. A backlog that is merely not reached yet is not re-sent (that flooded the queue
    with duplicates); when the broker does not answer, every pending shard counts."""
    counts = ready_messages(ctx.celery, (GPU_QUEUE,), ctx.settings.broker_timeout_seconds)
    if counts is None:
        return pending
    return max(0, pending - counts[GPU_QUEUE])


def reconcile(ctx: WorkerContext, limit: int = 500) -> ReconcileReport:
    now = utcnow()
    grace = timedelta(seconds=ctx.settings.dispatch_grace_seconds)
    report = ReconcileReport()
    with ctx.unit_of_work() as uow:
        session = uow.session
        stale_jobs = repo.take_stale_queued_jobs(session, now, grace, limit)
        for job_id in stale_jobs:
            # Re-sends expire when the next one would be due: they never pile up.
            uow.send_after_commit(PLAN_JOB, str(job_id), expires=grace.total_seconds())
        report.plans = len(stale_jobs)
        # A stopping job's unit whose worker died is settled here (nothing would claim it).
        abandoned = repo.cancel_abandoned_shards(session, now, limit)
        for job_id in abandoned:
            uow.send_after_commit(FINALIZE_JOB, str(job_id), expires=ctx.settings.reconcile_seconds)
        stale_shards = repo.take_expired_shards(session, now, grace, limit)
        lost = _lost_messages(ctx, repo.pending_shard_count(session))
        stale_shards += repo.take_unclaimed_shards(session, now, grace, min(limit, lost))
        for shard_id, job_id, index in stale_shards:
            uow.send_after_commit(RUN_SHARD, str(shard_id), str(job_id), index)
        report.shards = len(stale_shards)
        quiet_since = now - timedelta(seconds=ctx.settings.reconcile_seconds)
        to_finalize = repo.jobs_to_finalize(session, quiet_since, limit)
        for job_id in to_finalize:
            uow.send_after_commit(FINALIZE_JOB, str(job_id), expires=ctx.settings.reconcile_seconds)
        report.finalizes = len(to_finalize)
        report.expired = openai_batches.expire_due(uow, now, limit)
        report.abandoned = len(abandoned)
        # A lease ended more than a lease ago: its worker is gone, not merely slow to renew.
        dead_since = now - timedelta(seconds=ctx.settings.lease_seconds)
        report.paused = sum(
            jobs.pause_if_idle(session, job_id, dead_since)
            for job_id in repo.idle_pausing_jobs(session, dead_since, limit)
        )
    if any(vars(report).values()):
        log.info("reconcile: %s", report)
    return report
