"""Fine-tune jobs end to end: train on S3 data, watch loss and eval events, register the result,
run inference on it by name; bad input gets a 422 or a failed job that says what to fix."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.helpers import (
    events,
    finetune_spec,
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    topic_examples,
    wait_job,
    wait_until,
)

pytestmark = pytest.mark.e2e

CLASSIFY_HP = {
    "epochs": 5,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.1,
    "seed": 0,
    "max_length": 32,
}


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_finetune_a_classifier_register_it_and_run_inference_by_name(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, encoder_uri: str, worker: Any
) -> None:
    name = f"topics-{uuid.uuid4().hex[:6]}"
    train = put_jsonl(s3, bucket, "ft/train.jsonl", topic_examples(240, seed=1))
    validation = put_jsonl(s3, bucket, "ft/val.jsonl", topic_examples(60, seed=2))
    spec = finetune_spec(
        encoder_uri,
        train,
        name,
        validation=validation,
        hyperparameters=CLASSIFY_HP,
        output=f"s3://{bucket}/ft/job/",
        checkpoint_every_steps=20,
        log_every_steps=5,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["type"] == "finetune"

    job = wait_job(api, auth, job_id)
    assert job["status"] == "succeeded", job
    steps_total = 5 * 15  # 240 examples / 16 per batch, 5 epochs
    assert job["progress"]["steps_total"] == steps_total
    assert job["progress"]["steps_done"] == steps_total

    evs = events(api, auth, job_id)
    train_events = [e for e in evs if e["kind"] == "train"]
    assert [e["data"]["step"] for e in train_events] == list(range(5, steps_total + 1, 5))
    assert all(e["data"]["loss"] > 0 and e["data"]["learning_rate"] >= 0 for e in train_events)
    assert train_events[-1]["data"]["loss"] < train_events[0]["data"]["loss"]
    evals = [e["data"] for e in evs if e["kind"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2, 3, 4, 5]
    assert evals[-1]["validation_loss"] < evals[0]["validation_loss"]
    accuracy = evals[-1]["validation_accuracy"]
    assert accuracy >= 0.85, f"validation accuracy {accuracy} does not clearly beat 1/3"
    checkpoint_steps = [e["data"]["step"] for e in evs if e["kind"] == "checkpoint"]
    assert checkpoint_steps == [20, 40, 60]
    registered = next(e["data"] for e in evs if e["kind"] == "registered")
    assert (registered["name"], registered["version"]) == (name, 1)

    # The model directory, the summary, two kept checkpoints and the manifest.
    keys = _keys(s3, bucket, "ft/job/")
    for key in ("model/model.safetensors", "model/config.json", "model/tokenizer.json"):
        assert f"ft/job/{key}" in keys
    assert not [k for k in keys if k.endswith((".bin", ".pt", ".pth", ".pkl"))]
    summary = json.loads(
        s3.get_object(Bucket=bucket, Key="ft/job/model/training_summary.json")["Body"].read()
    )
    assert summary["labels"] == ["food", "sport", "weather"]
    assert summary["metrics"]["validation_accuracy"] == accuracy
    assert len(summary["history"]) == 5
    kept = {k.split("/")[3] for k in keys if k.startswith("ft/job/checkpoints/step-")}
    assert kept == {"step-00000040", "step-00000060"}  # keep_checkpoints defaults to 2
    pointer = json.loads(
        s3.get_object(Bucket=bucket, Key="ft/job/checkpoints/latest.json")["Body"].read()
    )
    assert pointer["step"] == 60
    m = manifest(s3, bucket, "ft/job")
    assert m["status"] == "succeeded" and m["model"]["name"] == name
    assert m["steps"] == {"done": steps_total, "total": steps_total}

    # The registry lists it; an inference job names it and classifies held-out data.
    versions = api.get(f"/v1/models/{name}", headers=auth).json()["models"]
    assert [(v["version"], v["task"], v["job_id"]) for v in versions] == [(1, "classify", job_id)]
    assert versions[0]["metrics"]["validation_accuracy"] == accuracy
    assert versions[0]["base_model"] == encoder_uri
    held_out = topic_examples(90, seed=3)
    rows = [{"id": i, **row} for i, row in enumerate(held_out)]
    data = put_jsonl(s3, bucket, "ft/held_out.jsonl", rows)
    r = api.post(
        "/v1/jobs",
        json=inference_spec(name, data, f"s3://{bucket}/ft/predictions/", task="classify"),
        headers=auth,
        params={},
    )
    assert r.status_code == 201, r.text
    assert wait_job(api, auth, r.json()["id"])["status"] == "succeeded"
    predictions = read_jsonl(s3, bucket, manifest(s3, bucket, "ft/predictions")["parts"][0]["key"])
    assert len(predictions) == 90
    right = sum(p["label"] == rows[p["id"]]["label"] for p in predictions)
    assert right / 90 >= 0.85, f"held-out accuracy {right / 90:.2f}"


def test_generate_and_embed_finetunes_learn_and_serve(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    generator_uri: str,
    encoder_uri: str,
    worker: Any,
) -> None:
    gen_name, emb_name = f"gen-{uuid.uuid4().hex[:6]}", f"emb-{uuid.uuid4().hex[:6]}"
    pairs = [
        {"prompt": f"colour of item {i}:", "completion": ["red", "blue"][i % 2]} for i in range(64)
    ]
    gen_train = put_jsonl(s3, bucket, "gen/train.jsonl", pairs)
    topics = topic_examples(64, seed=5)
    emb_rows = [{"anchor": r["text"], "positive": f"about {r['label']}"} for r in topics]
    emb_train = put_jsonl(s3, bucket, "emb/train.jsonl", emb_rows)
    hp = {"epochs": 3, "batch_size": 8, "learning_rate": 3e-3, "seed": 1, "max_length": 32}
    # Half of a generate example's labels are end-of-sequence: enough steps (6 epochs of 16) at
    # a rate high enough for the tiny model to learn that its prompt is followed by a colour,
    # not by the end (at 3e-3 over 24 steps it stays near uniform and greedy ends at once).
    gen_hp = {**hp, "epochs": 6, "batch_size": 4, "learning_rate": 1e-2}
    gen = api.post(
        "/v1/jobs",
        json=finetune_spec(
            generator_uri,
            gen_train,
            gen_name,
            task="generate",
            hyperparameters=gen_hp,
            validation=gen_train,
            log_every_steps=4,
        ),
        headers=auth,
    )
    emb = api.post(
        "/v1/jobs",
        json=finetune_spec(
            encoder_uri,
            emb_train,
            emb_name,
            task="embed",
            hyperparameters=hp,
            validation=emb_train,
            log_every_steps=4,
        ),
        headers=auth,
    )
    assert gen.status_code == 201 and emb.status_code == 201, (gen.text, emb.text)
    for r, epochs in ((gen, gen_hp["epochs"]), (emb, hp["epochs"])):
        job = wait_job(api, auth, r.json()["id"])
        assert job["status"] == "succeeded", job
        evals = [e["data"] for e in events(api, auth, job["id"]) if e["kind"] == "eval"]
        assert len(evals) == epochs
        assert evals[-1]["validation_loss"] < evals[0]["validation_loss"]
    emb_evals = [e["data"] for e in events(api, auth, emb.json()["id"]) if e["kind"] == "eval"]
    assert "validation_accuracy" in emb_evals[-1]

    prompts = put_jsonl(
        s3, bucket, "gen/prompts.jsonl", [{"text": f"colour of item {i}:"} for i in range(4)]
    )
    texts = put_jsonl(s3, bucket, "emb/texts.jsonl", [{"text": r["text"]} for r in topics[:4]])
    jobs = [
        api.post(
            "/v1/jobs",
            json=inference_spec(
                f"{gen_name}@1",
                prompts,
                f"s3://{bucket}/gen/out/",
                task="generate",
                params={"max_new_tokens": 3},
            ),
            headers=auth,
        ),
        api.post(
            "/v1/jobs",
            json=inference_spec(emb_name, texts, f"s3://{bucket}/emb/out/", task="embed"),
            headers=auth,
        ),
    ]
    for r in jobs:
        assert r.status_code == 201, r.text
        assert wait_job(api, auth, r.json()["id"])["status"] == "succeeded"
    generated = read_jsonl(s3, bucket, manifest(s3, bucket, "gen/out")["parts"][0]["key"])
    assert len(generated) == 4
    # Trained on completions only, the model now answers with a colour word.
    assert all(g["text"].split()[0] in ("red", "blue") for g in generated), generated
    embedded = read_jsonl(s3, bucket, manifest(s3, bucket, "emb/out")["parts"][0]["key"])
    assert [len(e["embedding"]) for e in embedded] == [64] * 4


def test_cancel_stops_training_keeps_the_checkpoint_and_registers_nothing(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, encoder_uri: str, worker: Any
) -> None:
    name = f"cancelled-{uuid.uuid4().hex[:6]}"
    train = put_jsonl(s3, bucket, "c/train.jsonl", topic_examples(240, seed=1))
    spec = finetune_spec(
        encoder_uri,
        train,
        name,
        hyperparameters={**CLASSIFY_HP, "epochs": 200},
        output=f"s3://{bucket}/c/job/",
        checkpoint_every_steps=10,
    )
    job_id = api.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    wait_until(
        lambda: any(e["kind"] == "checkpoint" for e in events(api, auth, job_id)),
        timeout=120,
        what="a first checkpoint",
    )
    r = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 200, r.text
    cancelled_at = time.monotonic()
    job = wait_job(api, auth, job_id)
    assert job["status"] == "cancelled"
    assert time.monotonic() - cancelled_at < 15
    assert job["progress"]["steps_done"] < job["progress"]["steps_total"]
    pointer = json.loads(
        s3.get_object(Bucket=bucket, Key="c/job/checkpoints/latest.json")["Body"].read()
    )
    assert pointer["step"] >= 10
    assert f"c/job/checkpoints/step-{pointer['step']:08d}/model.safetensors" in _keys(
        s3, bucket, "c/job/"
    )
    assert api.get(f"/v1/models/{name}", headers=auth).status_code == 404
    assert not _keys(s3, bucket, "c/job/model/")
    assert manifest(s3, bucket, "c/job")["model"] is None


def test_bad_finetune_input_is_refused_with_the_field_to_fix(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, encoder_uri: str, classifier_uri: str
) -> None:
    good = put_jsonl(s3, bucket, "bad/train.jsonl", topic_examples(20, seed=1))
    no_label = put_jsonl(s3, bucket, "bad/nolabel.jsonl", [{"text": "x"}] * 5)
    s3.put_object(Bucket=bucket, Key="bad/empty.jsonl", Body=b"")
    empty = f"s3://{bucket}/bad/empty.jsonl"
    base = finetune_spec(encoder_uri, good, "ok-name")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**base, "train": no_label}, "train", "'label'"),
        ({**base, "train": empty}, "train", "empty"),
        ({**base, "validation": no_label}, "validation", "'label'"),
        ({**base, "train": f"s3://{bucket}/bad/missing.jsonl"}, "train", "no train"),
        ({**base, "hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate", ""),
        (
            {**base, "hyperparameters": {"learning_rate": -1e-4}},
            "hyperparameters.learning_rate",
            "",
        ),
        ({**base, "hyperparameters": {"epochs": 0}}, "hyperparameters.epochs", ""),
        ({**base, "hyperparameters": {"lr": 0.1}}, "hyperparameters.lr", "unknown field"),
        ({**base, "model_name": "bad name@2"}, "model_name", ""),
        ({**base, "base_model": "no-such-model"}, "base_model", "registered"),
        ({**base, "task": "summarize"}, "task", ""),
        ({**base, "type": "pretrain"}, "type", "inference, finetune"),
        ({k: v for k, v in base.items() if k != "train"}, "train", "Field required"),
    ]
    for spec, field, words in cases:
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 422, (spec, r.text)
        body = r.json()
        assert body["field"] == field, (field, body)
        assert words in body["message"], (words, body)

    # A name already registered for another task keeps its task.
    name = f"taken-{uuid.uuid4().hex[:6]}"
    assert (
        api.post(
            "/v1/models",
            json={"name": name, "uri": classifier_uri, "task": "classify"},
            headers=auth,
        ).status_code
        == 201
    )
    emb = put_jsonl(s3, bucket, "bad/emb.jsonl", [{"anchor": "a", "positive": "b"}] * 4)
    r = api.post("/v1/jobs", json=finetune_spec(encoder_uri, emb, name, task="embed"), headers=auth)
    assert r.status_code == 422 and r.json()["field"] == "model_name", r.text


def test_data_problems_found_when_planning_fail_the_job_clearly(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, encoder_uri: str, worker: Any
) -> None:
    train = put_jsonl(s3, bucket, "plan/train.jsonl", topic_examples(30, seed=1))
    unseen = put_jsonl(
        s3,
        bucket,
        "plan/val.jsonl",
        [{"text": "rain", "label": "weather"}, {"text": "x", "label": "music"}],
    )
    rows: list[Any] = topic_examples(10, seed=2)
    rows[3] = {"text": "no label here"}
    rows[6] = '{"text": "broken'
    mostly_bad = put_jsonl(s3, bucket, "plan/bad.jsonl", rows)
    one_label = put_jsonl(
        s3, bucket, "plan/one.jsonl", [{"text": f"t{i}", "label": 1} for i in range(5)]
    )
    cases = [
        (
            finetune_spec(encoder_uri, train, "p1", validation=unseen),
            "validation has labels train never saw: 'music'",
        ),
        (
            finetune_spec(encoder_uri, mostly_bad, "p2", output=f"s3://{bucket}/plan/p2/"),
            "2 of 10 train records are unusable",
        ),
        (finetune_spec(encoder_uri, one_label, "p3"), "train has only one label ('1')"),
    ]
    ids = []
    for spec, _ in cases:
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for job_id, (_, words) in zip(ids, cases, strict=True):
        job = wait_job(api, auth, job_id)
        assert job["status"] == "failed"
        assert words in job["error"], job["error"]
    # The unusable records are listed with their lines and reasons.
    errors = read_jsonl(s3, bucket, "plan/p2/errors/train.jsonl")
    assert [e["line"] for e in errors] == [4, 7]
    assert errors[0]["error"] == "record has no 'label'"
