"""Token-budget batches for encoders: the same embed and classify jobs over records of mixed length
with fixed-count batches (``max_batch_tokens: 0``), with a small token budget (short records in
wide batches, long ones in narrow ones, one over the budget alone) and with the default budget
give the same outputs, in input order, record for record."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from tests.helpers import inference_spec, manifest, put_jsonl, read_jsonl, wait_job

pytestmark = pytest.mark.e2e

WORDS = ["river", "barge", "cargo", "night", "tide", "lock", "canal", "grain", "steel", "rope"]


def _rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    lengths = [2, 3, 5, 8, 40, 120, 1, 4, 200, 6]  # words: mostly short, a long tail
    return [
        {"id": f"t{i}", "text": " ".join(rng.choice(WORDS) for _ in range(lengths[i % 10] + i % 3))}
        for i in range(n)
    ]


def _run(api: Any, auth: dict[str, str], s3: Any, bucket: str, spec: dict[str, Any]) -> list[Any]:
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    prefix = spec["output"].removeprefix(f"s3://{bucket}/")
    m = manifest(s3, bucket, prefix)
    assert not m["errors"]
    return [row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]


@pytest.mark.parametrize("task", ["embed", "classify"])
def test_token_budget_batches_equal_fixed_batches_in_input_order(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    classifier_uri: str,
    worker: Any,
    task: str,
) -> None:
    rows = _rows(90)
    source = put_jsonl(s3, bucket, f"mixed-{task}.jsonl", rows)
    model = minilm_uri if task == "embed" else classifier_uri
    outputs = {}
    for name, budget in (("fixed", 0), ("small", 300), ("default", None)):
        extra: dict[str, Any] = {} if budget is None else {"max_batch_tokens": budget}
        spec = inference_spec(
            model,
            source,
            f"s3://{bucket}/tokens-{task}-{name}/",
            task=task,
            id_field="id",
            batch_size=8,
            **extra,
        )
        outputs[name] = _run(api, auth, s3, bucket, spec)
    want = [row["id"] for row in rows]
    for name, out in outputs.items():
        assert [row["id"] for row in out] == want, name  # input order, every record once
    fixed = outputs["fixed"]
    for name in ("small", "default"):
        for a, b in zip(fixed, outputs[name], strict=True):
            if task == "embed":
                np.testing.assert_allclose(a["embedding"], b["embedding"], atol=2e-5)
            else:
                assert a["label"] == b["label"], (name, a["id"])
                np.testing.assert_allclose(a["score"], b["score"], atol=2e-5)


def test_max_batch_tokens_is_checked_at_submit(
    api: Any, auth: dict[str, str], bucket: str, minilm_uri: str
) -> None:
    spec = inference_spec(
        minilm_uri, f"s3://{bucket}/x.jsonl", f"s3://{bucket}/x/", max_batch_tokens=-1
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422, r.text
    assert "max_batch_tokens" in r.text
