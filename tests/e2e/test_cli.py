"""The `barge` CLI against a real API process, worker and stores; and `barge demo` (make demo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import put_jsonl, read_jsonl
from tests.services import ROOT, free_port

pytestmark = pytest.mark.e2e
BARGE = [sys.executable, "-m", "cli"]


def barge(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BARGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_cli_keys_submit_wait_status_list_events_cancel(
    api_url: str,
    barge_env: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    tmp_path: Path,
) -> None:
    env = {**os.environ, **barge_env}
    created = barge("keys", "create", "--tenant", "cli-team", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bk_") and "\n" not in key  # only the key on stdout
    env.update(BARGE_API_URL=api_url, BARGE_API_KEY=key)

    data = put_jsonl(
        s3, bucket, "cli.jsonl", [{"id": f"q{i}", "text": f"cli record {i}"} for i in range(50)]
    )
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "type": "inference",
                "model": minilm_uri,
                "task": "embed",
                "input": data,
                "output": f"s3://{bucket}/cli-out/",
                "id_field": "id",
            }
        )
    )
    submitted = barge("submit", str(spec_file), "--wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert "succeeded" in submitted.stderr and "records" in submitted.stderr
    assert len(read_jsonl(s3, bucket, "cli-out/part-00000.jsonl")) == 50

    status = barge("status", job_id, "--json", env=env)
    assert json.loads(status.stdout)["status"] == "succeeded"
    listing = barge("list", env=env)
    assert job_id in listing.stdout and "succeeded" in listing.stdout
    events = barge("events", job_id, env=env)
    assert "queued -> running" in events.stdout and "running -> succeeded" in events.stdout
    cancel = barge("cancel", job_id, env=env)
    assert cancel.returncode == 2 and "already succeeded" in cancel.stderr
    waited = barge("wait", job_id, env=env)
    assert waited.returncode == 0 and "succeeded" in waited.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "type": "inference",
                "model": minilm_uri,
                "task": "embed",
                "input": data,
                "output": f"s3://{bucket}/x/",
                "batch_size": 0,
            }
        )
    )
    refused = barge("submit", str(bad), env=env)
    assert refused.returncode == 2 and "batch_size" in refused.stderr
    assert "Traceback" not in refused.stderr

    no_api = barge(
        "status", job_id, env={**env, "BARGE_API_URL": f"http://127.0.0.1:{free_port()}"}
    )
    assert no_api.returncode == 2 and "cannot reach the Barge API" in no_api.stderr


def test_make_demo_runs_a_real_job_on_the_embedded_stack(tmp_path: Path) -> None:
    """What `make demo` runs, from an empty directory with no BARGE_ settings at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BARGE_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [*BARGE, "demo", "--records", "400", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stderr
    assert "400 embedded, 2 in errors/" in result.stdout
    parts = list(
        (tmp_path / ".barge" / "objects" / "barge" / "demo" / "outputs").rglob("part-*.jsonl")
    )
    rows = [
        json.loads(line)
        for p in parts
        if "errors" not in str(p)
        for line in p.read_text().splitlines()
    ]
    assert len(rows) == 400 and all(len(r["embedding"]) == 384 for r in rows)
