"""Control work never waits behind GPU work: `barge worker` runs a control worker of its own,
periodic messages expire instead of piling up, and a job says what it waits for. Real
processes: the worker, the scheduler, RabbitMQ, Postgres, moto's S3 server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from barge.queue import CONTROL_QUEUE, make_celery, ready_messages
from barge.settings import Settings
from tests.faults.conftest import World, assert_exactly_once, dataset
from tests.helpers import inference_spec, wait_until
from tests.services import WorkerProcess, child_pids

pytestmark = pytest.mark.faults


def _queue_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"-Q") + 1].decode()


def control_pids(worker: WorkerProcess) -> list[int]:
    """The control worker's main process and its pool processes."""
    (main,) = [pid for pid in worker.celery_pids() if _queue_of(pid) == CONTROL_QUEUE]
    return [main, *child_pids(main)]


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _running_with_progress(world: World, job_id: str) -> Any:
    return wait_until(
        lambda: next(
            (s for s in world.shards(job_id) if s.status == "running" and s.records_succeeded),
            None,
        ),
        timeout=120,
        interval=0.1,
        what="a shard to run with progress",
    )


@pytest.mark.exclusive  # a wall-clock bound
def test_a_second_job_is_planned_while_the_only_gpu_worker_runs_a_long_shard(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    worker = world.worker()  # `barge worker`: one GPU worker and one control worker
    world.start_scheduler()
    long_data, long_rows = dataset(s3, bucket, 600, key="long.jsonl", bad_every=60)
    first = world.submit(
        inference_spec(minilm_uri, long_data, f"s3://{bucket}/long/", id_field="id", batch_size=16)
    )
    running = _running_with_progress(world, first)

    small_data, small_rows = dataset(s3, bucket, 40, key="small.jsonl")
    submitted = time.monotonic()
    r = world.api.post(
        "/v1/jobs",
        json=inference_spec(minilm_uri, small_data, f"s3://{bucket}/small/", id_field="id"),
        headers=world.auth,
    )
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["waiting"]) == ("queued", "waiting to be planned")
    second = r.json()["id"]
    planned = wait_until(
        lambda: (j := world.job(second))["status"] == "running" and j,
        timeout=30,
        interval=0.05,
        what="the second job to be planned",
    )
    took = time.monotonic() - submitted
    print(f"submit -> planned with the only GPU worker busy: {took:.2f} s")

    # Planned while the first job's one shard still runs on the only GPU worker.
    (shard,) = world.shards(first)
    assert (shard.status, shard.attempt, shard.worker) == ("running", 1, running.worker)
    assert len(world.shards(second)) == planned["progress"]["shards_total"] == 1
    assert took < 10, took
    assert planned["waiting"] == "waiting for a GPU worker: 1 job ahead", planned
    assert world.job(first)["waiting"] is None  # its shard runs
    listed = world.api.get("/v1/jobs", headers=world.auth).json()["jobs"]
    assert {j["id"]: j["waiting"] for j in listed} == {
        first: None,
        second: "waiting for a GPU worker: 1 job ahead",
    }

    for job_id, prefix, rows in ((first, "long", long_rows), (second, "small", small_rows)):
        job = world.wait_final(job_id, timeout=240)  # a busy machine runs it slowly
        assert job["status"] == "succeeded", job
        assert job["waiting"] is None
        assert_exactly_once(s3, bucket, prefix, rows)

    # The control worker planned and finalized both jobs without ever loading torch.
    control = control_pids(worker)
    assert len(control) == 3, control  # its main process and two pool processes
    assert not [pid for pid in control if maps_torch(pid)]
    assert [pid for pid in worker.pool_pids() if pid not in control and maps_torch(pid)]


def test_periodic_messages_expire_instead_of_piling_up(world: World) -> None:
    """No worker consumes `control` for a while: the scheduler's reconcile, drop-scan and
    webhook messages (every second each, here; retention's first is not due yet) expire when
    the next is due, so the queue stays short. (RabbitMQ drops an expired message once it
    reaches the head of the queue: with periods that differ, it holds at most about longest /
    shortest period + 1 of them.)"""
    world.start_scheduler(
        {**world.env, "BARGE_DROP_SCAN_SECONDS": "1", "BARGE_WEBHOOK_SEND_SECONDS": "1"}
    )
    app = make_celery(Settings(broker_url=world.env["BARGE_BROKER_URL"]))
    depths = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = ready_messages(app, (CONTROL_QUEUE,), timeout=5)
        assert counts is not None
        depths.append(counts[CONTROL_QUEUE])
        time.sleep(0.5)
    assert max(depths) > 0, depths  # the scheduler does send them
    assert max(depths) <= 4, depths  # 20 were sent meanwhile


def test_sigterm_to_barge_worker_stops_both_workers_warmly(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    """SIGTERM to `barge worker` alone (as a service manager sends it): both Celery workers
    shut down warmly, the running shard finishes and counts once, and the worker exits 0."""
    worker = world.worker()
    mains = worker.celery_pids()
    assert sorted(_queue_of(pid) for pid in mains) == ["control", "gpu"]
    data, rows = dataset(s3, bucket, 300, bad_every=30)
    job_id = world.submit(
        inference_spec(minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16)
    )
    _running_with_progress(world, job_id)
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.wait(120) == 0, worker.tail()
    assert not [pid for pid in mains if Path(f"/proc/{pid}").exists()]
    assert worker.log.read_text().count("Warm shutdown") == 2, worker.tail()
    (shard,) = world.shards(job_id)
    assert (shard.status, shard.attempt) == ("succeeded", 1)  # finished, not re-run

    world.worker()  # the finalize message waited for a control worker
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)


def test_sigint_to_an_idle_barge_worker_stops_both(world: World) -> None:
    worker = world.worker()
    mains = worker.celery_pids()
    assert len(mains) == 2
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGINT)
    assert worker.proc.wait(60) == 0, worker.tail()
    assert not [pid for pid in mains if Path(f"/proc/{pid}").exists()]
