"""The reconciler (run by the scheduler every few seconds): re-sends work whose message was lost
or whose lease expired, and finalizes jobs whose shards are all settled."""

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
    sends: list[tuple[str, tuple[object, ...]]] = []
    with ctx.session() as session:
        stale_jobs = repo.take_stale_queued_jobs(session, now, grace, limit)
        sends += [(PLAN_JOB, (str(j),)) for j in stale_jobs]
        report.plans = len(stale_jobs)
        stale_shards = repo.take_stale_shards(session, now, grace, limit)
        sends += [(RUN_SHARD, (str(s), str(j), index)) for s, j, index in stale_shards]
        report.shards = len(stale_shards)
        quiet_since = now - timedelta(seconds=ctx.settings.reconcile_seconds)
        to_finalize = repo.jobs_to_finalize(session, quiet_since, limit)
        sends += [(FINALIZE_JOB, (str(j),)) for j in to_finalize]
        report.finalizes = len(to_finalize)
    for name, args in sends:
        ctx.send(name, *args)
    if sends:
        log.info("reconcile: %s", report)
    return report
