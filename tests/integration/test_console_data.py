"""The data behind the console on a real Postgres: one ``shard_attempts`` row per claim, ended
with what the attempt used by the real lifecycle (``worker.lifecycle``, ``worker.usage``);
progress samples written from real heartbeats, at most one per job per slot; their pruning;
a job's usage summed (``services.usage``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from barge.errors import PermanentJobError
from barge.settings import Settings
from db import repositories as repo
from db.base import utcnow
from db.models import Job, JobSample, Shard, ShardAttempt, WorkerPresence
from db.session import session_scope
from db.state import RUNNING, SUCCEEDED
from services import usage
from tests.factories import make_job, make_shard, make_tenant
from tests.integration.test_worker_lifecycle import make_context, sent
from tests.services import create_vhost, delete_vhost
from worker import lifecycle, samples
from worker.context import WorkerContext
from worker.kinds import JobKind
from worker.lease import Lease, Outcome, Result, ShardWork


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    name = f"barge_console_{uuid.uuid4().hex[:8]}"  # no worker of another test consumes here
    yield create_vhost(name)
    delete_vhost(name)


@pytest.fixture
def ctx(database_url: str, vhost_url: str, tmp_path: Path) -> WorkerContext:
    ctx = make_context(database_url, vhost_url, tmp_path, heartbeat_seconds=0.2, sample_seconds=1.0)
    sent(ctx)
    return ctx


def running_job(url: str, shards: int = 1) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with session_scope(url) as session:
        job = make_job(session, make_tenant(session), status=RUNNING)
        job.shards_total = shards
        job.records_total = 10 * shards
        job.started_at = utcnow()
        return job.id, [make_shard(session, job, i).id for i in range(shards)]


def attempts(url: str, shard_id: uuid.UUID) -> list[ShardAttempt]:
    with session_scope(url) as session:
        query = select(ShardAttempt).where(ShardAttempt.shard_id == shard_id)
        return list(session.scalars(query.order_by(ShardAttempt.attempt)))


def job_samples(url: str, job_id: uuid.UUID) -> list[JobSample]:
    with session_scope(url) as session:
        return repo.job_samples(session, job_id)


def ready_again(url: str, shard_id: uuid.UUID) -> None:
    """End the shard's back-off now (a retried shard waits a while before its next claim)."""
    with session_scope(url) as session:
        session.execute(update(Shard).where(Shard.id == shard_id).values(not_before=None))


def runs(run: object) -> object:
    """A lookup of kinds giving every spec a test kind that runs ``run``."""
    kind = JobKind("test", lambda spec: True, run, time_limit_error="x")  # type: ignore[arg-type]
    return lambda spec: kind


def done(ctx: WorkerContext, unit: ShardWork, lease: Lease) -> Result:
    lease.succeeded, lease.failed = 8, 2
    return Result(Outcome.SUCCEEDED, succeeded=8, failed=2)


class TestAttempts:
    def test_a_succeeded_attempt_ends_with_its_counts_and_what_it_used(
        self, ctx: WorkerContext, database_url: str
    ) -> None:
        _, (shard_id,) = running_job(database_url)

        lifecycle.run_shard(ctx, shard_id, runs(done))

        (row,) = attempts(database_url, shard_id)
        assert (row.attempt, row.worker, row.outcome) == (1, "test:1", "succeeded")
        assert (row.records_succeeded, row.records_failed) == (8, 2)
        assert row.finished_at is not None and row.finished_at >= row.started_at
        assert row.wall_seconds is not None and row.wall_seconds >= 0
        assert row.cpu_seconds is not None and row.cpu_seconds >= 0
        # no GPU here: no GPU-seconds, and no energy figure at all (never an estimate)
        assert (row.device, row.gpus, row.gpu_seconds, row.energy_joules) == ("cpu", 0, 0.0, None)
        assert row.devices == [{"device": "cpu", "name": "cpu", "energy_joules": None}]
        assert row.busy_seconds is None  # the runner timed no model batch

    def test_a_retried_attempt_and_a_failed_one_keep_their_errors(
        self, ctx: WorkerContext, database_url: str
    ) -> None:
        _, (shard_id,) = running_job(database_url)

        def broken(ctx: WorkerContext, unit: ShardWork, lease: Lease) -> Result:
            raise RuntimeError("disk on fire")

        def refused(ctx: WorkerContext, unit: ShardWork, lease: Lease) -> Result:
            raise PermanentJobError("the model is not one Barge runs")

        lifecycle.run_shard(ctx, shard_id, runs(broken))
        ready_again(database_url, shard_id)
        lifecycle.run_shard(ctx, shard_id, runs(refused))

        first, second = attempts(database_url, shard_id)
        assert (first.attempt, first.outcome, second.attempt, second.outcome) == (
            1,
            "error",
            2,
            "failed",
        )
        assert "disk on fire" in (first.error or "")
        assert "not one Barge runs" in (second.error or "")


