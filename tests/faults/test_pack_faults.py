"""Packed shards (many small objects read as one shard) under faults: a worker killed mid-pack
and restarted leaves every record of every object exactly once in the outputs or the errors; a
packed shard that kills its worker past its attempts is retried as exactly its unfinished
records."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from tests.faults.conftest import World, kill_shard_until_it_fails
from tests.helpers import inference_spec, put_jsonl, read_jsonl, wait_until

pytestmark = pytest.mark.faults

OBJECTS = 90
PER_OBJECT = 10
FAST_PROGRESS = {"BARGE_HEARTBEAT_SECONDS": "0.1"}


def _prefix(s3: Any, bucket: str) -> tuple[list[str], list[tuple[str, int]]]:
    """OBJECTS objects of PER_OBJECT records (every seventh with a bad line 3): the good ids
    in input order and the (object, line) of each bad record."""
    ids: list[str] = []
    bad: list[tuple[str, int]] = []
    for i in range(OBJECTS):
        rows: list[Any] = []
        for j in range(PER_OBJECT):
            if i % 7 == 3 and j == 2:
                rows.append('{"id": "broken')
                bad.append((f"s3://{bucket}/in/o-{i:03d}.jsonl", 3))
            else:
                rows.append({"id": f"{i}-{j}", "text": f"packed fault record {i} {j} " * 4})
                ids.append(f"{i}-{j}")
        put_jsonl(s3, bucket, f"in/o-{i:03d}.jsonl", rows)
    return ids, bad


def _manifest(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}_manifest.json")["Body"].read()
    return json.loads(body)  # type: ignore[no-any-return]


def _exactly_once(
    s3: Any, bucket: str, prefix: str, ids: list[str], bad: list[tuple[str, int]]
) -> dict[str, Any]:
    m = _manifest(s3, bucket, prefix)
    out = [r["id"] for p in m["parts"] for r in read_jsonl(s3, bucket, p["key"])]
    errors = [e for p in m["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert out == ids, "outputs are not exactly the good records, in order"
    assert sorted((e["source"], e["line"]) for e in errors) == sorted(bad)
    assert m["records"]["succeeded"] == len(ids) and m["records"]["failed"] == len(bad)
    return m


def _spec(minilm_uri: str, bucket: str) -> dict[str, Any]:
    return inference_spec(
        minilm_uri,
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        id_field="id",
        batch_size=8,
        shard_size=300,
        max_failed_ratio=0.5,
    )


def test_sigkill_of_the_whole_worker_mid_pack_then_restart(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    ids, bad = _prefix(s3, bucket)
    worker = world.worker(**FAST_PROGRESS)
    world.start_scheduler()
    job_id = world.submit(_spec(minilm_uri, bucket))
    shard = wait_until(
        lambda: next(
            (
                s
                for s in world.shards(job_id)
                if s.status == "running" and s.records_succeeded > 0 and s.pack_objects
            ),
            None,
        ),
        timeout=120,
        interval=0.1,
        what="a packed shard to be running with progress",
    )
    assert shard.pack_objects == 30 and shard.input_format == "pack"
    os.killpg(worker.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    worker.proc.wait(10)  # type: ignore[union-attr]
    time.sleep(1)
    world.worker()
    job = world.wait_final(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    m = _exactly_once(s3, bucket, "out/", ids, bad)
    assert [p["packed"]["objects"] for p in m["parts"]] == [30, 30, 30]
    killed = next(s for s in world.shards(job_id) if s.id == shard.id)
    assert killed.attempt >= 2  # it was run again after the kill


def test_a_packed_shard_killed_past_its_attempts_is_retried_as_its_records(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    ids, bad = _prefix(s3, bucket)
    world.worker()
    world.start_scheduler()
    job_id = world.submit(_spec(minilm_uri, bucket))
    assert kill_shard_until_it_fails(world, job_id, 1) == 3
    parent = world.wait_final(job_id, timeout=120)
    assert parent["status"] == "failed" and "gave up after 3 attempts" in parent["error"]
    assert "30 objects" in parent["error"]  # the pack named by its objects, not its listing

    r = world.api.post(f"/v1/jobs/{job_id}/retry", json={}, headers=world.auth)
    assert r.status_code == 201, r.text
    child = world.wait_final(r.json()["id"], timeout=300)
    assert child["status"] == "succeeded", child
    first, retried = _manifest(s3, bucket, "out/"), _manifest(s3, bucket, "out/retry-1/")
    done = [
        row["id"]
        for m in (first, retried)
        for p in m["parts"]
        for row in read_jsonl(s3, bucket, p["key"])
    ]
    assert sorted(done) == sorted(ids) and len(done) == len(set(done)), "each good record once"
    # the retry ran the records of the packs that did not succeed (read again from their
    # objects) and the bad records of those that did (found by object and line): exactly
    # what the job left unfinished, the bad ones failing again
    assert retried["records"]["total"] == len(ids) + len(bad) - first["records"]["succeeded"]
    assert retried["records"]["total"] >= 30 * PER_OBJECT  # the middle pack at least
    errors = [e for p in retried["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert len(errors) == retried["records"]["failed"] == len(bad)
