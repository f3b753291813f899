"""A job's energy on an NVIDIA GPU, end to end: a real job on the real worker, its usage read
back through GET /v1/jobs/{id}. Its joules are measured (not null), above zero, and below the
GPU's power limit times the job's GPU-seconds. Skipped without a GPU and NVML (bench/gpu_check.sh
runs it on one, where a missing GPU fails instead)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers import inference_spec, put_jsonl, wait_job
from tests.unit.test_usage import needs_gpu, nvml_gpu

pytestmark = [pytest.mark.e2e, needs_gpu]


def test_a_jobs_energy_is_measured_and_below_the_power_limit_times_its_gpu_seconds(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    found = nvml_gpu()
    assert found is not None, "no NVIDIA GPU with NVML here"
    counters, gpu = found
    texts = [
        {"id": i, "text": f"barge number {i} carries cargo down the river"} for i in range(4000)
    ]
    data = put_jsonl(s3, bucket, "energy/in.jsonl", texts)
    spec = inference_spec(minilm_uri, data, f"s3://{bucket}/energy-{uuid.uuid4().hex[:6]}/")
    answer = api.post("/v1/jobs", json=spec, headers=auth)
    assert answer.status_code == 201, answer.text

    job = wait_job(api, auth, answer.json()["id"])
    assert job["status"] == "succeeded", job

    used = job["resources"]
    limit = counters.power_limit_watts(gpu)
    assert used["gpu_seconds"] > 0 and limit is not None, used
    assert used["energy_joules"] is not None and used["energy_joules"] > 0, used
    assert used["energy_joules"] < limit * used["gpu_seconds"], (used, limit)
    assert all(d["energy_joules"] is not None for d in used["devices"]), used
