"""A LoRA fine-tune survives its worker being SIGKILLed and its work being cut into time slices:
it resumes from the newest checkpoint and registers the same adapter and epoch models as a run
that never stopped. (Apart from ``test_finetune_faults`` so the two long runs can go to
different test processes.)"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from tests.faults.conftest import World
from tests.helpers import finetune_spec, put_jsonl, topic_examples, wait_until


def test_sigkill_mid_lora_training_resumes_with_the_same_adapter_weights(
    world: World, s3: Any, bucket: str, encoder_uri: str
) -> None:
    """A LoRA classify fine-tune with select best and two epoch models: its checkpoints hold
    only the adapter (and head) weights, optimizer, RNG and the best epoch's weights; killed
    and resumed in slices, it registers the same adapter, and the same epoch models, as a run
    that never stopped."""
    import torch
    from safetensors.torch import load

    train = put_jsonl(s3, bucket, "lora/train.jsonl", topic_examples(240, seed=1))
    validation = put_jsonl(s3, bucket, "lora/val.jsonl", topic_examples(45, seed=2))
    hp = {"epochs": 10, "batch_size": 16, "learning_rate": 5e-3, "seed": 3, "max_length": 32}

    def spec(name: str) -> dict[str, Any]:
        return finetune_spec(
            encoder_uri,
            train,
            name,
            validation=validation,
            method={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
            select="best",
            epoch_models=2,
            hyperparameters=hp,
            output=f"s3://{bucket}/{name}/",
            checkpoint_every_steps=25,
        )

    first = world.worker()
    world.start_scheduler()
    reference = world.submit(spec("lora-reference"))
    assert world.wait_final(reference, timeout=300)["status"] == "succeeded"  # 150 steps

    # An epoch folder this job never wrote, under its prefix: neither registered nor deleted.
    planted = {"job_id": "another job", "epoch": 3, "record": {"epoch": 3, "step": 45}}
    s3.put_object(
        Bucket=bucket, Key="lora-killed/epochs/epoch-0003/epoch.json", Body=json.dumps(planted)
    )
    job_id = world.submit(spec("lora-killed"))
    wait_until(
        lambda: [e for e in world.events(job_id) if e["kind"] == "checkpoint"],
        timeout=120,
        interval=0.1,
        what="a first checkpoint",
    )
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    world.worker(BARGE_FINETUNE_SLICE_SECONDS="2")
    job = world.wait_final(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    kinds = [e["kind"] for e in world.events(job_id)]
    assert kinds.count("training_started") == 1 and kinds.count("resumed") >= 1, kinds

    def adapter(prefix: str, folder: str = "model/") -> dict[str, Any]:
        key = f"{prefix}{folder}adapter_model.safetensors"
        return load(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
        assert ours.keys() == theirs.keys() and any("lora_" in k for k in ours)
        for name, tensor in ours.items():
            torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=1e-6, msg=name)

    same(adapter("lora-killed/"), adapter("lora-reference/"))
    # The epoch models: the two newest of the last three epochs (10 planned, 15 steps each)
    # other than the selected one, complete, the same weights as the reference's, each
    # registered under its own name over the same base.
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key="lora-killed/_manifest.json")["Body"].read()
    )
    selected = manifest["model"]["metrics"]["selected_epoch"]
    kept = [m["metrics"]["epoch"] for m in manifest["epoch_models"]]
    assert kept == sorted(e for e in (8, 9, 10) if e != selected)[-2:], (kept, selected)

    def folders(prefix: str) -> set[str]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}epochs/")["Contents"]
        return {o["Key"].split("/")[2] for o in listed if o["Key"].endswith("/epoch.json")}

    assert folders("lora-killed/") == folders("lora-reference/") | {"epoch-0003"}
    assert folders("lora-reference/") == {f"epoch-{e:04d}" for e in kept}
    body = s3.get_object(Bucket=bucket, Key="lora-killed/epochs/epoch-0003/epoch.json")["Body"]
    assert json.loads(body.read()) == planted
    for model in manifest["epoch_models"]:
        epoch, step = model["metrics"]["epoch"], model["metrics"]["step"]
        assert step == epoch * 15 and model["name"] == f"lora-killed-ckpt-step-{step}"
        folder = f"epochs/epoch-{epoch:04d}/"
        same(adapter("lora-killed/", folder), adapter("lora-reference/", folder))
        found = world.api.get(f"/v1/models/{model['name']}", headers=world.auth).json()
        assert found["models"][0]["adapter_base_uri"] == encoder_uri
    # A checkpoint's model file holds the weights that train, not the frozen base.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="lora-killed/checkpoints/")["Contents"]
    sizes = {o["Key"].rsplit("/", 1)[-1]: o["Size"] for o in listed}
    base = s3.head_object(
        Bucket=encoder_uri[5:].split("/", 1)[0],
        Key=f"{encoder_uri[5:].split('/', 1)[1]}model.safetensors",
    )
    assert sizes["model.safetensors"] < base["ContentLength"] / 20
    assert "best.safetensors" in sizes
    registered = world.api.get("/v1/models/lora-killed", headers=world.auth).json()["models"]
    assert registered[0]["adapter_base_uri"] == encoder_uri
    assert registered[0]["metrics"]["selected_epoch"] >= 1
