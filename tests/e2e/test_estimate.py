"""A dry run (``POST /v1/jobs?dry_run=true``): the checks of a submission, no job made, and an
estimate from the throughput the model reached in past shards: within 2x of the real duration
for a model that ran before, null for one that never ran."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers import inference_spec, minilm_dir, put_jsonl, upload_dir, wait_job

pytestmark = pytest.mark.e2e


def _rows(n: int, seed: str) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"{seed} sentence number {i} about estimates " * 2} for i in range(n)]


def _dry(api: Any, auth: dict[str, str], spec: dict[str, Any]) -> Any:
    return api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)


def test_a_dry_run_checks_creates_nothing_and_estimates_from_past_shards(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, models_bucket: str, worker: Any
) -> None:
    # A copy of MiniLM at a location of its own: a model this database has never run.
    model = upload_dir(s3, models_bucket, f"minilm-{uuid.uuid4().hex[:8]}", minilm_dir())
    first = put_jsonl(s3, bucket, "est/first.jsonl", _rows(240, "first"))
    spec = inference_spec(model, first, f"s3://{bucket}/est/first-out/", shard_size=60)

    r = _dry(api, auth, spec)
    assert r.status_code == 200, r.text
    never = r.json()
    assert never["dry_run"] is True and never["estimate"] is None  # never ran: no estimate
    assert never["records"] == {"count": 240, "exact": True} and never["shards"] == 4
    tokens = never["tokens"]
    assert tokens["sampled_records"] == 200 and tokens["input"] > 240 * 5
    assert api.get("/v1/jobs", headers=auth).json()["jobs"] == []  # nothing was created

    bad = _dry(api, auth, {**spec, "input": f"s3://{bucket}/est/missing.jsonl"})
    assert bad.status_code == 422 and bad.json()["field"] == "input", bad.text

    ran = wait_job(api, auth, api.post("/v1/jobs", json=spec, headers=auth).json()["id"])
    assert ran["status"] == "succeeded", ran

    second = put_jsonl(s3, bucket, "est/second.jsonl", _rows(240, "second"))
    spec = inference_spec(model, second, f"s3://{bucket}/est/second-out/", shard_size=60)
    r = _dry(api, auth, spec)
    assert r.status_code == 200, r.text
    estimate = r.json()["estimate"]
    assert estimate is not None, r.json()
    assert estimate["measured"]["shards"] == 4 and estimate["measured"]["records"] == 240
    assert estimate["device"] == "cpu" and estimate["confidence"] in ("low", "medium")
    assert estimate["device_hours"] > 0
    job = wait_job(api, auth, api.post("/v1/jobs", json=spec, headers=auth).json()["id"])
    assert job["status"] == "succeeded", job
    real = (job["finished_at"] and job["started_at"]) and _seconds(job)
    assert real > 0
    assert real / 2 <= estimate["duration_seconds"] <= real * 2, (estimate, real)


def _seconds(job: dict[str, Any]) -> float:
    from datetime import datetime

    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds()
