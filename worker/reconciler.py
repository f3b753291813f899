"""The reconciler (run by the scheduler every few seconds): re-sends work whose message was lost
or whose lease expired, and finalizes jobs whose shards are all settled.

Imports: ``barge``, ``db``, ``worker.context``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from barge.queue import FINALIZE_JOB, PLAN_JOB, RUN_SHARD
from db import repositories as repo
from db.base import utcnow
from worker.context import WorkerContext

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    plans: int = 0
    shards: int = 0
    finalizes: int = 0


def reconcile(ctx: WorkerContext, limit: int = 500) -> ReconcileReport:
    now = utcnow()
    grace = timedelta(seconds=ctx.settings.dispatch_grace_seconds)
    report = ReconcileReport()
    with ctx.unit_of_work() as uow:
        session = uow.session
        stale_jobs = repo.take_stale_queued_jobs(session, now, grace, limit)
        for job_id in stale_jobs:
            uow.send_after_commit(PLAN_JOB, str(job_id))
        report.plans = len(stale_jobs)
        stale_shards = repo.take_stale_shards(session, now, grace, limit)
        for shard_id, job_id, index in stale_shards:
            uow.send_after_commit(RUN_SHARD, str(shard_id), str(job_id), index)
        report.shards = len(stale_shards)
        quiet_since = now - timedelta(seconds=ctx.settings.reconcile_seconds)
        to_finalize = repo.jobs_to_finalize(session, quiet_since, limit)
        for job_id in to_finalize:
            uow.send_after_commit(FINALIZE_JOB, str(job_id))
        report.finalizes = len(to_finalize)
    if report.plans or report.shards or report.finalizes:
        log.info("reconcile: %s", report)
    return report
