"""An input object deleted after its job was planned. A plain JSONL shard reads its byte range
without a HEAD first; the object's absence is still a clear failure of the job, once, never
retries or a part written from nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.conftest import World, dataset
from tests.helpers import inference_spec, wait_until
from tests.services import WorkerProcess

pytestmark = pytest.mark.faults


def test_an_input_deleted_after_planning_fails_its_job_saying_so(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    planner = WorkerProcess(world.env, world.tmp / "control.log", queues="control")
    world.workers.append(planner.start())  # plans; runs no shard
    data, _ = dataset(s3, bucket, 30)
    job_id = world.submit(inference_spec(minilm_uri, data, f"s3://{bucket}/out/", shard_size=10))
    wait_until(lambda: world.job(job_id)["status"] == "running", what="the job to be planned")
    s3.delete_object(Bucket=bucket, Key="in.jsonl")

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "failed"
    assert f"input object {data} disappeared" in job["error"]
    shards = world.shards(job_id)
    assert [s.attempt for s in shards if s.attempt] == [1], "retried, or run after the failure"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/part-")
