"""classify and generate on tiny random HF models; CSV, Parquet and gzip inputs; a prefix of
several objects processed by two worker processes at once."""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sqlalchemy import select

from tests.helpers import inference_spec, manifest, read_jsonl, read_parquet, wait_job

pytestmark = pytest.mark.e2e


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _parquet_bytes(rows: list[dict[str, Any]], row_group_size: int = 50) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=row_group_size)
    return buf.getvalue()


def test_classify_csv_matches_the_model_run_directly(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    classifier_uri: str,
    tmp_root: Path,
    worker: Any,
) -> None:
    rows = [
        {"doc": f"d{i}", "body": f"review {i}: {'great' if i % 3 else 'awful, with a comma'}"}
        for i in range(300)
    ]
    s3.put_object(Bucket=bucket, Key="reviews.csv", Body=_csv_bytes(rows))
    spec = inference_spec(
        classifier_uri,
        f"s3://{bucket}/reviews.csv",
        f"s3://{bucket}/classified/",
        task="classify",
        id_field="doc",
        text_field="body",
        batch_size=32,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    m = manifest(s3, bucket, "classified")
    out = [row for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]
    assert [o["id"] for o in out] == [r["doc"] for r in rows]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_root / "clf")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_root / "clf"))
    with torch.inference_mode():
        enc = tok([r["body"] for r in rows], padding=True, truncation=True, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits, -1)
    for o, p in zip(out, probs, strict=True):
        assert set(o["scores"]) == {"negative", "positive"}
        assert o["scores"]["negative"] == pytest.approx(float(p[0]), abs=1e-4)
        assert o["label"] == ("positive" if p[1] > p[0] else "negative")
        assert o["score"] == pytest.approx(float(p.max()), abs=1e-4)


def test_generate_parquet_in_and_out(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    generator_uri: str,
    tmp_root: Path,
    worker: Any,
) -> None:
    rows = [{"prompt": f"the barge number {i} sails to", "n": i} for i in range(60)]
    s3.put_object(Bucket=bucket, Key="prompts.parquet", Body=_parquet_bytes(rows, 16))
    spec = inference_spec(
        generator_uri,
        f"s3://{bucket}/prompts.parquet",
        f"s3://{bucket}/gen/",
        task="generate",
        text_field="prompt",
        id_field="n",
        batch_size=1,
        shard_size=25,
        output_format="parquet",
        params={"max_new_tokens": 6},
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    m = manifest(s3, bucket, "gen")
    assert [p["key"].rsplit("/", 1)[-1] for p in m["parts"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    out = [row for part in m["parts"] for row in read_parquet(s3, bucket, part["key"])]
    assert [o["id"] for o in out] == list(range(60))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tmp_root / "gen")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_root / "gen"))
    with torch.inference_mode():
        for o in out[:10]:
            enc = tok([rows[o["id"]]["prompt"]], return_tensors="pt")
            gen = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            expected = tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            assert o["text"] == expected


def test_prefix_of_several_objects_on_two_workers(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    make_worker: Any,
    database_url: str,
) -> None:
    make_worker()  # a second worker process next to the shared one
    expected_ids: list[str] = []
    texts = [f"sentence {i} for the prefix test" for i in range(1200)]
    objects = {
        "in/a.jsonl": "\n".join(
            json.dumps({"id": f"a{i}", "text": t}) for i, t in enumerate(texts[:300])
        ).encode(),
        "in/b.jsonl.gz": gzip.compress(
            "\n".join(
                json.dumps({"id": f"b{i}", "text": t}) for i, t in enumerate(texts[300:600])
            ).encode()
        ),
        "in/c.csv": _csv_bytes([{"id": f"c{i}", "text": t} for i, t in enumerate(texts[600:900])]),
        "in/d.parquet": _parquet_bytes(
            [{"id": f"d{i}", "text": t} for i, t in enumerate(texts[900:])]
        ),
        "in/_SUCCESS": b"",  # markers are not data
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    for prefix in "abcd":
        expected_ids += [f"{prefix}{i}" for i in range(300)]
    spec = inference_spec(
        minilm_uri,
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        id_field="id",
        batch_size=32,
        shard_size=100,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["shards_total"] == 12
    m = manifest(s3, bucket, "out")
    ids = [row["id"] for part in m["parts"] for row in read_jsonl(s3, bucket, part["key"])]
    assert ids == expected_ids  # every record once, in input order across objects
    assert m["records"]["failed"] == 0

    from db.models import Shard
    from db.session import session_scope

    with session_scope(database_url) as session:
        shards = list(session.scalars(select(Shard).where(Shard.job_id == uuid.UUID(job["id"]))))
    workers = {s.worker for s in shards}
    assert len(workers) == 2, workers
    # the two workers ran at the same time: some shards overlap in time across workers
    spans = [(s.started_at, s.finished_at, s.worker) for s in shards]
    assert any(a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for a in spans for b in spans), (
        "the two workers never ran shards concurrently"
    )
