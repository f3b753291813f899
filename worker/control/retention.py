"""Retention (a periodic control task, every ``BARGE_RETENTION_SECONDS``): deletes the
progress samples of jobs finished longer ago than ``BARGE_SAMPLE_RETENTION_DAYS``, the events
of jobs finished longer ago than ``BARGE_EVENT_RETENTION_DAYS`` (when set), and workers long
gone; ``BARGE_RETENTION_BATCH`` jobs per transaction, batch after batch until none is left or
the pass has run ``budget_seconds``. The jobs' rows, manifests and outputs stay.

Imports: ``barge``, ``db``, ``worker.context``, ``worker.samples``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from db import repositories as repo
from db.base import utcnow
from worker import samples
from worker.context import WorkerContext

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    samples: int = 0  # rows deleted (samples, and workers long gone)
    events: int = 0  # events deleted
    jobs: int = 0  # jobs whose events went
    batches: int = 0


def prune(ctx: WorkerContext, budget_seconds: float = 60.0) -> RetentionReport:
    """One retention pass, in batches of ``BARGE_RETENTION_BATCH`` jobs, each its own
    transaction (short locks; a pass cut off by a restart loses nothing)."""
    settings = ctx.settings
    report = RetentionReport()
    deadline = time.monotonic() + budget_seconds
    now = utcnow()
    events_before = (
        now - timedelta(days=settings.event_retention_days)
        if settings.event_retention_days > 0
        else None
    )
    more = True
    while more and time.monotonic() < deadline:
        with ctx.session() as session:
            pruned = samples.prune(session, settings, now, settings.retention_batch)
        more = pruned > 0
        report.samples += pruned
        if events_before is not None:
            with ctx.session() as session:
                jobs, events = repo.prune_events(session, events_before, settings.retention_batch)
            report.jobs += jobs
            report.events += events
            more = more or jobs > 0
        report.batches += 1
    if report.samples or report.jobs:
        log.info("retention: %s", report)
    return report
