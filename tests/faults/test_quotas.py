"""Quotas on the real stack: at submit (active jobs: 429 with Retry-After; the checkpoint
interval: 422), when a job is planned (shards, records, fine-tune steps: the job fails naming
the limit), and for drop folders (a file over the quota waits in incoming/, never lost).

The World has no worker unless a test starts one, so submitted jobs stay queued (active)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

from sqlalchemy import select, update

from db.models import DropObject, Tenant
from db.session import session_scope
from tests.conftest import new_key
from tests.faults.conftest import World, dataset
from tests.helpers import put_jsonl, wait_until
from tests.services import WorkerProcess


def set_quotas(world: World, tenant: str, **quotas: object) -> None:
    with session_scope(world.database_url) as session:
        session.execute(update(Tenant).where(Tenant.name == tenant).values(quotas=quotas))


def spec(model: str, data: str, output: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "task": "classify", "input": data, "output": output, **extra}


def test_active_jobs_over_the_quota_get_a_429_with_retry_after(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    data, _ = dataset(s3, bucket, 4)
    set_quotas(world, "faults", max_active_jobs=2)
    first = world.submit(spec(classifier_uri, data, f"s3://{bucket}/o1/"))
    world.submit(spec(classifier_uri, data, f"s3://{bucket}/o2/"))

    r = world.api.post(
        "/v1/jobs", json=spec(classifier_uri, data, f"s3://{bucket}/o3/"), headers=world.auth
    )
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "30"
    body = r.json()
    assert body["error"] == "quota_exceeded"
    assert (
        "max_active_jobs is 2" in body["message"] and "2 jobs queued or running" in body["message"]
    )
    assert body["detail"] == {"quota": "max_active_jobs", "limit": 2, "active": 2}

    # Another tenant is not held back by this one's quota.
    other = {"Authorization": f"Bearer {new_key(world.database_url, 'other')}"}
    r = world.api.post(
        "/v1/jobs", json=spec(classifier_uri, data, f"s3://{bucket}/x/"), headers=other
    )
    assert r.status_code == 201, r.text

    # A job that ends (here: cancelled) frees its place.
    assert world.api.post(f"/v1/jobs/{first}/cancel", headers=world.auth).status_code == 200
    world.submit(spec(classifier_uri, data, f"s3://{bucket}/o3/"))


def test_concurrent_submissions_cannot_all_slip_under_the_quota(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    data, _ = dataset(s3, bucket, 4)
    set_quotas(world, "faults", max_active_jobs=3)
    statuses: list[int] = []

    def submit(i: int) -> None:
        r = world.api.post(
            "/v1/jobs",
            json=spec(classifier_uri, data, f"s3://{bucket}/burst-{i}/"),
            headers=world.auth,
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(statuses) == [201] * 3 + [429] * 7


def test_a_checkpoint_interval_below_the_quota_is_a_422_naming_it(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    train = put_jsonl(
        s3, bucket, "train.jsonl", [{"text": f"t {i}", "label": str(i % 2)} for i in range(8)]
    )
    set_quotas(world, "faults", min_checkpoint_seconds=10)
    finetune = {
        "type": "finetune",
        "base_model": classifier_uri,
        "task": "classify",
        "train": train,
        "model_name": "quota-check",
    }
    r = world.api.post(
        "/v1/jobs", json={**finetune, "checkpoint_every_seconds": 5}, headers=world.auth
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "checkpoint_every_seconds"
    assert "min_checkpoint_seconds (10)" in r.json()["message"]
    # An absurd interval is refused by the spec itself, whatever the quota.
    r = world.api.post(
        "/v1/jobs", json={**finetune, "checkpoint_every_seconds": 1e-300}, headers=world.auth
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "checkpoint_every_seconds"
    r = world.api.post(
        "/v1/jobs", json={**finetune, "checkpoint_every_seconds": 10}, headers=world.auth
    )
    assert r.status_code == 201, r.text


def test_a_plan_over_a_quota_fails_the_job_naming_the_limit(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    world.worker()
    set_quotas(world, "faults", max_shards_per_job=3, max_records_per_job=50, max_finetune_steps=10)
    small, _ = dataset(s3, bucket, 8, key="small.jsonl")
    many, _ = dataset(s3, bucket, 60, key="many.jsonl")
    train = put_jsonl(
        s3, bucket, "train.jsonl", [{"text": f"t {i}", "label": str(i % 2)} for i in range(40)]
    )
    jobs = {
        "shards": world.submit(
            spec(classifier_uri, small, f"s3://{bucket}/q1/", id_field="id", shard_size=2)
        ),  # 4 shards
        "records": world.submit(spec(classifier_uri, many, f"s3://{bucket}/q2/", id_field="id")),
        "steps": world.submit(
            {
                "type": "finetune",
                "base_model": classifier_uri,
                "task": "classify",
                "train": train,
                "model_name": "too-long",
                "hyperparameters": {"epochs": 2, "batch_size": 4},  # 20 steps
            }
        ),
        "fits": world.submit(
            spec(classifier_uri, small, f"s3://{bucket}/q4/", id_field="id", shard_size=4)
        ),
    }
    expected = {
        "shards": ("max_shards_per_job", 3, 4, "the job has 4 shards"),
        "records": ("max_records_per_job", 50, 60, "the job has 60 records"),
        "steps": ("max_finetune_steps", 10, 20, "the job has 20 optimizer steps"),
    }
    for what, job_id in jobs.items():
        job = world.wait_final(job_id)
        if what == "fits":
            assert job["status"] == "succeeded", job
            continue
        quota, limit, value, text = expected[what]
        assert job["status"] == "failed", job
        assert f"{quota} of {limit}" in job["error"] and text in job["error"], job["error"]
        events = world.api.get(f"/v1/jobs/{job_id}/events", headers=world.auth).json()["events"]
        (event,) = [e for e in events if e["kind"] == "quota_exceeded"]
        assert event["data"] == {"quota": quota, "limit": limit, "value": value}
        assert world.shards(job_id) == []  # failed before any shard existed


def test_a_dropped_file_over_the_quota_waits_in_incoming_and_is_picked_up_later(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    # A worker for control work only: jobs get planned (so they are running, active) but no
    # shard runs until a GPU worker starts.
    control = WorkerProcess(world.env, world.tmp / "control-worker.log", queues="control")
    world.workers.append(control.start())
    world.start_scheduler({**world.env, "BARGE_DROP_SCAN_SECONDS": "1"})
    set_quotas(world, "faults", max_active_jobs=1)
    r = world.api.post(
        "/v1/drops",
        json={
            "name": "quota",
            "prefix": f"s3://{bucket}/drops/q/",
            "template": {"model": classifier_uri, "task": "classify", "id_field": "id"},
        },
        headers=world.auth,
    )
    assert r.status_code == 201, r.text

    def put(name: str) -> None:
        rows = [{"id": f"{name}{i}", "text": f"dropped {name} {i}"} for i in range(3)]
        body = "\n".join(json.dumps(row) for row in rows) + "\n"
        s3.put_object(Bucket=bucket, Key=f"drops/q/incoming/{name}.jsonl", Body=body.encode())

    def keys(prefix: str) -> list[str]:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"drops/q/{prefix}")
        return sorted(o["Key"].rsplit("/", 1)[-1] for o in listing.get("Contents", []))

    def jobs() -> list[dict[str, Any]]:
        return world.api.get("/v1/jobs", headers=world.auth).json()["jobs"]  # type: ignore[no-any-return]

    put("first")
    (first,) = wait_until(jobs, timeout=60, what="the first drop's job")
    put("second")
    time.sleep(5)  # several scans (one a second) find it over the quota
    # Over the quota: left in incoming/ (beside the first, whose job runs), not failed, no job,
    # no claim row.
    assert keys("incoming/") == ["first.jsonl", "second.jsonl"]
    assert keys("failed/") == []
    assert [j["id"] for j in jobs()] == [first["id"]]
    with session_scope(world.database_url) as session:
        seen = session.scalars(select(DropObject.key)).all()
    assert seen == ["drops/q/incoming/first.jsonl"]

    # The first job ends: the next scan picks the second file up, and it runs to the end.
    assert world.api.post(f"/v1/jobs/{first['id']}/cancel", headers=world.auth).status_code == 200
    second = wait_until(
        lambda: [j for j in jobs() if j["id"] != first["id"]], timeout=60, what="its job"
    )[0]
    world.worker()
    assert world.wait_final(second["id"])["status"] == "succeeded"
    wait_until(
        lambda: "second.status.json" in keys("done/"), timeout=60, what="the file to be settled"
    )
    assert "second.jsonl" in keys("done/")
    wait_until(lambda: keys("incoming/") == [], timeout=60, what="the first file to be settled")
    assert "first.jsonl" in keys("failed/")  # its job was cancelled


def _upload(world: World, name: str, body: bytes, auth: dict[str, str] | None = None) -> Any:
    return world.api.post(
        "/openai/v1/files",
        files={"file": (name, body, "application/jsonl")},
        data={"purpose": "batch"},
        headers=auth or world.auth,
    )


def test_openai_files_over_a_quota_get_openais_envelope_naming_it(world: World, s3: Any) -> None:
    """max_openai_files and max_openai_storage_bytes: the upload past one is a 429 in OpenAI's
    envelope, naming the quota and the figures, that OpenAI's SDKs do not retry; deleting a
    file makes room; another tenant is not held back."""
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket="barge")  # BARGE_OPENAI_FILES_PREFIX: s3://barge/{tenant}/...
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
    set_quotas(world, "faults", max_openai_files=2, max_openai_storage_bytes=10 * len(line))
    first = _upload(world, "one.jsonl", line)
    assert first.status_code == 200, first.text
    assert _upload(world, "two.jsonl", line).status_code == 200
    r = _upload(world, "three.jsonl", line)
    assert r.status_code == 429, r.text
    assert r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "quota_exceeded", error
    assert error["param"] == "file"
    assert "max_openai_files is 2 and this tenant holds 2 files" in error["message"], error
    other = {"Authorization": f"Bearer {new_key(world.database_url, 'other-files')}"}
    assert _upload(world, "theirs.jsonl", line, other).status_code == 200

    deleted = world.api.delete(f"/openai/v1/files/{first.json()['id']}", headers=world.auth)
    assert deleted.status_code == 200, deleted.text
    big = line * 9  # 2 files of 1 line + 9 lines would hold 10 lines: fits
    assert _upload(world, "big.jsonl", big).status_code == 200
    set_quotas(world, "faults", max_openai_files=10, max_openai_storage_bytes=10 * len(line))
    r = _upload(world, "one-more.jsonl", line)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    held = 10 * len(line)
    assert error["code"] == "quota_exceeded", error
    assert (
        f"max_openai_storage_bytes is {held} and this tenant's files hold {held} bytes: this "
        f"file's {len(line)} bytes would make {held + len(line)}"
    ) in error["message"], error
    listed = world.api.get("/openai/v1/files", headers=world.auth).json()["data"]
    assert sorted(f["filename"] for f in listed) == ["big.jsonl", "two.jsonl"]


def test_model_versions_over_the_quota_get_barges_envelope_naming_it(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    """max_model_versions: a registration past it is a 429 in Barge's envelope naming the quota
    and the figures, and so is a fine-tune (which would register one) submitted then."""
    set_quotas(world, "faults", max_model_versions=2)
    body = {"name": "clf", "uri": classifier_uri, "task": "classify"}
    for version in (1, 2):
        r = world.api.post("/v1/models", json=body, headers=world.auth)
        assert r.status_code == 201 and r.json()["version"] == version, r.text
    r = world.api.post("/v1/models", json={**body, "name": "other"}, headers=world.auth)
    assert r.status_code == 429, r.text
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"] == "quota_exceeded"
    assert r.json()["detail"] == {"quota": "max_model_versions", "limit": 2, "registered": 2}
    assert "max_model_versions is 2 and this tenant has registered 2" in r.json()["message"]
    train = put_jsonl(
        s3, bucket, "train.jsonl", [{"text": f"t {i}", "label": str(i % 2)} for i in range(8)]
    )
    finetune = {
        "type": "finetune",
        "base_model": classifier_uri,
        "task": "classify",
        "train": train,
        "model_name": "more",
    }
    r = world.api.post("/v1/jobs", json=finetune, headers=world.auth)
    assert r.status_code == 429 and r.json()["field"] == "model_name", r.text
    assert r.json()["detail"]["quota"] == "max_model_versions"
    assert [
        m["name"] for m in world.api.get("/v1/models", headers=world.auth).json()["models"]
    ] == ["clf"]
    set_quotas(world, "faults", max_model_versions=3)
    assert world.api.post("/v1/models", json=body, headers=world.auth).status_code == 201
