"""An OpenAI batch whose worker is SIGKILLed mid-batch: every custom_id ends up exactly once
across the batch's output and error files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.faults.conftest import World
from tests.services import ROOT, WorkerProcess, free_port, wait_port

pytestmark = pytest.mark.faults


WINDOW_SECONDS = 30  # the completion window of the expiry test's API


@pytest.fixture
def openai_url(world: World, s3: Any, minilm_uri: str) -> Iterator[str]:
    """A real `barge api` process in the fault world, with an alias for MiniLM."""
    yield from _api(world, s3, minilm_uri)


@pytest.fixture
def short_window_url(world: World, s3: Any, minilm_uri: str) -> Iterator[str]:
    """The same, with a completion window of WINDOW_SECONDS."""
    yield from _api(world, s3, minilm_uri, BARGE_OPENAI_BATCH_WINDOW_SECONDS=str(WINDOW_SECONDS))


def _api(world: World, s3: Any, minilm_uri: str, **extra: str) -> Iterator[str]:
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket="barge")
    port = free_port()
    env = {
        **world.env,
        "BARGE_OPENAI_MODEL_ALIASES": json.dumps({"embed-small": minilm_uri}),
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=(world.tmp / "api-openai.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, 60)
    yield f"http://127.0.0.1:{port}/openai/v1"
    proc.terminate()
    proc.wait(10)


def _key(world: World) -> str:
    return world.auth["Authorization"].removeprefix("Bearer ")


def test_a_worker_killed_mid_batch_leaves_every_custom_id_exactly_once(
    world: World, openai_url: str
) -> None:
    client = openai.OpenAI(base_url=openai_url, api_key=_key(world), max_retries=2)
    rows = []
    for i in range(1500):
        body: dict[str, Any] = {"model": "embed-small", "input": f"record {i} " + "word " * (i % 9)}
        if i % 250 == 7:
            body["input"] = {"not": "text"}  # fails alone: an error-file line
        rows.append(
            {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
        )
    content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    source = client.files.create(file=("in.jsonl", content), purpose="batch")
    first = world.worker()
    world.start_scheduler()
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while client.batches.retrieve(batch.id).request_counts.completed < 64:
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.1)
    assert first.proc is not None
    assert client.batches.retrieve(batch.id).status == "in_progress"  # mid-batch
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    world.worker()

    deadline = time.monotonic() + 300
    while (done := client.batches.retrieve(batch.id)).status not in (
        "completed",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    assert done.status == "completed", done
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    seen = [line["custom_id"] for line in out + err]
    assert len(seen) == len(set(seen)) == 1500
    assert {line["custom_id"] for line in err} == {f"r-{i}" for i in range(7, 1500, 250)}
    assert (done.request_counts.completed, done.request_counts.failed) == (1494, 6)


def test_a_batch_past_its_window_expires_keeping_what_finished(
    world: World, short_window_url: str
) -> None:
    """15 shards of 100 requests; the GPU worker is SIGKILLed after some finished and none
    replaces it. When the window ends the batch expires: what finished is in the output file,
    every other request is an error-file line with code batch_expired, each exactly once."""
    client = openai.OpenAI(base_url=short_window_url, api_key=_key(world), max_retries=2)
    rows = [
        {
            "custom_id": f"r-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed-small", "input": f"record {i} of a batch that expires"},
        }
        for i in range(1500)
    ]
    content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    source = client.files.create(file=("in.jsonl", content), purpose="batch")
    first = world.worker(BARGE_SHARD_RECORDS="100")
    world.start_scheduler()
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.expires_at - batch.created_at == WINDOW_SECONDS
    deadline = time.monotonic() + WINDOW_SECONDS
    while client.batches.retrieve(batch.id).request_counts.completed < 200:
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.1)
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # no GPU worker from here on
    first.proc.wait(10)
    control = WorkerProcess(
        {**world.env, "BARGE_SHARD_RECORDS": "100"},
        world.tmp / "worker-control-only.log",
        queues="control",
    )
    world.workers.append(control.start())

    deadline = time.monotonic() + WINDOW_SECONDS + 120
    while (done := client.batches.retrieve(batch.id)).status != "expired":
        assert done.status in ("in_progress", "finalizing"), done
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    assert done.expired_at is not None and done.expired_at >= batch.expires_at
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    seen = [line["custom_id"] for line in out + err]
    assert len(seen) == len(set(seen)) == 1500
    assert 200 <= len(out) < 1500
    assert all(line["error"]["code"] == "batch_expired" for line in err)
    assert all(line["response"] is None for line in err)
    assert all(line["response"]["status_code"] == 200 for line in out)
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))


def test_a_batch_whose_requests_all_finished_in_its_window_completes_though_finalized_after(
    world: World, short_window_url: str
) -> None:
    """Every request of the batch finishes inside its window, but the control worker that
    finalizes is down until the window has ended and the reconciler's expiry pass has run:
    the batch is completed (its job is not cancelled), not expired."""
    from db.base import utcnow
    from db.session import session_scope
    from services.openai_batches import expire_due
    from services.unit_of_work import UnitOfWork

    client = openai.OpenAI(base_url=short_window_url, api_key=_key(world), max_retries=2)
    gpu = _worker(world, "gpu")
    assert gpu.proc is not None
    os.killpg(gpu.proc.pid, signal.SIGSTOP)  # started, but runs nothing until the job is planned
    control = _worker(world, "control")  # plans the job
    rows = [
        {
            "custom_id": f"r-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed-small", "input": f"record {i}"},
        }
        for i in range(40)
    ]
    content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    source = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    while client.batches.retrieve(batch.id).status == "validating":
        time.sleep(0.1)
    # The finalize the last shard sends waits for the next control worker. A warm shutdown of
    # the worker itself (not its process group: SIGTERM would also end the pool child between
    # the plan's commit and its sends) lets the plan task send the shard's message first.
    assert control.proc is not None
    os.kill(control.proc.pid, signal.SIGTERM)
    control.proc.wait(60)
    os.killpg(gpu.proc.pid, signal.SIGCONT)
    while (now := client.batches.retrieve(batch.id)).request_counts.completed < 40:
        assert now.status == "in_progress", now
        time.sleep(0.1)
    assert time.time() < batch.expires_at, "the requests must finish inside the window"
    assert client.batches.retrieve(batch.id).status == "finalizing"

    while time.time() <= batch.expires_at + 1:
        time.sleep(0.2)
    with session_scope(world.database_url) as session:  # the reconciler's expiry pass
        assert expire_due(UnitOfWork(session), utcnow()) == 0
    _worker(world, "control")
    deadline = time.monotonic() + 60
    while (done := client.batches.retrieve(batch.id)).status == "finalizing":
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    assert done.status == "completed", done
    assert done.completed_at and done.expired_at is None and done.error_file_id is None
    assert (done.request_counts.completed, done.request_counts.failed) == (40, 0)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in out) == sorted(r["custom_id"] for r in rows)


def _worker(world: World, queues: str) -> WorkerProcess:
    """A worker of the world on ``queues`` only."""
    log = world.tmp / f"worker-{queues}-{len(world.workers)}.log"
    proc = WorkerProcess(dict(world.env), log, queues=queues).start()
    world.workers.append(proc)
    return proc


def _requests(client: Any, n: int) -> Any:
    rows = [
        {
            "custom_id": f"r-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed-small", "input": f"record {i} of a batch that is cancelled"},
        }
        for i in range(n)
    ]
    content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    return client.files.create(file=("in.jsonl", content), purpose="batch")


def _wait_status(client: Any, batch_id: str, status: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while (done := client.batches.retrieve(batch_id)).status != status:
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    return done


def _lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_a_batch_cancelled_mid_run_lists_every_request_it_never_ran(
    world: World, openai_url: str
) -> None:
    """15 shards of 100 requests; the GPU worker is SIGKILLed after some finished and none
    replaces it; the batch is cancelled. What finished is in the output file, every other
    request an error-file line with code batch_cancelled: each custom_id exactly once, and the
    request counts agree with the files."""
    client = openai.OpenAI(base_url=openai_url, api_key=_key(world), max_retries=2)
    source = _requests(client, 1500)
    first = world.worker(BARGE_SHARD_RECORDS="100")
    world.start_scheduler()
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while client.batches.retrieve(batch.id).request_counts.completed < 200:
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.1)
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # no GPU worker from here on
    first.proc.wait(10)
    _worker(world, "control")
    assert client.batches.cancel(batch.id).status == "cancelling"

    done = _wait_status(client, batch.id, "cancelled")
    out, err = _lines(client, done.output_file_id), _lines(client, done.error_file_id)
    seen = [line["custom_id"] for line in out + err]
    assert len(seen) == len(set(seen)) == 1500
    assert 0 < len(out) < 1500  # the killed shard's progress was never written
    assert all(line["error"]["code"] == "batch_cancelled" for line in err)
    assert all(line["response"] is None for line in err)
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))
    assert done.request_counts.total == 1500

    # Barge's extension: a new batch over the requests the cancelled one never ran.
    world.worker()
    auth = {"Authorization": f"Bearer {_key(world)}"}
    r = httpx.post(f"{openai_url}/batches/{batch.id}/retry", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    retried = r.json()
    assert retried["barge"]["retry_of"] == batch.id
    assert retried["request_counts"]["total"] == len(err)
    again = _wait_status(client, retried["id"], "completed", timeout=300)
    more = _lines(client, again.output_file_id)
    assert sorted(x["custom_id"] for x in out + more) == sorted(f"r-{i}" for i in range(1500))
    parent = httpx.get(f"{openai_url}/batches/{batch.id}", headers=auth, timeout=30).json()
    assert parent["barge"]["retries"] == [retried["id"]]


def test_a_batch_cancelled_before_it_was_planned_lists_all_its_requests(
    world: World, openai_url: str
) -> None:
    """No worker runs while the batch is created and cancelled; the control worker that
    starts afterwards finalizes it: every request is an error-file line (batch_cancelled)."""
    client = openai.OpenAI(base_url=openai_url, api_key=_key(world), max_retries=2)
    source = _requests(client, 30)
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert client.batches.cancel(batch.id).status == "cancelling"
    _worker(world, "control")
    done = _wait_status(client, batch.id, "cancelled")
    assert done.output_file_id is None
    err = _lines(client, done.error_file_id)
    assert [line["custom_id"] for line in err] == [f"r-{i}" for i in range(30)]
    assert {line["error"]["code"] for line in err} == {"batch_cancelled"}
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 30)
