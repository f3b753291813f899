"""`barge flower`: a real Flower process behind basic auth watching a real worker run a job."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import inference_spec, put_jsonl, wait_job, wait_until
from tests.services import ROOT, WorkerProcess, free_port

pytestmark = pytest.mark.e2e

USER = "admin"


@dataclass
class Flower:
    url: str
    password: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.url + path, auth=auth, timeout=10)

    def api(self, path: str) -> Any:
        r = self.get(path, auth=(USER, self.password))
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def flower_env(barge_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BARGE_FLOWER_", "FLOWER_"))}
    return {**env, **barge_env, **extra}


@pytest.fixture(scope="module")
def flower(barge_env: dict[str, str], tmp_root: Path, worker: WorkerProcess) -> Iterator[Flower]:
    port = free_port()
    log = tmp_root / "flower.log"
    password = secrets.token_urlsafe(16)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "flower",
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=flower_env(barge_env, BARGE_FLOWER_PASSWORD=password),
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    flower = Flower(f"http://127.0.0.1:{port}", password, proc, log)

    def sees_worker() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"flower exited with {proc.returncode}:\n{flower.tail()}")
        try:
            # Workers known from their events: once ours is there, Flower receives events.
            alive = flower.api("/api/workers?status=1")
        except httpx.HTTPError:
            return False
        return any(worker.name in name and up for name, up in alive.items())

    try:
        wait_until(sees_worker, timeout=90, interval=0.5, what="Flower to see the worker")
        yield flower
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_flower_shows_the_worker_and_the_jobs_tasks(
    flower: Flower,
    worker: WorkerProcess,
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
) -> None:
    rows = [{"id": f"r{i}", "text": f"flower record {i}"} for i in range(20)]
    input_uri = put_jsonl(s3, bucket, "in/data.jsonl", rows)
    spec = inference_spec(
        minilm_uri, input_uri, f"s3://{bucket}/out/", id_field="id", shard_size=10
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_job(api, auth, job_id)
    assert job["status"] == "succeeded", job
    shards = job["progress"]["shards_total"]
    assert shards == 2

    workers = flower.api("/api/workers?refresh=1")  # asks the workers over the broker
    ours = sorted(name for name in workers if worker.name in name)
    # `barge worker` runs two Celery workers: NAME-control@host and NAME-gpu@host
    assert [n.split("@")[0] for n in ours] == [f"{worker.name}-control", f"{worker.name}-gpu"], ours
    assert all("barge.run_shard" in workers[name]["registered"] for name in ours)

    def job_tasks_done() -> dict[str, list[dict[str, Any]]] | None:
        by_name: dict[str, list[dict[str, Any]]] = {}
        for task in flower.api("/api/tasks").values():
            if job_id in (task.get("args") or ""):
                by_name.setdefault(task["name"], []).append(task)
        run = by_name.get("barge.run_shard", [])
        every = [t for tasks in by_name.values() for t in tasks]
        if (
            by_name.get("barge.plan_job")
            and by_name.get("barge.finalize_job")
            and len(run) >= shards
            and all(t["state"] == "SUCCESS" for t in every)
        ):
            return by_name
        return None

    # Flower learns about tasks from events, asynchronously: give it a little time.
    by_name = wait_until(job_tasks_done, timeout=30, interval=0.5, what="the job's tasks in Flower")
    assert len(by_name["barge.plan_job"]) == 1
    shard_indexes = sorted(
        t["args"].rsplit(",", 1)[-1].strip(" ])") for t in by_name["barge.run_shard"]
    )
    assert shard_indexes == ["0", "1"], by_name["barge.run_shard"]
    for name, tasks in by_name.items():
        kind = "gpu" if name == "barge.run_shard" else "control"  # shards never on control
        for task in tasks:
            assert f"{worker.name}-{kind}@" in (task.get("worker") or ""), task


def test_flower_refuses_requests_without_the_right_credentials(flower: Flower) -> None:
    for path in ("/", "/workers", "/api/workers", "/api/tasks", "/api/task/types"):
        assert flower.get(path).status_code == 401, path
        assert flower.get(path, auth=(USER, "wrong-password")).status_code == 401, path
        assert flower.get(path, auth=("someone", flower.password)).status_code == 401, path
    assert flower.get("/api/workers", auth=(USER, flower.password)).status_code == 200


def test_flower_metrics_and_healthcheck_need_the_credentials_too(flower: Flower) -> None:
    """Flower 2 serves /metrics (every worker host and task type) and /healthcheck to anyone;
    `barge flower` puts them behind the same basic auth as every other page."""
    for path in ("/metrics", "/healthcheck"):
        assert flower.get(path).status_code == 401, path
        assert flower.get(path, auth=(USER, "wrong-password")).status_code == 401, path
    metrics = flower.get("/metrics", auth=(USER, flower.password))
    assert metrics.status_code == 200, metrics.text
    assert "flower_events_total" in metrics.text or "flower_" in metrics.text
    health = flower.get("/healthcheck", auth=(USER, flower.password))
    assert (health.status_code, health.text) == (200, "OK")


def test_flower_password_is_not_on_the_command_line(flower: Flower) -> None:
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().decode()
    assert "flower" in cmdline
    assert flower.password not in cmdline


def test_flower_refuses_to_start_without_a_password(barge_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "flower", "--port", str(free_port())],
        env=flower_env(barge_env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert "BARGE_FLOWER_PASSWORD" in done.stderr
