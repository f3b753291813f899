"""Workers killed, frozen and restarted mid-job: every record still appears exactly once."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.faults.conftest import World, assert_exactly_once, dataset
from tests.helpers import inference_spec, wait_until

pytestmark = pytest.mark.faults


# Progress is written at each lease renewal: every 0.1 s, so that a shard of a fraction of a
# second (200 records here) is seen running with progress before it ends.
FAST_PROGRESS = {"BARGE_HEARTBEAT_SECONDS": "0.1"}


def _running_shard(world: World, job_id: str) -> Any:
    return wait_until(
        lambda: next(
            (s for s in world.shards(job_id) if s.status == "running" and s.records_succeeded > 0),
            None,
        ),
        timeout=120,
        interval=0.1,
        what="a shard to be running with progress",
    )


def test_sigkill_of_the_pool_child_mid_shard(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, rows = dataset(s3, bucket, 900, bad_every=100)
    worker = world.worker(**FAST_PROGRESS)
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=300
        )
    )
    shard = _running_shard(world, job_id)
    child = int(shard.worker.rsplit(":", 1)[1])
    assert child in worker.pool_pids()
    os.kill(child, signal.SIGKILL)
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)
    killed = next(s for s in world.shards(job_id) if s.id == shard.id)
    assert killed.attempt >= 2  # it was re-run after the kill


def test_sigkill_of_the_whole_worker_then_restart(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, rows = dataset(s3, bucket, 900, bad_every=97)
    worker = world.worker(**FAST_PROGRESS)
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=300
        )
    )
    _running_shard(world, job_id)
    os.killpg(worker.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    worker.proc.wait(10)  # type: ignore[union-attr]
    time.sleep(1)
    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)


def test_a_shard_that_kills_its_worker_every_time_fails_the_job_after_n_attempts(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, _rows = dataset(s3, bucket, 600)
    worker = world.worker()
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(minilm_uri, data, f"s3://{bucket}/out/", batch_size=8, shard_size=200)
    )
    # Every time shard 1 starts running, its worker process dies (as a poison shard would do).
    kills = 0
    deadline = time.monotonic() + 150
    killed_attempts: set[int] = set()
    while time.monotonic() < deadline and world.job(job_id)["status"] not in (
        "failed",
        "succeeded",
    ):
        shards = world.shards(job_id)
        if len(shards) < 2:
            time.sleep(0.1)
            continue
        shard = shards[1]
        if shard.status == "running" and shard.attempt not in killed_attempts and shard.worker:
            try:
                os.kill(int(shard.worker.rsplit(":", 1)[1]), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
            killed_attempts.add(shard.attempt)
        time.sleep(0.05)
    job = world.wait_final(job_id, timeout=60)
    assert job["status"] == "failed", job
    assert kills == 3
    assert "shard 1" in job["error"] and "gave up after 3 attempts" in job["error"], job["error"]
    shard = world.shards(job_id)[1]
    assert shard.status == "failed" and shard.attempt == 3
    assert worker.proc.poll() is None  # the worker itself survived: only its children died


def test_a_worker_frozen_past_its_lease_cannot_commit_a_stale_attempt(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, rows = dataset(s3, bucket, 600, bad_every=50)
    frozen = world.worker(**FAST_PROGRESS)
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=600
        )
    )
    shard = _running_shard(world, job_id)
    os.killpg(frozen.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        world.worker()  # another worker takes the shard once the lease expires
        job = world.wait_final(job_id)
        assert job["status"] == "succeeded", job
        manifest = assert_exactly_once(s3, bucket, "out", rows)
        after = world.shards(job_id)[0]
        assert after.attempt == shard.attempt + 1 and after.worker != shard.worker
        part = s3.get_object(Bucket=bucket, Key=manifest["parts"][0]["key"])["Body"].read()
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    time.sleep(6)  # the stale attempt wakes up, finds its lease gone, and must write nothing
    final = world.shards(job_id)[0]
    assert (final.status, final.attempt, final.worker) == ("succeeded", after.attempt, after.worker)
    assert s3.get_object(Bucket=bucket, Key=manifest["parts"][0]["key"])["Body"].read() == part
    assert world.job(job_id)["status"] == "succeeded"
    assert_exactly_once(s3, bucket, "out", rows)


def test_cancel_is_durable_across_worker_restarts(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, _rows = dataset(s3, bucket, 1200)
    worker = world.worker(**FAST_PROGRESS)
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(minilm_uri, data, f"s3://{bucket}/out/", batch_size=16, shard_size=200)
    )
    _running_shard(world, job_id)
    os.killpg(worker.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    worker.proc.wait(10)  # type: ignore[union-attr]
    # No worker runs now: what succeeded before the cancel is all that may ever succeed.
    done_before = {s.index for s in world.shards(job_id) if s.status == "succeeded"}
    r = world.api.post(f"/v1/jobs/{job_id}/cancel", headers=world.auth)
    assert r.status_code == 200, r.text
    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "cancelled"
    shards = world.shards(job_id)
    # Every shard not finished at the cancel (the killed one, the queued ones) was skipped.
    assert {s.index for s in shards if s.status == "succeeded"} == done_before
    assert all(s.status == "cancelled" for s in shards if s.index not in done_before)
    assert len(done_before) < len(shards)
    time.sleep(3)
    assert world.job(job_id)["status"] == "cancelled"
    assert [s.status for s in world.shards(job_id)] == [s.status for s in shards]


def test_a_job_committed_but_never_published_is_dispatched_by_the_reconciler(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    from sqlalchemy import select

    from barge.settings import Settings
    from barge.specs import InferenceSpec
    from barge.storage import make_store
    from db.models import Tenant
    from db.session import session_scope
    from services.context import MEMBER, Principal, ServiceContext
    from services.submission import SubmitJob, submit
    from services.unit_of_work import UnitOfWork

    data, rows = dataset(s3, bucket, 100)
    settings = Settings(
        database_url=world.database_url,
        storage_backend="s3",
        s3_endpoint_url=world.env["BARGE_S3_ENDPOINT_URL"],
    )
    with session_scope(world.database_url) as session:  # the API's commit, then it "dies"
        tenant = session.scalar(select(Tenant).where(Tenant.name == "faults"))
        uow = UnitOfWork(session)
        ctx = ServiceContext(
            uow, settings, make_store(settings), Principal(tenant, None, None, MEMBER)
        )
        spec = inference_spec(minilm_uri, data, f"s3://{bucket}/out/", id_field="id")
        job, _ = submit(ctx, SubmitJob(InferenceSpec.model_validate(spec)))
        job_id = str(job.id)
        assert uow.outbox  # the send that never happens
    world.worker()
    time.sleep(3)
    assert world.job(job_id)["status"] == "queued"  # nobody told the workers
    world.start_scheduler()
    job = world.wait_final(job_id, timeout=60)
    assert job["status"] == "succeeded"
    assert_exactly_once(s3, bucket, "out", rows)


def test_the_same_shard_message_delivered_twice_is_processed_once(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    from barge.queue import RUN_SHARD, make_celery, send
    from barge.settings import Settings

    data, rows = dataset(s3, bucket, 400)
    world.worker()
    world.worker()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=200
        )
    )
    shard = wait_until(lambda: next(iter(world.shards(job_id)), None), timeout=60, what="planning")
    app = make_celery(Settings(broker_url=world.env["BARGE_BROKER_URL"]))
    for _ in range(3):  # duplicates of shard 0's message, racing the original
        send(app, RUN_SHARD, str(shard.id), job_id, 0)
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded"
    assert_exactly_once(s3, bucket, "out", rows)
    assert world.shards(job_id)[0].attempt == 1  # claimed once, never re-run
