"""A job is never stuck in planning: an input no retry can read fails the job once, and a planning
run that keeps crashing (an exception, or its process killed) fails the job after
BARGE_MAX_ATTEMPTS runs instead of being re-sent by the reconciler forever.

These tests run in a world of their own (database, RabbitMQ vhost, workers and a real scheduler
with a 1 s reconcile period and a 2 s dispatch grace), so the session's shared worker never takes
their planning."""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from tests.faults.conftest import FAULT_SETTINGS, World
from tests.helpers import events, inference_spec, wait_until

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = int(FAULT_SETTINGS["BARGE_MAX_ATTEMPTS"])  # 3, the default
RECONCILE_PERIODS = 2 * float(FAULT_SETTINGS["BARGE_DISPATCH_GRACE_SECONDS"]) + 1


def _jsonl_gz(n: int) -> bytes:
    return gzip.compress(
        "".join(
            json.dumps({"id": f"r{i}", "text": f"record {i} of a gzip input"}) + "\n"
            for i in range(n)
        ).encode()
    )


def _plan_attempts(world: World, job_id: str) -> int:
    from db.session import session_scope

    with session_scope(world.database_url) as session:
        return int(
            session.execute(
                text("SELECT plan_attempts FROM jobs WHERE id = :id"), {"id": uuid.UUID(job_id)}
            ).scalar_one()
        )


