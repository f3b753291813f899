"""Bad input is a clear 4xx naming the field; tenants are isolated; idempotency; listing; cancel."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.conftest import new_key
from tests.helpers import inference_spec, manifest, put_jsonl, read_jsonl, wait_job, wait_until


@pytest.fixture
def dataset(s3: Any, bucket: str) -> str:
    return put_jsonl(
        s3, bucket, "in/data.jsonl", [{"id": i, "text": f"text {i}"} for i in range(20)]
    )


def _spec(minilm_uri: str, dataset: str, bucket: str, **kw: Any) -> dict[str, Any]:
    return inference_spec(minilm_uri, dataset, f"s3://{bucket}/out-{uuid.uuid4().hex[:6]}/", **kw)


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        ({"task": "summarize"}, "task", "embed"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"text_field": "body"}, "text_field", "'body' is not a field"),
        ({"id_field": "key"}, "id_field", "'key' is not a field"),
        ({"input": "s3://{bucket}/missing.jsonl"}, "input", "no input object"),
        ({"input": "/etc/passwd"}, "input", "s3://"),
        ({"model": "s3://{bucket}/no-model/"}, "model", "no model directory"),
        ({"model": "no-such-model@2"}, "model", "registered model"),
        ({"params": {"normalise": True}}, "params", "normalise: unknown parameter"),
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"max_failed_ratio": 2}, "max_failed_ratio", "less than or equal to 1"),
        ({"output_format": "xml"}, "output_format", "jsonl"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    api: Any,
    auth: dict[str, str],
    minilm_uri: str,
    dataset: str,
    bucket: str,
    change: dict[str, Any],
    field: str,
    needle: str,
) -> None:
    spec = _spec(minilm_uri, dataset, bucket)
    spec.update(
        {k: v.format(bucket=bucket) if isinstance(v, str) else v for k, v in change.items()}
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field, body
    assert needle in body["message"], body


def test_output_prefix_already_used_is_refused(
    api: Any, auth: dict[str, str], s3: Any, minilm_uri: str, dataset: str, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="done/_manifest.json", Body=b"{}")
    spec = inference_spec(minilm_uri, dataset, f"s3://{bucket}/done/")
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422 and r.json()["field"] == "output", r.text
    assert "already holds a finished job" in r.json()["message"]


def test_body_that_is_not_json_is_422(api: Any, auth: dict[str, str]) -> None:
    r = api.post(
        "/v1/jobs", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "not valid JSON" in r.json()["message"]


def test_garbage_bodies_never_500(api: Any, auth: dict[str, str]) -> None:
    for body in [[], 1, "x", {"type": "inference"}, {"type": "finetune"}, {"input": None}, None]:
        r = api.post(
            "/v1/jobs",
            content=json.dumps(body),
            headers={**auth, "Content-Type": "application/json"},
        )
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.json()["message"]


def test_missing_or_wrong_key_is_401(api: Any) -> None:
    r = api.get("/v1/jobs")
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    r = api.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "unknown" in r.json()["message"]
    r = api.get("/v1/jobs", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_tenants_never_see_each_others_jobs(
    api: Any, auth: dict[str, str], database_url: str, minilm_uri: str, dataset: str, bucket: str
) -> None:
    r = api.post("/v1/jobs", json=_spec(minilm_uri, dataset, bucket), headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    other = {"Authorization": f"Bearer {new_key(database_url, 'other-' + uuid.uuid4().hex[:6])}"}
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]:
        r = api.request(method, path, headers=other)
        assert r.status_code == 404, (path, r.text)
    assert api.get("/v1/jobs", headers=other).json()["jobs"] == []
    assert api.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert api.get("/v1/jobs/not-a-uuid", headers=auth).status_code == 404


def test_idempotency_key_returns_the_same_job(
    api: Any, auth: dict[str, str], minilm_uri: str, dataset: str, bucket: str
) -> None:
    spec = _spec(minilm_uri, dataset, bucket)
    headers = {**auth, "Idempotency-Key": "nightly-2026-11-23"}
    first = api.post("/v1/jobs", json=spec, headers=headers)
    again = api.post("/v1/jobs", json=spec, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    changed = api.post("/v1/jobs", json={**spec, "batch_size": 8}, headers=headers)
    assert changed.status_code == 409 and "different spec" in changed.json()["message"]


def test_list_filters_and_cursor_pagination(
    api: Any, auth: dict[str, str], minilm_uri: str, dataset: str, bucket: str
) -> None:
    ids = [
        api.post("/v1/jobs", json=_spec(minilm_uri, dataset, bucket), headers=auth).json()["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params, headers=auth).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))  # newest first, no gaps, no repeats
    assert api.get("/v1/jobs", params={"status": "bogus"}, headers=auth).status_code == 422
    assert api.get("/v1/jobs", params={"cursor": "!!"}, headers=auth).status_code == 422
    typed = api.get("/v1/jobs", params={"type": "inference", "limit": 200}, headers=auth).json()[
        "jobs"
    ]
    assert {j["id"] for j in typed} >= set(ids)


def test_healthz_checks_database_and_broker(api: Any) -> None:
    r = api.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    assert api.get("/docs").status_code == 200
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"config.json": b"{}", "pytorch_model.bin": b"pickle"}, "no *.safetensors weights"),
        ({"tokenizer.json": b"{}", "model.safetensors": b"x"}, "no config.json"),
        ("corrupt", "cannot load model"),
    ],
)
def test_unreadable_model_directory_fails_the_job_saying_why(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    dataset: str,
    minilm_uri: str,
    worker: Any,
    files: Any,
    needle: str,
) -> None:
    if files == "corrupt":  # a real config and tokenizer, weights that are not safetensors
        src_bucket, src_prefix = minilm_uri[5:].split("/", 1)
        files = {}
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            files[name] = s3.get_object(Bucket=src_bucket, Key=src_prefix + name)["Body"].read()
        files["model.safetensors"] = b"this is not a safetensors file"
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"badmodel/{name}", Body=body)
    r = api.post("/v1/jobs", json=_spec(f"s3://{bucket}/badmodel/", dataset, bucket), headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "failed"
    assert needle in job["error"], job["error"]
    # A failed job's manifest follows once nothing is running any more.
    wait_until(
        lambda: api.get(f"/v1/jobs/{job['id']}", headers=auth).json()["output"]["manifest"],
        timeout=30,
        what="the failed job's manifest",
    )
    m = manifest(s3, bucket, job["output"]["uri"].split("/", 3)[3])
    assert m["status"] == "failed" and needle in m["error"]


@pytest.mark.e2e
def test_cancel_mid_job_stops_within_a_batch_and_lists_what_was_written(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    rows = [{"id": i, "text": f"a somewhat longer sentence number {i} " * 3} for i in range(6000)]
    data = put_jsonl(s3, bucket, "big.jsonl", rows)
    spec = inference_spec(
        minilm_uri, data, f"s3://{bucket}/cancelled/", batch_size=16, shard_size=1500
    )
    job_id = api.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    wait_until(
        lambda: (
            api.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"]["records_succeeded"] > 0
        ),
        timeout=120,
        what="the job to make progress",
    )
    asked = time.monotonic()
    r = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelling", r.text
    job = wait_job(api, auth, job_id, timeout=60)
    took = time.monotonic() - asked
    assert job["status"] == "cancelled"
    assert took < 15, f"cancel took {took:.1f}s"
    m = manifest(s3, bucket, "cancelled")
    assert m["status"] == "cancelled"
    written = [row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]
    assert len(written) == m["records"]["succeeded"] == job["progress"]["records_succeeded"]
    assert 0 < len(written) < 6000
    assert len({row["id"] for row in written}) == len(written)
    assert m["records"]["not_processed"] == 6000 - len(written)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="cancelled/_SUCCESS")
    again = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]
    events = api.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["events"]
    assert [(e["from_status"], e["to_status"]) for e in events if e["kind"] == "status"] == [
        ("queued", "running"),
        ("running", "cancelling"),
        ("cancelling", "cancelled"),
    ]
