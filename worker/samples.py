"""Progress samples from the heartbeats that already run: when a lease is renewed and the
job's current sample slot (``BARGE_SAMPLE_SECONDS``) has no sample yet, the job's counts are
summed into one (``repo.add_job_sample``), and the attempt is noted alive. At most one row per
job per slot, whatever the number of shards and workers; nothing per record. The retention
task (``worker.control.retention``) prunes the samples of jobs finished longer ago than
``BARGE_SAMPLE_RETENTION_DAYS`` (``prune``).

Imports: ``barge``, ``db``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from barge.settings import Settings
from db import repositories as repo
from db.base import utcnow

log = logging.getLogger(__name__)

# The newest slot this process sampled (or tried to) per job: a heartbeat in the same slot
# asks nothing of the database.
_tried: dict[uuid.UUID, int] = {}
_TRIED_KEPT = 4096


def slot_of(settings: Settings, now: datetime) -> int:
    """The sample slot ``now`` falls in (``BARGE_SAMPLE_SECONDS`` long)."""
    return int(now.timestamp() // settings.sample_seconds)


def on_heartbeat(
    session: Session, settings: Settings, job_id: uuid.UUID, shard_id: uuid.UUID, attempt: int
) -> None:
    """In the heartbeat's transaction, once per slot per job in this process: a progress
    sample, and the attempt's ``seen_at``. In a savepoint: a failure here is logged and never
    costs the lease its renewal."""
    now = utcnow()
    slot = slot_of(settings, now)
    if _tried.get(job_id) == slot:
        return
    if len(_tried) >= _TRIED_KEPT:
        _tried.clear()
    _tried[job_id] = slot
    try:
        with session.begin_nested():
            repo.add_job_sample(session, job_id, slot, now)
            repo.touch_attempt(session, shard_id, attempt, now)
    except Exception as exc:
        log.warning("job %s: progress sample not written: %s", job_id, exc)


# A worker not seen for this long stopped without saying so: its row goes.
WORKER_FORGOTTEN_AFTER = timedelta(days=1)


def prune(session: Session, settings: Settings, now: datetime, limit: int) -> int:
    """The retention task's pruning: the samples of up to ``limit`` jobs finished longer ago than
    ``BARGE_SAMPLE_RETENTION_DAYS``, and workers long gone. How many rows went."""
    retention = timedelta(days=settings.sample_retention_days)
    pruned = repo.prune_samples(session, now - retention, limit)
    return pruned + repo.prune_workers(session, now - WORKER_FORGOTTEN_AFTER)
