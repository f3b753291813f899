"""RabbitMQ and Postgres restarted mid-job; shard time limits; the error budget."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import World, assert_exactly_once, dataset
from tests.helpers import inference_spec, wait_until

pytestmark = pytest.mark.faults


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def _pg_cluster() -> list[str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


@pytest.fixture
def rabbit_control() -> Iterator[None]:
    if not shutil.which("rabbitmqctl"):
        pytest.fail("rabbitmqctl is needed to stop and start the local RabbitMQ")
    yield
    _rabbitmqctl("start_app")  # whatever happened, leave the broker running


def _progressing(world: World, job_id: str) -> None:
    wait_until(
        lambda: world.job(job_id)["progress"]["records_succeeded"] > 0,
        timeout=120,
        what="the job to make progress",
    )


@pytest.mark.exclusive  # stops the shared RabbitMQ
def test_rabbitmq_stopped_and_started_mid_job(
    world: World, s3: Any, bucket: str, minilm_uri: str, rabbit_control: None
) -> None:
    data, rows = dataset(s3, bucket, 900, bad_every=90)
    world.worker()
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=300
        )
    )
    _progressing(world, job_id)
    _rabbitmqctl("stop_app")
    try:
        health = world.api.get("/healthz")
        assert health.status_code == 503 and health.json()["broker"].startswith("unavailable")
        started = time.monotonic()
        late_data, late_rows = dataset(s3, bucket, 50, key="late.jsonl")
        r = world.api.post(
            "/v1/jobs",
            json=inference_spec(minilm_uri, late_data, f"s3://{bucket}/late/", id_field="id"),
            headers=world.auth,
        )
        took = time.monotonic() - started
        # Accepted durably: committed in Postgres, dispatched by the reconciler once the broker is back.
        assert r.status_code == 201, r.text
        assert took < 15, f"submission hung for {took:.1f}s while the broker was down"
        late_id = r.json()["id"]
        time.sleep(3)
    finally:
        _rabbitmqctl("start_app")
    job = world.wait_final(job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)
    late = world.wait_final(late_id, timeout=180)
    assert late["status"] == "succeeded", late
    assert_exactly_once(s3, bucket, "late", late_rows)
    assert world.api.get("/healthz").status_code == 200


@pytest.mark.exclusive  # restarts the shared Postgres
def test_postgres_restarted_mid_job(world: World, s3: Any, bucket: str, minilm_uri: str) -> None:
    data, rows = dataset(s3, bucket, 900, bad_every=75)
    world.worker()
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=300
        )
    )
    _progressing(world, job_id)
    subprocess.run([*_pg_cluster(), "restart"], check=True, capture_output=True, timeout=120)
    # The API reconnects (stale pooled connections are replaced) ...
    wait_until(
        lambda: world.api.get("/healthz").status_code == 200,
        timeout=60,
        what="the API to reconnect",
    )
    # ... and so do the workers: the job still ends with the right counts.
    job = world.wait_final(job_id, timeout=240)
    assert job["status"] == "succeeded", job
    manifest = assert_exactly_once(s3, bucket, "out", rows)
    assert job["progress"]["records_succeeded"] == manifest["records"]["succeeded"]
    assert job["progress"]["records_failed"] == manifest["records"]["failed"] == 12


def test_a_shard_past_its_soft_time_limit_fails_with_a_clear_error(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, _rows = dataset(s3, bucket, 3000)
    world.worker(BARGE_SHARD_SOFT_TIME_LIMIT="3", BARGE_SHARD_HARD_TIME_LIMIT="60")
    world.start_scheduler()
    job_id = world.submit(inference_spec(minilm_uri, data, f"s3://{bucket}/out/", batch_size=8))
    job = world.wait_final(job_id, timeout=120)
    assert job["status"] == "failed"
    assert "shard time limit (3s" in job["error"] and "smaller shard_size" in job["error"], job[
        "error"
    ]


def test_the_error_budget_fails_a_job_with_too_many_bad_records(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, rows = dataset(s3, bucket, 100, bad_every=5)  # 20% bad
    world.worker()
    job_id = world.submit(
        inference_spec(minilm_uri, data, f"s3://{bucket}/out/", id_field="id", max_failed_ratio=0.1)
    )
    job = world.wait_final(job_id)
    assert job["status"] == "failed"
    assert "20 of 100 records failed" in job["error"] and "max_failed_ratio" in job["error"]
    assert_exactly_once(s3, bucket, "out", rows)  # what was computed is still all there
    ok_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out2/", id_field="id", max_failed_ratio=0.25
        )
    )
    assert world.wait_final(ok_id)["status"] == "succeeded"
