"""The reconciler (run by the scheduler every few seconds): re-sends work whose message was lost
or whose lease expired, and finalizes jobs whose shards are all settled."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, exists, or_, select, update

from barge.queue import FINALIZE_JOB, PLAN_JOB, RUN_SHARD
from db import state
from db.base import utcnow
from db.models import Job, Shard
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
        stale_jobs = list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.status == state.QUEUED,
                    or_(Job.dispatched_at.is_(None), Job.dispatched_at < now - grace),
                )
                .limit(limit)
            )
        )
        if stale_jobs:
            session.execute(
                update(Job).where(Job.id.in_(stale_jobs)).values(dispatched_at=now),
                execution_options={"synchronize_session": False},
            )
        sends += [(PLAN_JOB, (str(j),)) for j in stale_jobs]
        report.plans = len(stale_jobs)

        stale_shards = list(
            session.execute(
                select(Shard.id, Shard.job_id, Shard.index)
                .where(
                    or_(
                        and_(
                            Shard.status == state.SHARD_PENDING,
                            or_(Shard.dispatched_at.is_(None), Shard.dispatched_at < now - grace),
                        ),
                        and_(
                            Shard.status == state.SHARD_RUNNING,
                            Shard.lease_expires_at < now,
                            or_(Shard.dispatched_at.is_(None), Shard.dispatched_at < now - grace),
                        ),
                    )
                )
                .limit(limit)
            )
        )
        if stale_shards:
            session.execute(
                update(Shard)
                .where(Shard.id.in_([s.id for s in stale_shards]))
                .values(dispatched_at=now),
                execution_options={"synchronize_session": False},
            )
        sends += [(RUN_SHARD, (str(s.id), str(s.job_id), s.index)) for s in stale_shards]
        report.shards = len(stale_shards)

        unsettled = exists().where(
            Shard.job_id == Job.id,
            Shard.status.in_([state.SHARD_PENDING, state.SHARD_RUNNING]),
        )
        to_finalize = list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.manifest.is_(None),
                    Job.status.in_([state.RUNNING, state.CANCELLING, state.FAILED]),
                    Job.updated_at < now - timedelta(seconds=ctx.settings.reconcile_seconds),
                    ~unsettled,
                )
                .limit(limit)
            )
        )
        sends += [(FINALIZE_JOB, (str(j),)) for j in to_finalize]
        report.finalizes = len(to_finalize)
    for name, args in sends:
        ctx.send(name, *args)
    if sends:
        log.info("reconcile: %s", report)
    return report
