"""An embed job through API → Postgres → RabbitMQ → a real worker → moto S3."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.helpers import inference_spec, manifest, minilm_dir, put_jsonl, read_jsonl, wait_job

pytestmark = pytest.mark.e2e

MALFORMED_AT = {17, 404, 699, 750, 998}  # 0-based line indices


def direct_embeddings(texts: list[str]) -> torch.Tensor:
    """MiniLM run directly with transformers: mean pooling over the attention mask."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i : i + 64], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def test_embed_1000_records_with_5_malformed_lines(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    lines: list[Any] = []
    good: list[tuple[str, str]] = []
    for i in range(1000):
        if i in MALFORMED_AT:
            lines.append(f'{{"id": "bad-{i}", "text": "unterminated')
        else:
            rec = {
                "id": f"r{i:04d}",
                "text": f"record number {i} about {'ships' if i % 2 else 'GPUs'}" + " x" * (i % 37),
            }
            lines.append(rec)
            good.append((rec["id"], rec["text"]))
    input_uri = put_jsonl(s3, bucket, "in/data.jsonl", lines)
    spec = inference_spec(
        minilm_uri, input_uri, f"s3://{bucket}/out/", id_field="id", batch_size=64, shard_size=350
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["records_total"] == 1000
    assert job["progress"]["records_succeeded"] == 995
    assert job["progress"]["records_failed"] == 5
    assert job["progress"]["shards_total"] == job["progress"]["shards_done"] == 3

    m = manifest(s3, bucket, "out")
    assert m["status"] == "succeeded"
    assert m["records"] == {"total": 1000, "succeeded": 995, "failed": 5, "not_processed": 0}
    rows = [row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]
    assert [row["id"] for row in rows] == [g[0] for g in good]  # exactly the good ids, in order
    got = torch.tensor([row["embedding"] for row in rows])
    assert got.shape == (995, 384)
    expected = direct_embeddings([g[1] for g in good])
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()

    errors = [row for e in m["errors"] for row in read_jsonl(s3, bucket, e["key"])]
    assert sorted(e["line"] for e in errors) == sorted(i + 1 for i in MALFORMED_AT)
    assert all(e["source"] == input_uri and "invalid JSON" in e["error"] for e in errors)
    assert s3.head_object(Bucket=bucket, Key="out/_SUCCESS")

    events = api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["events"]
    transitions = [(e["from_status"], e["to_status"]) for e in events if e["kind"] == "status"]
    assert transitions == [("queued", "running"), ("running", "succeeded")]
    assert events[0]["kind"] == "created"
    assert json.dumps(events)  # serialisable bodies
