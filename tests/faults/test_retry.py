"""Retrying only what failed: a job whose shard killed its worker past its attempts fails; its
retry runs exactly the records it did not finish, and across the job and its retries every
record is counted once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.faults.conftest import World, dataset, kill_shard_until_it_fails
from tests.helpers import inference_spec, read_jsonl

pytestmark = pytest.mark.faults


def _ids(s3: Any, bucket: str, files: list[dict[str, Any]]) -> list[Any]:
    return [row["id"] for f in files for row in read_jsonl(s3, bucket, f["key"])]


def _manifest(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}_manifest.json")["Body"].read()
    return json.loads(body)  # type: ignore[no-any-return]


def test_a_retry_of_a_job_whose_shard_killed_its_worker_completes_its_records_once(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data, rows = dataset(s3, bucket, 300, bad_every=25)
    good = [i for i, r in enumerate(rows) if isinstance(r, dict)]
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
    world.worker()
    world.start_scheduler()
    # The retry holds the 12 unreadable records among at most 108: 11 %, over the default
    # ratio of 10 % when the killed shard finished none of its records before its kills.
    spec = inference_spec(
        minilm_uri, data, f"s3://{bucket}/out/", batch_size=8, shard_size=100, max_failed_ratio=0.2
    )
    job_id = world.submit(spec)  # no id_field: a record's id is its position
    assert kill_shard_until_it_fails(world, job_id, 1) == 3
    parent = world.wait_final(job_id, timeout=120)
    assert parent["status"] == "failed" and "gave up after 3 attempts" in parent["error"]

    r = world.api.post(f"/v1/jobs/{job_id}/retry", json={"batch_size": 16}, headers=world.auth)
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["retries"] == {"parent": job_id, "retry": 1, "children": None, "records": None}
    assert child["output"]["uri"] == f"s3://{bucket}/out/retry-1/"
    assert child["spec"]["batch_size"] == 16
    child = world.wait_final(child["id"], timeout=300)
    assert child["status"] == "succeeded", child["error"]

    first, retried = _manifest(s3, bucket, "out/"), _manifest(s3, bucket, "out/retry-1/")
    done = _ids(s3, bucket, first["parts"]) + _ids(s3, bucket, retried["parts"])
    assert sorted(done) == good and len(done) == len(set(done)), "each good record once"
    assert sorted(_ids(s3, bucket, retried["errors"])) == bad  # unreadable: they fail again
    assert retried["records"]["total"] == 300 - first["records"]["succeeded"]
    effective = {"total": 300, "succeeded": len(good), "failed": len(bad), "not_processed": 0}
    view = world.job(job_id)["retries"]
    assert view["records"] == effective
    assert [(c["id"], c["retry"], c["status"]) for c in view["children"]] == [
        (child["id"], 1, "succeeded")
    ]
    assert first["retries"]["records"] == effective  # the parent's manifest names its retry
    assert first["retries"]["children"][0]["id"] == child["id"]

    # A retry of the retry runs what the newest one left failed: only the unreadable records.
    r = world.api.post(f"/v1/jobs/{child['id']}/retry", headers=world.auth)
    assert r.status_code == 201, r.text
    second = world.wait_final(r.json()["id"], timeout=300)
    assert second["output"]["uri"] == f"s3://{bucket}/out/retry-2/"
    assert second["progress"]["records_total"] == len(bad)
    assert world.job(job_id)["retries"]["records"] == effective
