"""Takeover after a crash with the default settings: a SIGKILLed worker's shard runs again on
another worker within about 15 s, and every record still appears exactly once."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from barge.settings import Settings
from tests.faults.conftest import FAULT_SETTINGS, World, assert_exactly_once, dataset
from tests.helpers import inference_spec, wait_until
from tests.services import WorkerProcess

pytestmark = pytest.mark.faults

TAKEOVER_SECONDS = 15  # the figure in docs/explanation/guarantees.md


def default_env(world: World) -> dict[str, str]:
    """The world's environment with the lease, heartbeat, reconcile, grace and attempts settings
    back at their defaults (the suite shortens them)."""
    return {k: v for k, v in world.env.items() if k not in FAULT_SETTINGS}


@pytest.mark.exclusive  # a wall-clock bound
def test_a_killed_workers_shard_runs_again_within_15_s_with_the_default_settings(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    env = default_env(world)
    assert not {"BARGE_LEASE_SECONDS", "BARGE_HEARTBEAT_SECONDS", "BARGE_RECONCILE_SECONDS"} & set(
        env
    )
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert (defaults["lease_seconds"], defaults["heartbeat_seconds"]) == (10, 2)
    assert defaults["reconcile_seconds"] == 15
    # Two default `barge worker`s (a GPU and a control worker each), started side by side.
    workers = [WorkerProcess(env, world.tmp / f"takeover-{n}.log") for n in range(2)]
    world.workers += workers
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(WorkerProcess.start, workers))
    world.start_scheduler(env)
    data, rows = dataset(s3, bucket, 1500, bad_every=40)  # a shard long enough to kill mid-way
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=1500
        )
    )
    shard = wait_until(
        lambda: next(
            (s for s in world.shards(job_id) if s.status == "running" and s.records_succeeded),
            None,
        ),
        timeout=120,
        interval=0.1,
        what="the shard to run with progress",
    )
    pid = int(shard.worker.rsplit(":", 1)[1])
    (holder,) = [w for w in workers if pid in w.pool_pids()]
    (other,) = [w for w in workers if w is not holder]

    assert holder.proc is not None
    os.killpg(holder.proc.pid, signal.SIGKILL)  # the whole worker: supervisor, both Celery workers
    killed = time.monotonic()
    again = wait_until(
        lambda: next(
            (s for s in world.shards(job_id) if s.attempt > shard.attempt and s.worker), None
        ),
        timeout=60,
        interval=0.1,
        what="the shard to run again",
    )
    took = time.monotonic() - killed
    holder.proc.wait(10)
    print(f"SIGKILL to the shard running again: {took:.1f} s")
    assert took <= TAKEOVER_SECONDS, f"the shard ran again {took:.1f} s after the kill"
    assert again.attempt == shard.attempt + 1
    assert int(again.worker.rsplit(":", 1)[1]) in other.pool_pids()

    job = world.wait_final(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)
    (final,) = world.shards(job_id)
    assert (final.status, final.attempt) == ("succeeded", shard.attempt + 1)
