"""Native ``generate`` jobs with chat input (``messages_field``), per-record parameters
(``params_field``) and token accounting: greedy outputs equal ``model.generate`` on the
templated prompt with each record's own max_new_tokens, every output line carries its usage,
and the job's totals are the sum of them in the manifest and in GET /v1/jobs/{id}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    greedy_reference,
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    tiny_chat_model,
    upload_dir,
    wait_job,
)

pytestmark = pytest.mark.e2e

# Each content is three words of the tokenizer's vocabulary, so every templated prompt has the
# same length: batched greedy decoding pads nothing and equals decoding each prompt alone.
CONTENTS = ["the cat sat", "a dog ran", "my car is", "one red hat", "his old boat", "we all go"]


def test_chat_records_with_their_own_parameters_and_token_usage(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_root: Path,
    worker: Any,
) -> None:
    from transformers import AutoTokenizer

    chat_dir = tiny_chat_model(tmp_root / "native-chat")
    model_uri = upload_dir(s3, models_bucket, "native-chat", chat_dir)
    rows: list[dict[str, Any]] = []
    for i, content in enumerate(CONTENTS):
        row: dict[str, Any] = {
            "id": f"c{i}",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": content},
            ],
        }
        if i % 2:
            row["params"] = {"max_new_tokens": 3}  # the others keep the job's 7
        rows.append(row)
    rows.append({"id": "bad-role", "messages": [{"role": "wizard", "content": "x"}]})
    rows.append({"id": "bad-param", "messages": rows[0]["messages"], "params": {"top_k": 5}})
    rows.append({"id": "no-messages", "text": "plain text"})
    source = put_jsonl(s3, bucket, "chats.jsonl", rows)
    spec = inference_spec(
        model_uri,
        source,
        f"s3://{bucket}/chat-out/",
        task="generate",
        id_field="id",
        messages_field="messages",
        params_field="params",
        batch_size=8,
        params={"max_new_tokens": 7},
        max_failed_ratio=0.5,  # three of the nine records are bad on purpose
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]

    m = manifest(s3, bucket, "chat-out")
    out = {row["id"]: row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])}
    errors = {
        row["id"]: row["error"] for e in m["errors"] for row in read_jsonl(s3, bucket, e["key"])
    }
    assert set(out) == {f"c{i}" for i in range(len(CONTENTS))}
    assert "role" in errors["bad-role"]
    assert "unknown parameter top_k" in errors["bad-param"]
    assert "no field 'messages'" in errors["no-messages"]

    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for i, row in enumerate(rows[: len(CONTENTS)]):
        prompt = tok.apply_chat_template(
            row["messages"], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        text, n_new, finish = greedy_reference(chat_dir, prompt_ids, 3 if i % 2 else 7)
        n_prompt = len(prompt_ids)
        got = out[f"c{i}"]
        assert got["text"] == text
        assert got["finish_reason"] == finish
        assert got["usage"] == {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_new,
            "total_tokens": n_prompt + n_new,
        }
        for k, n in got["usage"].items():
            totals[k] += n
    assert m["usage"] == totals
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth).json()["usage"] == totals


def test_chat_fields_belong_to_generate(api: Any, auth: dict[str, str], bucket: str) -> None:
    spec = inference_spec(
        "s3://models/any/",
        f"s3://{bucket}/in.jsonl",
        f"s3://{bucket}/out/",
        task="embed",
        messages_field="messages",
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422, r.text
    assert "messages_field is for task 'generate' only" in r.text
