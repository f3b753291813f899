"""The model registry: versions, tenancy, and inference jobs that name a registered model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_key
from tests.helpers import (
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    tiny_classifier,
    upload_dir,
    wait_job,
)
from tests.services import ROOT

pytestmark = pytest.mark.e2e


def test_registered_models_are_versioned_and_inference_can_name_them(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    classifier_uri: str,
    worker: Any,
    database_url: str,
) -> None:
    name = f"team-model-{uuid.uuid4().hex[:6]}"
    v1 = api.post(
        "/v1/models", json={"name": name, "uri": minilm_uri, "task": "embed"}, headers=auth
    )
    v2 = api.post(
        "/v1/models", json={"name": name, "uri": classifier_uri, "task": "classify"}, headers=auth
    )
    assert v1.status_code == 201 and v2.status_code == 201, (v1.text, v2.text)
    assert (v1.json()["ref"], v2.json()["ref"]) == (f"{name}@1", f"{name}@2")
    listed = api.get("/v1/models", headers=auth).json()["models"]
    assert [(m["name"], m["version"]) for m in listed] == [(name, 2)]  # the newest of each
    versions = api.get(f"/v1/models/{name}", headers=auth).json()["models"]
    assert [m["version"] for m in versions] == [2, 1]

    data = put_jsonl(
        s3, bucket, "in.jsonl", [{"id": i, "text": f"registry {i}"} for i in range(12)]
    )
    latest = api.post(
        "/v1/jobs",
        json=inference_spec(name, data, f"s3://{bucket}/latest/", task="classify"),
        headers=auth,
    )
    pinned = api.post(
        "/v1/jobs", json=inference_spec(f"{name}@1", data, f"s3://{bucket}/pinned/"), headers=auth
    )
    assert latest.status_code == 201 and pinned.status_code == 201, (latest.text, pinned.text)
    assert wait_job(api, auth, latest.json()["id"])["status"] == "succeeded"
    assert wait_job(api, auth, pinned.json()["id"])["status"] == "succeeded"
    assert manifest(s3, bucket, "latest")["model_uri"] == classifier_uri
    assert manifest(s3, bucket, "pinned")["model_uri"] == minilm_uri

    missing = api.post(
        "/v1/jobs", json=inference_spec(f"{name}@9", data, f"s3://{bucket}/x/"), headers=auth
    )
    assert missing.status_code == 422 and missing.json()["field"] == "model"

    other = {"Authorization": f"Bearer {new_key(database_url, 'other-' + uuid.uuid4().hex[:6])}"}
    assert api.get("/v1/models", headers=other).json()["models"] == []
    assert api.get(f"/v1/models/{name}", headers=other).status_code == 404
    refused = api.post(
        "/v1/jobs", json=inference_spec(name, data, f"s3://{bucket}/y/"), headers=other
    )
    assert refused.status_code == 422  # another tenant's registry name means nothing here


def test_registering_something_that_is_not_a_model_is_refused(
    api: Any, auth: dict[str, str], s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="m/pytorch_model.bin", Body=b"pickle")
    r = api.post(
        "/v1/models", json={"name": "m", "uri": f"s3://{bucket}/m/", "task": "embed"}, headers=auth
    )
    assert r.status_code == 422 and r.json()["field"] == "uri"
    assert "no *.safetensors weights" in r.json()["message"]
    r = api.post(
        "/v1/models",
        json={"name": "bad name!", "uri": f"s3://{bucket}/m/", "task": "embed"},
        headers=auth,
    )
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert api.get("/v1/models/nothing", headers=auth).status_code == 404


def test_an_adapter_directory_without_its_weights_is_refused_at_register(
    api: Any, auth: dict[str, str], s3: Any, bucket: str
) -> None:
    """``adapter_config.json`` makes a directory a LoRA adapter, whose weights are
    ``adapter_model.safetensors``: without them it is refused when registered, saying so (any
    other safetensors file is not the adapter's weights)."""
    config = json.dumps({"peft_type": "LORA", "base_model_name_or_path": "base", "r": 4})
    s3.put_object(Bucket=bucket, Key="only-config/adapter_config.json", Body=config.encode())
    s3.put_object(Bucket=bucket, Key="other-weights/adapter_config.json", Body=config.encode())
    s3.put_object(Bucket=bucket, Key="other-weights/model.safetensors", Body=b"{}")
    for name in ("only-config", "other-weights"):
        r = api.post(
            "/v1/models",
            json={"name": name, "uri": f"s3://{bucket}/{name}/", "task": "classify"},
            headers=auth,
        )
        assert r.status_code == 422 and r.json()["field"] == "uri", r.text
        assert "adapter_model.safetensors" in r.json()["message"], r.text
    assert api.get("/v1/models/only-config", headers=auth).status_code == 404


def test_barge_models_cli(
    api_url: str, barge_env: dict[str, str], database_url: str, minilm_uri: str
) -> None:
    env = {
        **os.environ,
        **barge_env,
        "BARGE_API_URL": api_url,
        "BARGE_API_KEY": new_key(database_url, "cli-models"),
    }

    def barge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    registered = barge("models", "register", "minilm", "--uri", minilm_uri, "--task", "embed")
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == "minilm@1"
    listing = barge("models")
    assert "minilm@1" in listing.stdout and minilm_uri in listing.stdout
    shown = barge("models", "show", "minilm")
    assert "minilm@1" in shown.stdout
    missing = barge("models", "show", "nope")
    assert missing.returncode == 3 and "no model named 'nope'" in missing.stderr  # 404


def _labels_written(s3: Any, bucket: str, prefix: str) -> set[str]:
    rows = [
        row
        for part in manifest(s3, bucket, prefix)["parts"]
        for row in read_jsonl(s3, bucket, part["key"])
    ]
    assert len(rows) == 40
    return {row["label"] for row in rows} | {name for row in rows for name in row["scores"]}


def test_a_model_reuploaded_under_the_same_uri_is_what_the_next_job_runs(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, worker: Any, tmp_path: Path
) -> None:
    """A warm worker lists a model directory once per job, not once per shard; a model
    re-uploaded under the same URI (new config and weights, same keys) is listed, copied and
    loaded by the next job on that same worker."""
    data = put_jsonl(s3, bucket, "in.jsonl", [{"id": i, "text": f"reload {i}"} for i in range(40)])
    model = upload_dir(s3, bucket, "model", tiny_classifier(tmp_path / "v1", ("first", "second")))

    def run(out: str) -> set[str]:
        spec = inference_spec(model, data, f"s3://{bucket}/{out}/", task="classify", shard_size=10)
        job = api.post("/v1/jobs", json=spec, headers=auth)
        assert job.status_code == 201, job.text
        done = wait_job(api, auth, job.json()["id"])
        assert done["status"] == "succeeded" and done["progress"]["records_succeeded"] == 40
        return _labels_written(s3, bucket, out)

    assert run("before") == {"first", "second"}  # 4 shards, one listing of the model
    upload_dir(s3, bucket, "model", tiny_classifier(tmp_path / "v2", ("x", "y", "z")))
    assert run("after") == {"x", "y", "z"}


def test_a_job_keeps_the_model_revision_it_started_with(
    settings: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The rule of the worker's model cache, on a real S3 server and real models: a job's
    later shards find the revision its first shard listed, warm, without listing again (so a
    model is never swapped under a running job); the next job lists the directory anew."""
    from barge.storage import make_store
    from worker.models.cache import ModelCache

    cache = ModelCache(settings, make_store(settings))
    uri = upload_dir(s3, bucket, "m", tiny_classifier(tmp_path / "v1", ("a", "b")))
    job, next_job = uuid.uuid4(), uuid.uuid4()
    first = cache.get(uri, "classify", job)
    upload_dir(s3, bucket, "m", tiny_classifier(tmp_path / "v2", ("x", "y", "z")))

    assert cache.get(uri, "classify", job) is first
    reloaded = cache.get(uri, "classify", next_job)
    assert reloaded.revision != first.revision
    assert reloaded.labels == {0: "x", 1: "y", 2: "z"}
    assert cache.get(uri, "classify", next_job) is reloaded
    assert cache.get(uri, "classify") is reloaded  # no job: always the directory as it is now
