"""Metrics and views: the API's /metrics, a worker's metrics port and `barge top`, against real
services, real workers and the real MiniLM model."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import new_key
from tests.helpers import inference_spec, put_jsonl, wait_job, wait_until
from tests.services import ROOT, free_port, wait_port

pytestmark = pytest.mark.e2e
BARGE = [sys.executable, "-m", "cli"]


def parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum of the samples called ``name`` whose labels include ``labels``; None if none."""
    hits = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(hits) if hits else None


def rows(n: int, prefix: str) -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "text": f"{prefix} record number {i}"} for i in range(n)]


def test_api_metrics_after_an_embed_job(
    api: TestClient, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    lines: list[Any] = [*rows(60, "m"), '{"id": "bad", "text": "unterminated']
    spec = inference_spec(
        minilm_uri,
        put_jsonl(s3, bucket, "in/m.jsonl", lines),
        f"s3://{bucket}/out/",
        id_field="id",
        batch_size=16,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job

    r = api.get("/metrics")  # no key, like /healthz
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = parse(r.text)
    assert (value(samples, "barge_jobs", status="succeeded") or 0) >= 1
    assert value(samples, "barge_jobs", status="queued", type="inference") is not None  # zeros too
    assert (value(samples, "barge_records_total", outcome="succeeded") or 0) >= 60
    assert (value(samples, "barge_records_total", outcome="failed") or 0) >= 1
    assert (value(samples, "barge_shards", status="succeeded") or 0) >= 1
    assert value(samples, "barge_queue_depth", queue="gpu") is not None
    assert value(samples, "barge_queue_depth", queue="control") is not None
    assert value(samples, "barge_broker_up") == 1
    assert value(samples, "barge_database_up") == 1


def test_api_metrics_with_the_broker_down(settings: Any) -> None:
    from api.app import create_app

    down = settings.model_copy(
        update={
            "broker_url": f"amqp://guest:guest@127.0.0.1:{free_port()}//",
            "broker_timeout_seconds": 1.0,
        }
    )
    r = TestClient(create_app(down)).get("/metrics")
    assert r.status_code == 200, r.text
    samples = parse(r.text)
    assert value(samples, "barge_broker_up") == 0
    assert value(samples, "barge_queue_depth") is None
    assert value(samples, "barge_jobs") is not None  # the database figures are still there


def test_a_worker_serves_its_own_metrics(
    api: TestClient,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    barge_env: dict[str, str],
    make_worker: Any,
) -> None:
    port = free_port()
    make_worker(env={**os.environ, **barge_env, "BARGE_WORKER_METRICS_PORT": str(port)})
    wait_port(port, 60)  # pool child 0 serves on port + 0

    def scrape() -> list[Sample]:
        return parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)

    # Other workers of the session consume the same queues: run jobs of several shards until this
    # worker has run some of them.
    mine = {"model": minilm_uri, "task": "embed"}
    for attempt in range(3):
        spec = inference_spec(
            minilm_uri,
            put_jsonl(s3, bucket, f"in/w{attempt}.jsonl", rows(120, "w")),
            f"s3://{bucket}/w-out-{attempt}/",
            id_field="id",
            batch_size=8,
            shard_size=20,
        )
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        assert wait_job(api, auth, r.json()["id"])["status"] == "succeeded"
        samples = scrape()
        if value(samples, "barge_worker_records_total", **mine, outcome="succeeded"):
            break
    else:
        pytest.fail("the worker with the metrics port ran no shard of three 6-shard jobs")

    assert (value(samples, "barge_worker_records_total", **mine, outcome="succeeded") or 0) > 0
    assert (value(samples, "barge_worker_batch_seconds_count", **mine) or 0) > 0
    assert (value(samples, "barge_worker_batch_seconds_sum", **mine) or 0) > 0
    assert (
        value(samples, "barge_worker_shard_seconds_count", task="embed", status="succeeded") or 0
    ) > 0
    assert (value(samples, "barge_worker_model_load_seconds", model=minilm_uri) or 0) > 0


def test_a_taken_metrics_port_only_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from worker import metrics

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="worker.metrics"):
            metrics.serve(taken.getsockname()[1])
    assert "worker metrics not served" in caplog.text


def test_barge_top_shows_an_active_job_and_its_workers(
    api_url: str,
    api: TestClient,
    barge_env: dict[str, str],
    database_url: str,
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
) -> None:
    key = new_key(database_url, f"top-{uuid.uuid4().hex[:8]}")
    auth = {"Authorization": f"Bearer {key}"}
    env = {**os.environ, **barge_env, "BARGE_API_URL": api_url, "BARGE_API_KEY": key}
    spec = inference_spec(
        minilm_uri,
        put_jsonl(s3, bucket, "in/top.jsonl", rows(3000, "t")),
        f"s3://{bucket}/top-out/",
        id_field="id",
        batch_size=8,
        shard_size=1000,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    try:
        wait_until(
            lambda: api.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"][
                "records_succeeded"
            ],
            timeout=120,
            what="the job to make progress",
        )
        for _ in range(3):  # between two shards no worker holds one: look again
            top = subprocess.run(
                [*BARGE, "top", "--once"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert top.returncode == 0, top.stderr
            lines = top.stdout.splitlines()
            assert lines[0].startswith("barge top") and "1 running" in lines[0], top.stdout
            header = ["ID", "STATUS", "DONE/TOTAL", "FAILED", "REC/S", "ETA", "WORKERS"]
            assert lines[1].split() == header
            (row,) = [line for line in lines[2:] if line.startswith(job_id[:8])]
            assert row.split()[1] == "running"
            if row.split()[-1] != "-":
                break
        assert row.split()[-1] != "-", top.stdout  # the worker running its shard

        # The live view refreshes until Ctrl-C, which exits 0.
        live = subprocess.Popen(
            [*BARGE, "top", "--interval", "0.5"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert live.stdout is not None
        seen = 0
        for line in live.stdout:
            seen += line.startswith("barge top")
            if seen == 2:
                break
        live.send_signal(signal.SIGINT)
        assert live.wait(20) == 0, live.stderr.read() if live.stderr else ""
    finally:
        api.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        assert wait_job(api, auth, job_id)["status"] in ("cancelled", "succeeded")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_live_top_exits_0_on_a_signal_even_ignored_with_a_full_pipe(signum: int) -> None:
    """A shell's background job inherits SIGINT ignored (and so does whatever it starts, a test
    run included): the live view still stops on it, and on SIGTERM, at once and with status 0,
    though its stdout is a pipe nobody reads and the API is out of reach."""
    env = {**os.environ, "BARGE_API_URL": f"http://127.0.0.1:{free_port()}"}
    live = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *BARGE, "top", "--interval", "0.01"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert live.stdout is not None
        fd = live.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: full after a few refreshes

        def pending() -> int:
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]

        def full() -> bool:  # a refresh every 10 ms, and nothing more gets in
            before = pending()
            time.sleep(0.5)
            return before > 0 and pending() == before

        wait_until(full, timeout=60, what="the pipe to fill")
        live.send_signal(signum)
        assert live.wait(10) == 0, live.stderr.read() if live.stderr else ""
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
