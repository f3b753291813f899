"""Pause and resume on real worker processes and a real scheduler: a paused inference job
finishes the shard it was running, claims no other (the reconciler re-sends none), and once
resumed writes every record exactly once; a paused job can be cancelled; a paused fine-tune
checkpoints, frees its worker for other work, and once resumed ends with exactly the weights
of a run that never paused."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.faults.conftest import FAULT_SETTINGS, World, assert_exactly_once, dataset
from tests.helpers import (
    events,
    finetune_spec,
    inference_spec,
    put_jsonl,
    topic_examples,
    wait_until,
)

pytestmark = pytest.mark.faults

# Progress at every 0.1 s renewal, so that a shard is seen running before it ends.
FAST_PROGRESS = {"BARGE_HEARTBEAT_SECONDS": "0.1"}
# Long enough for the reconciler to have re-sent a paused job's shards, were it to: a lease
# (4 s) and a dispatch grace (2 s) past, with a pass every second.
RECONCILER_PASSES = float(FAULT_SETTINGS["BARGE_LEASE_SECONDS"]) + 3


def _post(world: World, path: str) -> dict[str, Any]:
    r = world.api.post(path, headers=world.auth)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _status(world: World, job_id: str, status: str, timeout: float = 120) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (j := world.job(job_id))["status"] == status and j,
        timeout=timeout,
        interval=0.1,
        what=f"job {job_id} to be {status}",
    )


def _paused_mid_job(world: World, s3: Any, bucket: str, minilm_uri: str) -> tuple[str, Any, list]:
    """A job of 6 shards on one worker, paused while a shard runs; (its id, the shard that
    was running at the pause, the input rows)."""
    data, rows = dataset(s3, bucket, 300)
    world.worker(**FAST_PROGRESS)
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=50
        )
    )
    running = wait_until(
        lambda: next((s for s in world.shards(job_id) if s.status == "running"), None),
        timeout=120,
        interval=0.05,
        what="a shard to be running",
    )
    assert _post(world, f"/v1/jobs/{job_id}/pause")["status"] in ("pausing", "paused")
    return job_id, running, rows


def test_a_paused_job_finishes_its_running_shard_claims_no_other_and_resumes(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    job_id, running, rows = _paused_mid_job(world, s3, bucket, minilm_uri)
    job = _status(world, job_id, "paused")
    assert job["waiting"] == "paused: resume it to go on"
    shards = world.shards(job_id)
    by_id = {s.id: s for s in shards}
    assert by_id[running.id].status == "succeeded"  # the running shard finished, not cancelled
    assert not [s for s in shards if s.status in ("running", "cancelled", "failed")]
    pending = [s for s in shards if s.status == "pending"]
    assert len(pending) >= 4, [s.status for s in shards]

    # Paused: the worker claims none of its shards, and the reconciler sends none again.
    time.sleep(RECONCILER_PASSES)
    later = world.shards(job_id)
    assert [(s.status, s.attempt) for s in later] == [(s.status, s.attempt) for s in shards]
    assert world.job(job_id)["status"] == "paused"

    assert _post(world, f"/v1/jobs/{job_id}/resume")["status"] == "running"
    job = world.wait_final(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)
    assert all(s.attempt == 1 for s in world.shards(job_id))  # none ran twice
    moves = [
        (e["from_status"], e["to_status"])
        for e in events(world.api, world.auth, job_id)
        if e["kind"] == "status"
    ]
    assert moves == [
        ("queued", "running"),
        ("running", "pausing"),
        ("pausing", "paused"),
        ("paused", "running"),
        ("running", "succeeded"),
    ]


def test_a_paused_job_can_be_cancelled(world: World, s3: Any, bucket: str, minilm_uri: str) -> None:
    job_id, _running, _rows = _paused_mid_job(world, s3, bucket, minilm_uri)
    _status(world, job_id, "paused")
    done = {s.index for s in world.shards(job_id) if s.status == "succeeded"}
    assert _post(world, f"/v1/jobs/{job_id}/cancel")["status"] == "cancelling"
    job = world.wait_final(job_id)
    assert job["status"] == "cancelled", job
    shards = world.shards(job_id)
    assert {s.index for s in shards if s.status == "succeeded"} == done
    assert all(s.status == "cancelled" for s in shards if s.index not in done)
    r = world.api.post(f"/v1/jobs/{job_id}/resume", headers=world.auth)
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "status"


def _weights(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    from safetensors.torch import load

    body = s3.get_object(Bucket=bucket, Key=f"{prefix}model/model.safetensors")["Body"].read()
    return load(body)


def test_a_paused_fine_tune_frees_its_worker_and_ends_with_the_weights_of_an_unpaused_run(
    world: World, s3: Any, bucket: str, encoder_uri: str, minilm_uri: str
) -> None:
    import torch

    train = put_jsonl(s3, bucket, "pause/train.jsonl", topic_examples(96, seed=1))
    hp = {"epochs": 16, "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.1, "seed": 3}

    def spec(name: str) -> dict[str, Any]:
        return finetune_spec(
            encoder_uri,
            train,
            name,
            hyperparameters=hp,
            output=f"s3://{bucket}/{name}/",
            log_every_steps=1,
        )

    world.worker()  # one worker process: the paused fine-tune must give it back
    world.start_scheduler()
    reference = world.submit(spec("reference"))
    assert world.wait_final(reference, timeout=600)["status"] == "succeeded"

    job_id = world.submit(spec("paused"))
    wait_until(
        lambda: [e for e in events(world.api, world.auth, job_id) if e["kind"] == "train"],
        timeout=300,
        interval=0.05,
        what="a first train event",
    )
    # Mid-training, whatever the machine's pace: the training process is frozen while the pause
    # is asked (well within its lease), and sees it at its next step.
    [unit] = world.shards(job_id)
    child = int(unit.worker.rsplit(":", 1)[1])
    os.kill(child, signal.SIGSTOP)
    try:
        assert _post(world, f"/v1/jobs/{job_id}/pause")["status"] == "pausing"
    finally:
        os.kill(child, signal.SIGCONT)
    paused = _status(world, job_id, "paused", timeout=300)
    [pause] = [e for e in events(world.api, world.auth, job_id) if e["kind"] == "paused"]
    step = pause["data"]["step"]
    total = 16 * 6  # epochs times steps per epoch (96 examples in batches of 16)
    assert 0 < step < total and paused["progress"]["steps_done"] == step
    [unit] = world.shards(job_id)
    assert (unit.status, unit.lease_expires_at, unit.handoffs) == ("pending", None, 1)

    # The worker is free: another job runs to its end while the fine-tune stays paused.
    data, rows = dataset(s3, bucket, 50, key="other.jsonl")
    other = world.submit(inference_spec(minilm_uri, data, f"s3://{bucket}/other/", id_field="id"))
    assert world.wait_final(other, timeout=600)["status"] == "succeeded"
    assert_exactly_once(s3, bucket, "other", rows)
    assert world.job(job_id)["status"] == "paused"
    assert world.shards(job_id)[0].status == "pending"

    assert _post(world, f"/v1/jobs/{job_id}/resume")["status"] == "running"
    job = world.wait_final(job_id, timeout=600)
    assert job["status"] == "succeeded", job
    assert job["progress"]["steps_done"] == total
    found = events(world.api, world.auth, job_id)
    kinds = [e["kind"] for e in found]
    assert kinds.count("training_started") == 1  # the resume went on, never from step 0
    [resumed] = [e for e in found if e["kind"] == "resumed"]
    assert resumed["data"]["step"] == step

    ours, theirs = _weights(s3, bucket, "paused/"), _weights(s3, bucket, "reference/")
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():  # bit for bit: fp32 on CPU
        assert torch.equal(tensor, theirs[name]), name