class TestSamples:
    def test_heartbeats_write_at_most_one_sample_per_job_per_slot(
        self, ctx: WorkerContext, database_url: str
    ) -> None:
        job_id, shard_ids = running_job(database_url, shards=2)

        def slow(ctx: WorkerContext, unit: ShardWork, lease: Lease) -> Result:
            for i in range(1, 11):  # ~3 s of progress, heartbeats every 0.2 s
                lease.succeeded = i
                time.sleep(0.3)
                lease.between_batches()
            return Result(Outcome.SUCCEEDED, succeeded=10)

        for shard_id in shard_ids:
            lifecycle.run_shard(ctx, shard_id, runs(slow))

        found = job_samples(database_url, job_id)
        slots = [s.slot for s in found]
        assert len(slots) == len(set(slots))  # one per slot, though ~30 heartbeats ran
        assert 3 <= len(found) <= 10, [(s.slot, s.records_succeeded) for s in found]
        done = [s.records_succeeded for s in found]
        assert done == sorted(done) and done[-1] > 0
        # the attempt's worker was noted alive with the samples
        first = attempts(database_url, shard_ids[0])[0]
        assert first.seen_at > first.started_at

    def test_a_slot_keeps_its_first_sample_unless_replaced(self, database_url: str) -> None:
        job_id, (shard_id,) = running_job(database_url)
        now = utcnow()
        with session_scope(database_url) as session:
            assert repo.add_job_sample(session, job_id, 7, now)
            session.execute(update(Shard).where(Shard.id == shard_id).values(records_succeeded=5))
            assert not repo.add_job_sample(session, job_id, 7, now)
        assert [(s.slot, s.records_succeeded) for s in job_samples(database_url, job_id)] == [
            (7, 0)
        ]
        with session_scope(database_url) as session:
            repo.add_job_sample(session, job_id, 7, now, replace=True)
            repo.add_job_sample(session, job_id, 8, now)
        shown = [(s.slot, s.records_succeeded) for s in job_samples(database_url, job_id)]
        assert shown == [(7, 5), (8, 5)]

    def test_pruning_drops_the_samples_of_jobs_finished_before_the_retention(
        self, database_url: str, tmp_path: Path
    ) -> None:
        old, _ = running_job(database_url)
        recent, _ = running_job(database_url)
        now = utcnow()
        with session_scope(database_url) as session:
            for job_id, finished in ((old, now - timedelta(days=40)), (recent, now)):
                repo.add_job_sample(session, job_id, 1, now)
                session.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(status=SUCCEEDED, finished_at=finished)
                )
            gone = f"gone-{uuid.uuid4().hex[:6]}"
            repo.note_worker(
                session, gone, now - timedelta(days=2), host="h", pid=1, queues=[], models=[]
            )
        settings = Settings(env="test", home=tmp_path, sample_retention_days=30)
        with session_scope(database_url) as session:
            pruned = samples.prune(session, settings, now, limit=1000)
        assert pruned >= 2  # the old job's sample and the gone worker, at least
        assert job_samples(database_url, old) == []
        assert len(job_samples(database_url, recent)) == 1
        with session_scope(database_url) as session:
            assert session.get(WorkerPresence, gone) is None


class TestUsage:
    def add_attempt(
        self, url: str, job_id: uuid.UUID, shard_id: uuid.UUID, n: int, **used: object
    ) -> None:
        with session_scope(url) as session:
            now = utcnow()
            repo.start_attempt(session, shard_id, job_id, n, "gpu-host:7", now)
            values = {"wall_seconds": 100.0, "cpu_seconds": 90.0, "gpus": 1, "gpu_seconds": 100.0}
            values.update({"device": "cuda:0", "device_name": "NVIDIA H100", **used})
            repo.end_attempt(
                session, shard_id, n, now, outcome="succeeded", succeeded=10, failed=0, usage=values
            )

    def test_a_jobs_usage_sums_every_attempt_and_energy_only_when_all_measured(
        self, database_url: str, tmp_path: Path
    ) -> None:
        job_id, (shard_id,) = running_job(database_url)
        self.add_attempt(
            database_url, job_id, shard_id, 1, energy_joules=20_000.0, busy_seconds=80.0
        )
        prices = Settings(env="test", home=tmp_path, price_per_device_hour={"cuda": 3.6})
        with session_scope(database_url) as session:
            used = usage.usage_for(session, prices, [job_id])[job_id]
        assert used is not None
        assert (used["attempts"], used["wall_seconds"], used["gpu_seconds"]) == (1, 100.0, 100.0)
        assert (used["energy_joules"], used["busy_seconds"]) == (20_000.0, 80.0)
        assert used["cost"]["amount"] == pytest.approx(0.1)  # 100 s of a 3.6/hour GPU
        assert used["devices"][0]["energy_joules"] == 20_000.0

        self.add_attempt(database_url, job_id, shard_id, 2, energy_joules=None)
        with session_scope(database_url) as session:
            used = usage.usage_for(session, None, [job_id])[job_id]
        assert used is not None
        assert (used["attempts"], used["wall_seconds"]) == (2, 200.0)
        assert used["energy_joules"] is None  # one attempt had no counter: no partial sum
        assert used["cost"] is None

    def test_a_models_steady_rate_is_the_median_of_its_newest_attempts(
        self, database_url: str
    ) -> None:
        job_id, shard_ids = running_job(database_url, shards=3)
        with session_scope(database_url) as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.model_uri = f"s3://models/{uuid.uuid4().hex}/"
            assert usage.steady_rate(session, job) is None  # never run before
            for n, (shard_id, seconds) in enumerate(
                zip(shard_ids, (10.0, 20.0, 40.0), strict=True)
            ):
                repo.start_attempt(session, shard_id, job_id, 1, "w:1", utcnow())
                repo.end_attempt(
                    session,
                    shard_id,
                    1,
                    utcnow(),
                    outcome="succeeded" if n < 2 else "error",
                    succeeded=100,
                    failed=0,
                    usage={"wall_seconds": seconds},
                )
            steady = usage.steady_rate(session, job)
        # 10 and 5 records/s; the attempt that errored does not count
        assert steady == {"records_per_second": 7.5, "attempts": 2}
