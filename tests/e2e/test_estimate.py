"""A dry run (``POST /v1/jobs?dry_run=true``): the checks of a submission, no job made, and an
estimate from the throughput the model reached in past shards: within 2x of the real duration
for a model that ran before (its first run on a fresh worker, cold start and all, estimating a
warm second run), null for one that never ran."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.helpers import inference_spec, minilm_dir, put_jsonl, upload_dir, wait_job

pytestmark = pytest.mark.e2e


def _rows(n: int, seed: str) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"{seed} sentence number {i} about estimates " * 2} for i in range(n)]


def _dry(api: Any, auth: dict[str, str], spec: dict[str, Any]) -> Any:
    return api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)


@pytest.mark.exclusive  # compares an estimate with a wall-clock run
def test_a_dry_run_checks_creates_nothing_and_estimates_from_past_shards(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    worker: Any,
) -> None:
    jobs_before = api.get("/v1/jobs", headers=auth).json()["jobs"]
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
    assert api.get("/v1/jobs", headers=auth).json()["jobs"] == jobs_before  # nothing created

    bad = _dry(api, auth, {**spec, "input": f"s3://{bucket}/est/missing.jsonl"})
    assert bad.status_code == 422 and bad.json()["field"] == "input", bad.text

    # The first job on this model, on a fresh worker (run alone, first in the exclusive phase,
    # its pool process imports torch and transformers as well): its shards fetch and load the
    # model, seconds that a warm worker never pays again.
    ran = wait_job(api, auth, api.post("/v1/jobs", json=spec, headers=auth).json()["id"])
    assert ran["status"] == "succeeded", ran

    second = put_jsonl(s3, bucket, "est/second.jsonl", _rows(240, "second"))
    spec = inference_spec(model, second, f"s3://{bucket}/est/second-out/", shard_size=60)
    r = _dry(api, auth, spec)
    assert r.status_code == 200, r.text
    estimate = r.json()["estimate"]
    assert estimate is not None, r.json()
    measured = estimate["measured"]
    assert measured["shards"] == 4 and measured["records"] == 240
    # The cold start was measured apart from the records' processing ...
    assert measured["loads"] >= 1 and measured["load_seconds"] > 0, estimate
    # ... and left out: the worker holds the model warm, so the estimate assumes no load.
    assert estimate["model_warm"] is True and estimate["cold_start_seconds"] == 0, estimate
    assert estimate["device"] == "cpu" and estimate["confidence"] in ("low", "medium")
    assert estimate["device_hours"] > 0
    job = wait_job(api, auth, api.post("/v1/jobs", json=spec, headers=auth).json()["id"])
    assert job["status"] == "succeeded", job
    real = (job["finished_at"] and job["started_at"]) and _seconds(job)
    assert real > 0
    print(
        f"first run {_seconds(ran):.1f} s (cold starts {measured['load_seconds']} s over "
        f"{measured['loads']} shards); dry-run estimate {estimate['duration_seconds']} s, warm "
        f"run {real:.1f} s"
    )
    assert real / 2 <= estimate["duration_seconds"] <= real * 2, (estimate, real)


def _seconds(job: dict[str, Any]) -> float:
    from datetime import datetime

    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds()


def test_the_cli_dry_runs_and_retries(
    api: Any,
    auth: dict[str, str],
    tenant_key: str,
    api_url: str,
    barge_env: dict[str, str],
    tmp_path: Any,
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
) -> None:
    from tests.e2e.test_cli import barge, client_env

    env = client_env(barge_env, tmp_path, BARGE_API_URL=api_url, BARGE_API_KEY=tenant_key)
    rows: list[Any] = [{"id": i, "text": f"record {i}"} for i in range(20)]
    rows[7] = '{"id": 7, "text": broken'
    data = put_jsonl(s3, bucket, "cli-est/in.jsonl", rows)
    spec = inference_spec(minilm_uri, data, f"s3://{bucket}/cli-est/out/", id_field="id")
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))

    dry = barge("submit", str(path), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["records"] == {"count": 20, "exact": True}
    assert api.get("/v1/jobs", headers=auth).json()["jobs"] == []

    job = wait_job(api, auth, api.post("/v1/jobs", json=spec, headers=auth).json()["id"])
    assert job["status"] == "succeeded" and job["progress"]["records_failed"] == 1, job
    done = barge("retry", job["id"], "--batch-size", "4", env=env)
    assert done.returncode == 0, done.stderr
    child = api.get(f"/v1/jobs/{done.stdout.strip()}", headers=auth).json()
    assert child["retries"]["parent"] == job["id"] and child["spec"]["batch_size"] == 4
    assert child["progress"]["records_total"] in (None, 1)
    parent = api.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert [c["id"] for c in parent["retries"]["children"]] == [child["id"]]
    child = wait_job(api, auth, child["id"])
    assert child["progress"]["records_total"] == 1  # only the record that failed

    clean = put_jsonl(s3, bucket, "cli-est/clean.jsonl", rows[:5])
    spec = inference_spec(minilm_uri, clean, f"s3://{bucket}/cli-est/clean-out/")
    ok = wait_job(api, auth, api.post("/v1/jobs", json=spec, headers=auth).json()["id"])
    refused = barge("retry", ok["id"], env=env)
    assert refused.returncode == 3 and "no failed" in refused.stderr, refused.stderr
