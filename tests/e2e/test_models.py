"""The model registry: versions, tenancy, and inference jobs that name a registered model."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.conftest import new_key
from tests.helpers import inference_spec, manifest, put_jsonl, wait_job
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
    assert missing.returncode == 2 and "no model named 'nope'" in missing.stderr
