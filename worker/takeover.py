"""Taking over a unit whose worker died, as soon as its lease ends.

A shard message is acknowledged only when its task returns (``task_acks_late``). When a worker
dies mid-shard, RabbitMQ hands the message to another consumer at once, flagged
``redelivered``: the connection of a killed worker closes, and when only its pool child is
killed, Celery's main process requeues the message (``task_reject_on_worker_lost``). The dead
attempt's lease is still live then, for at most ``BARGE_LEASE_SECONDS`` after its last renewal.
Rather than drop the message and leave the shard to the reconciler (which re-sends it only on its
next run after the lease expired), a redelivered shard waits here until the lease ends, then
claims it: a killed worker's shard runs again about ``BARGE_LEASE_SECONDS`` after the kill.

The wait is bounded by one lease period. A holder that keeps renewing is alive (RabbitMQ closed
its channel, say, while its process works on): the message is then dropped as a duplicate and
the holder finishes; should it die later, the reconciler re-sends its expired shard. Fencing is
untouched: the claim that follows is the same conditional UPDATE, which takes only an expired
lease, under a new attempt.

Imports: ``barge``, ``db``, ``worker.context``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import time
import uuid

from db import state
from db.base import utcnow
from db.models import Shard
from worker.context import WorkerContext

log = logging.getLogger(__name__)

SLACK_SECONDS = 0.25  # past the lease's end before looking again (clocks, commit delays)


def wait_for_dead_holder(ctx: WorkerContext, shard_id: uuid.UUID) -> float:
    """Return once the shard's lease has ended (or it is not held at all, or another attempt
    took it meanwhile), or after at most one lease period while its holder keeps renewing.
    Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + ctx.settings.lease_seconds + SLACK_SECONDS
    attempt: int | None = None
    while True:
        with ctx.session() as session:
            shard = session.get(Shard, shard_id)
            if shard is None or shard.status != state.SHARD_RUNNING:
                break
            if attempt is not None and shard.attempt != attempt:
                break  # someone took it over meanwhile: let the claim find it held
            attempt = shard.attempt
            expires = shard.lease_expires_at
        left = (expires - utcnow()).total_seconds() if expires is not None else 0.0
        if left < 0:
            break
        now = time.monotonic()
        if now >= deadline:
            log.info(
                "shard %s: its holder (attempt %s) still renews its lease; not taking it over",
                shard_id,
                attempt,
            )
            break
        time.sleep(min(left + SLACK_SECONDS, deadline - now))
    waited = time.monotonic() - started
    if waited > 0.05:
        log.info("shard %s: waited %.1fs for the lease of attempt %s", shard_id, waited, attempt)
    return waited
