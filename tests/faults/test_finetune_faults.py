"""A fine-tune survives its worker being SIGKILLed and its work being cut into time slices: it
resumes from the newest checkpoint, not step 0, and ends with the same weights as a run that
never stopped."""

from __future__ import annotations

import os
import signal
from typing import Any

from tests.faults.conftest import World
from tests.helpers import finetune_spec, put_jsonl, topic_examples, wait_until


def _weights(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    from safetensors.torch import load

    body = s3.get_object(Bucket=bucket, Key=f"{prefix}model/model.safetensors")["Body"].read()
    return load(body)


def test_sigkill_mid_training_resumes_from_the_checkpoint_with_the_same_final_weights(
    world: World, s3: Any, bucket: str, encoder_uri: str
) -> None:
    import torch

    train = put_jsonl(s3, bucket, "kill/train.jsonl", topic_examples(240, seed=1))
    hp = {"epochs": 16, "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.1, "seed": 3}

    def spec(name: str) -> dict[str, Any]:
        return finetune_spec(
            encoder_uri,
            train,
            name,
            hyperparameters=hp,
            output=f"s3://{bucket}/{name}/",
            checkpoint_every_steps=25,
        )

    first = world.worker()
    world.start_scheduler()
    reference = world.submit(spec("reference"))
    assert world.wait_final(reference, timeout=300)["status"] == "succeeded"  # 240 steps

    job_id = world.submit(spec("killed"))
    seen = wait_until(
        lambda: [e["data"]["step"] for e in world.events(job_id) if e["kind"] == "checkpoint"],
        timeout=120,
        interval=0.1,
        what="a first checkpoint",
    )
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # the whole worker: main process and pool child
    first.proc.wait(10)
    # The replacement works in 2-second slices: every slice also resumes from a checkpoint.
    world.worker(BARGE_FINETUNE_SLICE_SECONDS="2")
    job = world.wait_final(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    assert job["progress"]["steps_done"] == job["progress"]["steps_total"] == 16 * 15

    events = world.events(job_id)
    kinds = [e["kind"] for e in events]
    assert kinds.count("training_started") == 1  # never again from step 0
    resumed = [e for e in events if e["kind"] == "resumed"]
    assert resumed, kinds
    after_kill = resumed[0]["data"]
    assert after_kill["step"] >= max(seen) and after_kill["step"] % 25 == 0
    assert f"resumed from the checkpoint at step {after_kill['step']}" in resumed[0]["message"]
    assert after_kill["attempt"] >= 2
    assert kinds.count("handoff") >= 1 and len(resumed) == kinds.count("handoff") + 1
    assert kinds.count("registered") == 1

    ours, theirs = _weights(s3, bucket, "killed/"), _weights(s3, bucket, "reference/")
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=1e-6, msg=name)
    models = world.api.get("/v1/models", headers=world.auth).json()["models"]
    assert {m["name"] for m in models} == {"reference", "killed"}
