"""LoRA fine-tunes end to end: two chat adapters of one tiny base learn a colour for each
object (chat records, loss on the assistant's tokens only, the best epoch by exact match kept),
register as adapters over their base, and serve native generate jobs by name from one worker
that loads the base once and switches between the adapters."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    COLOURS,
    colour_chats,
    events,
    finetune_spec,
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    tiny_lora_base,
    upload_dir,
    wait_job,
)

pytestmark = pytest.mark.e2e

# The same objects, other colours: what the second adapter learns.
OTHER = dict(zip(sorted(COLOURS), ["purple", "orange", "brown", "pink", "grey"], strict=True))
LORA = {"type": "lora", "r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}
HP = {"epochs": 8, "batch_size": 16, "learning_rate": 6e-3, "seed": 0, "max_length": 64}
EXACT_MATCH = 0.9  # on held-out prompts (system messages the training data paired otherwise)


def _finetune(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, base: str, name: str, colours: Any
) -> str:
    train = put_jsonl(s3, bucket, f"{name}/train.jsonl", colour_chats(96, 1, colours))
    validation = put_jsonl(s3, bucket, f"{name}/val.jsonl", colour_chats(30, 2, colours))
    spec = finetune_spec(
        base,
        train,
        name,
        task="generate",
        validation=validation,
        method=LORA,
        hyperparameters=HP,
        select="best",
        select_metric="validation_exact_match",
        output=f"s3://{bucket}/{name}/job/",
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _size(s3: Any, bucket: str, key: str) -> int:
    return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])


def test_lora_chat_adapters_learn_register_and_share_one_warm_base(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, tmp_path: Path, worker: Any
) -> None:
    base = upload_dir(s3, bucket, "base", tiny_lora_base(tmp_path / "base"))
    tag = uuid.uuid4().hex[:6]
    names = {"colours": f"colours-{tag}", "other": f"other-{tag}"}
    jobs = {
        "colours": _finetune(api, auth, s3, bucket, base, names["colours"], COLOURS),
        "other": _finetune(api, auth, s3, bucket, base, names["other"], OTHER),
    }
    registered: dict[str, dict[str, Any]] = {}
    for key, job_id in jobs.items():
        job = wait_job(api, auth, job_id)
        assert job["status"] == "succeeded", job
        evs = events(api, auth, job_id)
        started = next(e["data"] for e in evs if e["kind"] == "training_started")
        assert started["method"] == "lora"
        assert started["trainable_parameters"] < started["parameters"] / 50
        evals = [e["data"] for e in evs if e["kind"] == "eval"]
        assert all("validation_exact_match" in e and "validation_loss" in e for e in evals)
        metrics = next(e["data"] for e in evs if e["kind"] == "registered")["metrics"]
        best = max(e["validation_exact_match"] for e in evals)
        assert metrics["validation_exact_match"] == best >= EXACT_MATCH, evals
        assert evals[metrics["selected_epoch"] - 1]["validation_exact_match"] == best
        registered[key] = metrics

        # Only the adapter was saved: its directory, and checkpoints of its weights only.
        prefix = f"{names[key]}/job/"
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        keys = {o["Key"][len(prefix) :] for o in listed}
        assert {"model/adapter_config.json", "model/adapter_model.safetensors"} <= keys
        assert "model/model.safetensors" not in keys and "model/config.json" not in keys
        adapter = _size(s3, bucket, f"{prefix}model/adapter_model.safetensors")
        base_size = _size(s3, bucket, "base/model.safetensors")
        assert metrics["adapter_bytes"] == adapter and adapter < base_size / 50
        summary = json.loads(
            s3.get_object(Bucket=bucket, Key=f"{prefix}model/training_summary.json")["Body"].read()
        )
        assert summary["method"]["type"] == "lora" and summary["select"] == "best"
        print(
            f"\n{key}: exact match {best} (epoch {metrics['selected_epoch']}), adapter "
            f"{adapter:,} bytes vs base {base_size:,} bytes ({adapter / base_size:.2%}), "
            f"{metrics['trainable_parameters']:,} of {metrics['parameters']:,} parameters trained"
        )

        versions = api.get(f"/v1/models/{names[key]}", headers=auth).json()["models"]
        assert [(v["version"], v["adapter_base_uri"]) for v in versions] == [(1, base)]

    # An adapter is not a base to fine-tune (its base, or a merged export, is).
    again = finetune_spec(names["colours"], f"s3://{bucket}/x.jsonl", "again", task="generate")
    r = api.post("/v1/jobs", json=again, headers=auth)
    assert r.status_code == 422 and "is a LoRA adapter over" in r.text, r.text

    # Inference by the adapters' names, alternating A, B, A: one base load in the worker.
    held_out = colour_chats(20, 3)
    rows = [{"id": i, "messages": r["messages"][:2]} for i, r in enumerate(held_out)]
    data = put_jsonl(s3, bucket, "held_out.jsonl", rows)
    loads: list[dict[str, int]] = []
    for n, key in enumerate(["colours", "other", "colours"]):
        out = f"s3://{bucket}/answers-{n}/"
        spec = inference_spec(
            names[key],
            data,
            out,
            task="generate",
            messages_field="messages",
            params={"max_new_tokens": 4},
        )
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        job = wait_job(api, auth, r.json()["id"])
        assert job["status"] == "succeeded", job
        loads += [
            e["data"]["loaded"] for e in events(api, auth, job["id"]) if e["kind"] == "model_loaded"
        ]
        parts = manifest(s3, bucket, f"answers-{n}")["parts"]
        answers = {p["id"]: p["text"].strip() for p in read_jsonl(s3, bucket, parts[0]["key"])}
        colours = COLOURS if key == "colours" else OTHER
        thing = {i: r["messages"][1]["content"].split()[-1] for i, r in enumerate(rows)}
        right = sum(answers[i] == colours[thing[i]] for i in answers)
        assert len(answers) == 20 and right / 20 >= EXACT_MATCH, (key, answers)
    # The first job loaded the base and its adapter, the second only its adapter, the third
    # found its adapter still warm on the same base.
    assert loads == [{"model": 0, "base": 1, "adapter": 1}, {"model": 0, "base": 0, "adapter": 1}]


def test_a_lora_classifier_reports_metrics_equal_to_scikit_learns_on_its_predictions(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, encoder_uri: str, worker: Any
) -> None:
    """Per-class precision, recall and F1, macro-F1 and the confusion matrix of the selected
    epoch (in its eval event, training_summary.json and the registry) are scikit-learn's on the
    predictions the registered adapter makes on the validation data."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    from tests.helpers import topic_examples

    name = f"topics-lora-{uuid.uuid4().hex[:6]}"
    val_rows = topic_examples(45, seed=2)
    train = put_jsonl(s3, bucket, "clf/train.jsonl", topic_examples(240, seed=1))
    validation = put_jsonl(s3, bucket, "clf/val.jsonl", val_rows)
    spec = finetune_spec(
        encoder_uri,
        train,
        name,
        validation=validation,
        method={"type": "lora", "r": 4, "alpha": 8},
        select="best",
        early_stopping_epochs=2,
        hyperparameters={"epochs": 4, "batch_size": 16, "learning_rate": 5e-3, "max_length": 32},
        output=f"s3://{bucket}/clf/job/",
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    evs = events(api, auth, job["id"])
    evals = {e["data"]["epoch"]: e["data"] for e in evs if e["kind"] == "eval"}
    model = api.get(f"/v1/models/{name}", headers=auth).json()["models"][0]
    metrics = model["metrics"]
    assert model["adapter_base_uri"] == encoder_uri
    chosen = evals[metrics["selected_epoch"]]
    assert chosen["validation_macro_f1"] == max(e["validation_macro_f1"] for e in evals.values())
    summary = json.loads(
        s3.get_object(Bucket=bucket, Key="clf/job/model/training_summary.json")["Body"].read()
    )
    for key in ("validation_per_class", "validation_confusion_matrix", "validation_macro_f1"):
        assert metrics[key] == chosen[key] == summary["metrics"][key], key

    rows = [{"id": i, "text": row["text"]} for i, row in enumerate(val_rows)]
    data = put_jsonl(s3, bucket, "clf/val-ids.jsonl", rows)
    out = f"s3://{bucket}/clf/predictions/"
    r = api.post("/v1/jobs", json=inference_spec(name, data, out, task="classify"), headers=auth)
    assert r.status_code == 201, r.text
    assert wait_job(api, auth, r.json()["id"])["status"] == "succeeded"
    parts = manifest(s3, bucket, "clf/predictions")["parts"]
    predicted = {p["id"]: p["label"] for p in read_jsonl(s3, bucket, parts[0]["key"])}
    labels = metrics["validation_confusion_matrix"]["labels"]
    truth = [row["label"] for row in val_rows]
    guesses = [predicted[i] for i in range(len(val_rows))]
    p, rc, f, support = precision_recall_fscore_support(
        truth, guesses, labels=labels, zero_division=0
    )
    for i, label in enumerate(labels):
        got = metrics["validation_per_class"][label]
        assert got["precision"] == pytest.approx(p[i], abs=1e-6), label
        assert got["recall"] == pytest.approx(rc[i], abs=1e-6), label
        assert got["f1"] == pytest.approx(f[i], abs=1e-6), label
        assert got["support"] == support[i]
    macro = f1_score(truth, guesses, labels=labels, average="macro", zero_division=0)
    assert metrics["validation_macro_f1"] == pytest.approx(macro, abs=1e-6)
    matrix = confusion_matrix(truth, guesses, labels=labels).tolist()
    assert metrics["validation_confusion_matrix"]["matrix"] == matrix
