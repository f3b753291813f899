"""Thin Celery tasks: unpack ids, call plain functions. Every task is idempotent.

Imports: any ``worker`` module (this is the top of the worker); never ``api`` or ``cli``.
"""

from __future__ import annotations

import uuid

from celery import Task

from barge.queue import (
    FINALIZE_JOB,
    PLAN_JOB,
    RECONCILE,
    RETENTION,
    RUN_SHARD,
    SCAN_DROPS,
    SEND_WEBHOOKS,
)
from barge.settings import get_settings
from worker import lifecycle, takeover
from worker.celery_app import app
from worker.context import get_context
from worker.control import drops, finalize, planner, reconciler, retention, webhooks


@app.task(name=PLAN_JOB)
def plan_job(job_id: str) -> None:
    """Split a queued job's inputs into shards and dispatch them."""
    planner.plan_job(get_context(), uuid.UUID(job_id))


_settings = get_settings()


@app.task(
    name=RUN_SHARD,
    bind=True,
    soft_time_limit=_settings.shard_soft_time_limit,
    time_limit=_settings.shard_hard_time_limit,
)
def run_shard(self: Task, shard_id: str, job_id: str = "", index: int = -1) -> None:
    """Run one shard or fine-tune slice (job id and index are there for operators reading
    Flower). A redelivered message (its worker died) first waits for the dead attempt's lease
    to end, so the shard runs again at once instead of on the reconciler's next pass."""
    ctx = get_context()
    if (self.request.delivery_info or {}).get("redelivered"):
        takeover.wait_for_dead_holder(ctx, uuid.UUID(shard_id))
    lifecycle.run_shard(ctx, uuid.UUID(shard_id))


@app.task(name=FINALIZE_JOB)
def finalize_job(job_id: str) -> None:
    """Write the manifest and move the job to its final state once its shards are settled."""
    finalize.finalize_job(get_context(), uuid.UUID(job_id))


@app.task(name=RECONCILE)
def reconcile() -> None:
    """Re-send lost or expired work; finalize jobs whose shards are all settled."""
    reconciler.reconcile(get_context())


@app.task(name=SCAN_DROPS)
def scan_drops() -> None:
    """Turn new objects in drop folders into jobs; settle the inputs of finished ones."""
    drops.scan(get_context())


@app.task(name=SEND_WEBHOOKS)
def send_webhooks() -> None:
    """Send the webhook deliveries that are due (retries included)."""
    webhooks.send_due(get_context())


@app.task(name=RETENTION)
def prune_old() -> None:
    """Delete finished jobs' old events and progress samples, in batches."""
    retention.prune(get_context())