def _failed_once(world: World, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's final state, after checking it stays failed, with one ``failed`` transition and
    no new event, over two more grace periods of the reconciler."""
    job = world.wait_final(job_id, timeout=120)
    assert job["status"] == "failed", job
    before = events(world.api, world.auth, job_id)
    time.sleep(RECONCILE_PERIODS)
    after = events(world.api, world.auth, job_id)
    assert after == before, "the reconciler kept working on a failed job"
    assert world.job(job_id)["status"] == "failed"
    failures = [e for e in after if e["to_status"] == "failed"]
    assert len(failures) == 1, after
    return job, after


def _plan_errors(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["kind"] == "plan_error"]


def test_a_truncated_gzip_input_fails_the_job_once(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    body = _jsonl_gz(5000)
    s3.put_object(Bucket=bucket, Key="in/cut.jsonl.gz", Body=body[: len(body) // 2])
    world.worker()
    world.start_scheduler()
    # the first records decompress: the submit's peek accepts it, planning reads to the cut
    job_id = world.submit(
        inference_spec(minilm_uri, f"s3://{bucket}/in/cut.jsonl.gz", f"s3://{bucket}/out/")
    )
    job, evs = _failed_once(world, job_id)
    assert f"invalid gzip data in s3://{bucket}/in/cut.jsonl.gz" in job["error"], job["error"]
    assert job["error"].startswith("planning failed: "), job["error"]
    assert _plan_errors(evs) == []  # refused at once: no retry can read it
    assert _plan_attempts(world, job_id) == 1
    assert job["progress"]["shards_total"] is None


def test_a_gzip_corrupt_in_its_first_block_is_refused_at_submit(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    good = _jsonl_gz(100)
    corrupt = good[:10] + b"\xff" * 64 + good[74:]  # a valid header, then an invalid block
    s3.put_object(Bucket=bucket, Key="in/bad.jsonl.gz", Body=corrupt)
    r = world.api.post(
        "/v1/jobs",
        json=inference_spec(minilm_uri, f"s3://{bucket}/in/bad.jsonl.gz", f"s3://{bucket}/out/"),
        headers=world.auth,
    )
    assert r.status_code == 422, r.text
    assert r.json().get("field") == "input", r.text
    assert "invalid gzip data" in r.json()["message"], r.text


def test_a_corrupt_gzip_behind_a_good_first_object_fails_the_job_once(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    # The submit peeks at the first object of a prefix only; planning reads every object.
    good = _jsonl_gz(100)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl.gz", Body=good)
    s3.put_object(Bucket=bucket, Key="in/b.jsonl.gz", Body=good[:10] + b"\xff" * 64 + good[74:])
    world.worker()
    world.start_scheduler()
    job_id = world.submit(inference_spec(minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/"))
    job, evs = _failed_once(world, job_id)
    assert f"invalid gzip data in s3://{bucket}/in/b.jsonl.gz" in job["error"], job["error"]
    assert _plan_errors(evs) == []
    assert _plan_attempts(world, job_id) == 1


def test_a_planning_run_that_keeps_raising_fails_the_job_after_max_attempts(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    # The shards table is locked while this test runs and the worker's database session gives up
    # on a lock after 0.3 s: every planning run reads its input, then fails to write its shards
    # with a database error (not a BargeError), which no run of its own can get past.
    from db.session import get_engine

    s3.put_object(Bucket=bucket, Key="in/a.jsonl.gz", Body=_jsonl_gz(50))
    url = world.database_url + "?options=-c%20lock_timeout%3D300"
    world.worker(BARGE_DATABASE_URL=url)
    world.start_scheduler()
    with get_engine(world.database_url).connect() as conn:
        conn.execute(text("LOCK TABLE shards IN EXCLUSIVE MODE"))  # reads pass, writes wait
        job_id = world.submit(
            inference_spec(minilm_uri, f"s3://{bucket}/in/a.jsonl.gz", f"s3://{bucket}/out/")
        )
        started = time.monotonic()
        job = wait_until(
            lambda: (j := world.job(job_id))["status"] != "queued" and j,
            timeout=120,
            what="the job to leave queued",
        )
        took = time.monotonic() - started
        conn.rollback()
    assert job["status"] == "failed", job
    job, evs = _failed_once(world, job_id)
    assert job["error"].startswith(
        f"planning failed after {MAX_ATTEMPTS} attempts; last error: OperationalError: "
    ), job["error"]
    assert "lock timeout" in job["error"], job["error"]
    errors = _plan_errors(evs)
    assert [e["data"]["attempt"] for e in errors] == list(range(1, MAX_ATTEMPTS + 1)), errors
    assert all("lock timeout" in e["message"] for e in errors), errors
    assert _plan_attempts(world, job_id) == MAX_ATTEMPTS
    # each run after the first waited for the reconciler's grace period (2 s) to be re-sent
    print(f"\nfailed after {MAX_ATTEMPTS} planning runs in {took:.1f}s")


def test_a_planning_run_that_kills_its_worker_every_time_fails_the_job_after_max_attempts(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    # A plain JSONL of 2M records (39 MB) takes seconds to plan (it is read to its end to count
    # them); each time a planning run has started, its pool child is SIGKILLed (as the OOM killer
    # would). The message is redelivered (task_reject_on_worker_lost) and re-sent by the
    # reconciler; without the count this would go on forever.
    body = b"".join(b'{"text":"r%d"}\n' % i for i in range(2_000_000))
    s3.put_object(Bucket=bucket, Key="in/big.jsonl", Body=body)
    worker = world.worker()
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, f"s3://{bucket}/in/big.jsonl", f"s3://{bucket}/out/", shard_size=1_000_000
        )
    )
    kills: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and world.job(job_id)["status"] == "queued":
        attempts = _plan_attempts(world, job_id)
        if attempts and attempts not in kills:
            for child in worker.pool_pids():  # the planning process among them
                os.kill(child, signal.SIGKILL)
            kills.append(attempts)
        time.sleep(0.02)
    job, evs = _failed_once(world, job_id)
    # Every attempt the test saw start was killed, the last one MAX_ATTEMPTS. A redelivered
    # message and the reconciler's re-send can start two attempts within one poll (the second
    # run of a job's plan is dropped at commit if the first wins): then one number is skipped.
    assert kills == sorted(set(kills)) and kills[0] == 1 and kills[-1] == MAX_ATTEMPTS, kills
    assert job["error"] == (
        f"planning failed after {MAX_ATTEMPTS} attempts; last error: attempt {MAX_ATTEMPTS} "
        "ended without an error: its process died (killed or out of memory?)"
    ), job["error"]
    assert _plan_errors(evs) == []
    assert _plan_attempts(world, job_id) == MAX_ATTEMPTS
    assert worker.proc.poll() is None  # type: ignore[union-attr]  # only its children died
