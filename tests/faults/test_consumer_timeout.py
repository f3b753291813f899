"""A shard that runs longer than RabbitMQ's consumer_timeout (lowered for the test)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.conftest import World, assert_exactly_once, dataset
from tests.helpers import inference_spec

pytestmark = pytest.mark.faults


def _set_rabbit_env(key: str, value: int) -> None:
    subprocess.run(
        ["rabbitmqctl", "eval", f"application:set_env(rabbit, {key}, {value})."],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def short_consumer_timeout() -> Iterator[None]:
    """3 s consumer timeout, checked every second, for channels opened from now on."""
    _set_rabbit_env("consumer_timeout", 3000)
    _set_rabbit_env("channel_tick_interval", 1000)
    try:
        yield
    finally:
        _set_rabbit_env("consumer_timeout", 1_800_000)
        _set_rabbit_env("channel_tick_interval", 60_000)


@pytest.mark.exclusive  # lowers RabbitMQ's consumer timeout for every vhost
def test_a_shard_longer_than_the_consumer_timeout_commits_its_records_once(
    world: World, s3: Any, bucket: str, minilm_uri: str, short_consumer_timeout: None
) -> None:
    """RabbitMQ closes the channel (Celery calls it unrecoverable and the worker's main process
    shuts down); the pool child still finishes the shard and commits it under its lease, the
    redelivered message finds the shard done, and a restarted worker finalizes the job."""
    data, rows = dataset(s3, bucket, 1500, bad_every=100)
    first = world.worker()
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=1500
        )
    )
    # A supervisor (compose's `restart: unless-stopped`) restarts a worker that exits.
    deadline = time.monotonic() + 240
    while world.job(job_id)["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish"
        if all(w.proc is not None and w.proc.poll() is not None for w in world.workers):
            world.worker()
        time.sleep(0.5)
    assert "PRECONDITION_FAILED - delivery acknowledgement" in first.log.read_text()
    job = world.wait_final(job_id, timeout=60)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)
    shard = world.shards(job_id)[0]
    assert (shard.status, shard.attempt) == ("succeeded", 1)  # committed once, never re-run
    assert (shard.finished_at - shard.started_at).total_seconds() > 3  # longer than the timeout
