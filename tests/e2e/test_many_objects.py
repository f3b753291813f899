"""A prefix of many small JSONL objects: the planner reads them with a bounded pool of
concurrent GETs (BARGE_INPUT_FETCH_THREADS), and every record comes out exactly once, in input
order, with its id; a bad record names its own object and line; an object that cannot be read
fails the job naming it, as it did when objects were read one at a time."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import inference_spec, manifest, put_jsonl, read_jsonl, wait_job

pytestmark = pytest.mark.e2e

OBJECTS = 200
BAD = 59  # this object (of 3 records) has a second line that is not JSON


def _put_prefix(s3: Any, bucket: str) -> list[str]:
    """OBJECTS small objects of 1-3 records (some with blank lines); the ids in input order."""
    ids: list[str] = []
    for i in range(OBJECTS):
        rows: list[Any] = []
        for j in range(i % 3 + 1):
            if i == BAD and j == 1:
                rows.append("{not json")
                continue
            rows.append({"id": f"{i}-{j}", "text": f"object {i} record {j}"})
            ids.append(f"{i}-{j}")
            if i % 5 == 0:
                rows.append("")  # a blank line is no record, but counts as a line
        put_jsonl(s3, bucket, f"in/obj-{i:03d}.jsonl", rows)
    return ids


def test_every_record_of_many_small_objects_once_in_order(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    ids = _put_prefix(s3, bucket)
    spec = inference_spec(
        minilm_uri,
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        id_field="id",
        max_failed_ratio=0.5,
    )
    # a dry run counts them as the planner does (read with the same bounded pool)
    dry = api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)
    assert dry.status_code == 200, dry.text
    assert dry.json()["records"] == {"count": len(ids) + 1, "exact": True}
    assert dry.json()["shards"] == OBJECTS
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"], timeout=600)
    assert job["status"] == "succeeded", job
    m = manifest(s3, bucket, "out")
    parts = sorted(m["parts"], key=lambda p: p["shard"])
    # one shard per object, in key order, each naming its object
    assert [p["source"] for p in parts] == [
        f"s3://{bucket}/in/obj-{i:03d}.jsonl" for i in range(OBJECTS)
    ]
    rows = [row for p in parts for row in read_jsonl(s3, bucket, p["key"])]
    assert [row["id"] for row in rows] == ids  # every record once, in input order
    assert all(len(row["embedding"]) == 384 for row in rows)
    errors = [e for p in m["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert [(e["source"], e["line"]) for e in errors] == [
        (f"s3://{bucket}/in/obj-{BAD:03d}.jsonl", 2)
    ]
    assert "JSON" in errors[0]["error"] or "json" in errors[0]["error"]
    assert m["records"] == {
        "total": len(ids) + 1,
        "succeeded": len(ids),
        "failed": 1,
        "not_processed": 0,
    }


def test_an_unreadable_object_mid_prefix_fails_the_job_naming_it(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    for i in range(40):
        put_jsonl(s3, bucket, f"in/obj-{i:03d}.jsonl", [{"text": f"object {i}"}])
    # corrupt gzip in the middle of the prefix (and another after it: the first one is named)
    for i in (17, 31):
        s3.put_object(Bucket=bucket, Key=f"in/obj-{i:03d}x.jsonl.gz", Body=b"\x1f\x8bnot gzip")
    spec = inference_spec(minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/")
    # a dry run counts what it can read; the job's planning fails naming the first bad object
    dry = api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)
    assert dry.status_code == 200, dry.text
    assert dry.json()["records"] == {"count": 40, "exact": True}
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "failed", job
    assert f"invalid gzip data in s3://{bucket}/in/obj-017x.jsonl.gz" in job["error"], job
