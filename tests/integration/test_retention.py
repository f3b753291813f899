"""Retention on real Postgres: the periodic task deletes, batch by batch, the events and
progress samples of jobs finished longer ago than their retention, marks each job pruned once,
and leaves younger and unfinished jobs' history alone."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from barge.settings import Settings
from barge.status import RUNNING, SUCCEEDED
from db import repositories as repo
from db.base import utcnow
from db.models import Job, JobEvent, JobSample
from db.session import session_scope
from tests.factories import make_job, make_tenant
from worker.context import WorkerContext
from worker.control import retention


def job_finished(url: str, days_ago: float | None, events: int) -> uuid.UUID:
    """A job with ``events`` events and one progress sample, finished ``days_ago`` (None: still
    running)."""
    now = utcnow()
    with session_scope(url) as session:
        job = make_job(session, make_tenant(session), status=RUNNING)
        for n in range(events):
            repo.add_event(session, job.id, "note", f"event {n}")
        repo.add_job_sample(session, job.id, 1, now)
        if days_ago is not None:
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status=SUCCEEDED, finished_at=now - timedelta(days=days_ago))
            )
        return job.id


def counts(url: str, job_id: uuid.UUID) -> tuple[int, int, bool]:
    """(events, samples, marked pruned) of the job."""
    with session_scope(url) as session:
        events = session.scalar(select(func.count()).where(JobEvent.job_id == job_id))
        kept = session.scalar(select(func.count()).where(JobSample.job_id == job_id))
        job = session.get(Job, job_id)
        assert job is not None
        return int(events or 0), int(kept or 0), job.events_pruned_at is not None


def context(url: str, tmp_path: Path, **settings: object) -> WorkerContext:
    return WorkerContext(
        settings=Settings(env="test", home=tmp_path, database_url=url, **settings),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]  # retention touches no object
        celery=None,  # type: ignore[arg-type]  # and sends nothing
        name="retention-test",
    )


def test_old_jobs_lose_their_events_and_samples_in_batches(
    database_url: str, tmp_path: Path
) -> None:
    old = [job_finished(database_url, 40, events=3) for _ in range(3)]
    young = job_finished(database_url, 5, events=2)
    running = job_finished(database_url, None, events=2)
    ctx = context(
        database_url,
        tmp_path,
        event_retention_days=30,
        sample_retention_days=30,
        retention_batch=1,  # one job per transaction: the pass must loop over batches
    )
    report = retention.prune(ctx)
    assert report.batches >= 3
    assert report.jobs >= 3 and report.events >= 9
    for job_id in old:
        assert counts(database_url, job_id) == (0, 0, True)
    assert counts(database_url, young) == (2, 1, False)
    assert counts(database_url, running) == (2, 1, False)
    # each job is pruned once: the next pass finds nothing of these
    again = retention.prune(ctx)
    assert again.jobs == 0 and again.events == 0


def test_events_are_kept_without_an_event_retention(database_url: str, tmp_path: Path) -> None:
    old = job_finished(database_url, 400, events=2)
    ctx = context(database_url, tmp_path, sample_retention_days=30)  # event retention: 0
    retention.prune(ctx)
    assert counts(database_url, old) == (2, 0, False)  # samples went, events stay
