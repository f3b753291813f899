"""text2text end to end on a tiny random T5 whose word-level tokenizer is trained in the test:
outputs (greedy and beam search) equal Hugging Face generation run record by record, with token
usage; a fine-tune on {source, target} pairs learns a word-for-word translation, reports BLEU,
chrF and exact match per epoch, and the registered result translates by name.

The reference is what ``transformers.pipeline("text2text-generation")`` did (tokenize the
prefixed text alone, ``model.generate``, decode without special tokens); transformers 5 no
longer ships that pipeline, so the test runs those three steps itself."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import (
    WORDS,
    events,
    finetune_spec,
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    tiny_t5,
    upload_dir,
    wait_job,
)

pytestmark = pytest.mark.e2e

PREFIX = "translate to german: "


def _rows(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    m = manifest(s3, bucket, prefix)
    return [row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]


def _generate(tok: Any, model: Any, texts: list[str], num_beams: int) -> list[dict[str, Any]]:
    """Each text alone through the model, as the text2text pipeline did (on one thread: a
    tiny model's many small ops are far slower on two threads of a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate_each(tok, model, texts, num_beams)
    finally:
        torch.set_num_threads(threads)


def _generate_each(tok: Any, model: Any, texts: list[str], num_beams: int) -> list[dict[str, Any]]:
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(PREFIX + text, return_tensors="pt")
            ids = model.generate(**enc, max_new_tokens=6, num_beams=num_beams, do_sample=False)
            generated = ids[0, 1:].tolist()
            completion = generated.index(1) + 1 if 1 in generated else len(generated)
            prompt = enc["input_ids"].shape[1]
            out.append(
                {
                    "text": tok.decode(ids[0], skip_special_tokens=True),
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                }
            )
    return out


def test_text2text_outputs_equal_generation_record_by_record(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_path: Path,
    worker: Any,
) -> None:
    path = tiny_t5(tmp_path / "t5", init=5.0)
    model = upload_dir(s3, models_bucket, f"t5-{uuid.uuid4().hex[:6]}", path)
    rng = random.Random(0)
    words = list(WORDS)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(24)]
    data = put_jsonl(
        s3, bucket, "t2t/in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)]
    )
    jobs = {}
    for beams in (1, 4):
        params = {"max_new_tokens": 6, "num_beams": beams, "prefix": PREFIX}
        spec = inference_spec(
            model,
            data,
            f"s3://{bucket}/t2t/beams-{beams}/",
            task="text2text",
            batch_size=8,
            params=params,
        )
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        jobs[beams] = r.json()["id"]
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    reference = AutoModelForSeq2SeqLM.from_pretrained(str(path)).eval()
    for beams, job_id in jobs.items():
        expected = _generate(tok, reference, texts, beams)
        job = wait_job(api, auth, job_id)
        assert job["status"] == "succeeded", job
        out = _rows(s3, bucket, f"t2t/beams-{beams}")
        assert [o["id"] for o in out] == list(range(24))
        assert [{"text": o["text"], "usage": o["usage"]} for o in out] == expected
        assert len({o["text"] for o in out}) > 5  # the outputs depend on the input
    greedy, beam = (_rows(s3, bucket, f"t2t/beams-{b}") for b in (1, 4))
    assert any(g["text"] != b["text"] for g, b in zip(greedy, beam, strict=True))


def test_a_text2text_finetune_learns_a_translation_and_reports_bleu_and_chrf(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_path: Path,
    worker: Any,
) -> None:
    base = upload_dir(s3, models_bucket, f"t5-base-{uuid.uuid4().hex[:6]}", tiny_t5(tmp_path / "b"))
    rng = random.Random(1)
    pairs = [{"source": w, "target": g} for w, g in WORDS.items()]
    train_rows = pairs * 8
    rng.shuffle(train_rows)
    train = put_jsonl(s3, bucket, "t2t-ft/train.jsonl", train_rows)
    validation = put_jsonl(s3, bucket, "t2t-ft/val.jsonl", pairs)
    name = f"de-{uuid.uuid4().hex[:6]}"
    hp = {"epochs": 4, "batch_size": 16, "learning_rate": 1e-2, "max_length": 16, "seed": 0}
    spec = finetune_spec(
        base,
        train,
        name,
        task="text2text",
        validation=validation,
        hyperparameters=hp,
        output=f"s3://{bucket}/t2t-ft/job/",
        checkpoint_every_steps=16,
        log_every_steps=8,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["steps_done"] == 4 * 8  # 128 pairs / 16 per batch, 4 epochs

    evals = [e["data"] for e in events(api, auth, r.json()["id"]) if e["kind"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2, 3, 4]
    for e in evals:
        assert {"validation_loss", "validation_bleu", "validation_chrf"} <= set(e)
        assert 0 <= e["validation_chrf"] <= 100 and 0 <= e["validation_bleu"] <= 100
    last = evals[-1]
    assert last["validation_loss"] < evals[0]["validation_loss"]
    assert last["validation_exact_match"] >= 0.9, evals  # the stated bar: 90 % exact
    assert last["validation_chrf"] >= 90 and last["validation_bleu"] >= 80, evals
    registered = api.get(f"/v1/models/{name}", headers=auth).json()["models"][0]
    assert registered["task"] == "text2text"
    assert registered["metrics"]["validation_exact_match"] == last["validation_exact_match"]

    data = put_jsonl(
        s3, bucket, "t2t-ft/in.jsonl", [{"id": p["source"], "text": p["source"]} for p in pairs]
    )
    spec = inference_spec(name, data, f"s3://{bucket}/t2t-ft/out/", task="text2text", id_field="id")
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    assert wait_job(api, auth, r.json()["id"])["status"] == "succeeded"
    out = _rows(s3, bucket, "t2t-ft/out")
    right = sum(o["text"] == WORDS[o["id"]] for o in out)
    assert right / len(out) == last["validation_exact_match"]
