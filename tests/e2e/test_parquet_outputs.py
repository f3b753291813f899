"""``output_format: parquet`` on real processes: a job's Parquet part holds the same records, in
the same order, with the same numbers as the JSONL part of the same job written as JSONL (to
float32 precision), in typed columns: embeddings a fixed-size list of float32, scores a map."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import (
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    upload_dir,
    wait_job,
)

pytestmark = pytest.mark.e2e


def _run_both(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, name: str, spec: dict[str, Any]
) -> tuple[list[dict[str, Any]], pa.Table]:
    """The same job as JSONL and as Parquet: the JSONL rows and the Parquet table (all parts
    in order)."""
    outputs = {}
    for fmt in ("jsonl", "parquet"):
        r = api.post(
            "/v1/jobs",
            json={**spec, "output": f"s3://{bucket}/{name}-{fmt}/", "output_format": fmt},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        outputs[fmt] = r.json()["id"]
    for job_id in outputs.values():
        job = wait_job(api, auth, job_id)
        assert job["status"] == "succeeded", job
    jsonl = manifest(s3, bucket, f"{name}-jsonl")
    rows = [row for p in jsonl["parts"] for row in read_jsonl(s3, bucket, p["key"])]
    parts = manifest(s3, bucket, f"{name}-parquet")["parts"]
    assert [p["key"].rsplit("/", 1)[1] for p in parts] == [
        p["key"].rsplit("/", 1)[1].replace(".jsonl", ".parquet") for p in jsonl["parts"]
    ]
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=p["key"])["Body"].read()))
        for p in parts
    ]
    return rows, pa.concat_tables(tables)


def test_embeddings_are_fixed_size_float32_lists_with_the_jsonl_numbers(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    texts = [
        f"barge number {i} carries {'coal' if i % 2 else 'grain'} downstream" for i in range(70)
    ]
    records = [{"doc": f"d{i}", "text": t} for i, t in enumerate(texts)]
    records.insert(5, {"doc": "broken", "no_text": 1})  # a per-record error in both
    data = put_jsonl(s3, bucket, "pq-out/docs.jsonl", records)
    spec = inference_spec(
        minilm_uri, data, "", id_field="doc", batch_size=16, shard_size=30, params={}
    )
    rows, table = _run_both(api, auth, s3, bucket, "pq-embed", spec)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.column("id").to_pylist() == [r["id"] for r in rows] == [f"d{i}" for i in range(70)]
    parquet = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(70, 384)
    jsonl = np.asarray([r["embedding"] for r in rows], dtype=np.float64)
    assert np.array_equal(parquet.astype(np.float64), jsonl.astype(np.float32).astype(np.float64))
    assert np.abs(parquet - jsonl).max() < 1e-6
    assert np.abs(jsonl).max() > 0.01  # real vectors, not zeros


def test_classify_scores_are_a_map_with_the_jsonl_numbers(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, classifier_uri: str, worker: Any
) -> None:
    records = [{"n": i, "text": f"review {i}: {'great' if i % 3 else 'awful'}"} for i in range(40)]
    data = put_jsonl(s3, bucket, "pq-out/reviews.jsonl", records)
    spec = inference_spec(classifier_uri, data, "", task="classify", id_field="n", batch_size=8)
    rows, table = _run_both(api, auth, s3, bucket, "pq-classify", spec)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("scores").type == pa.map_(pa.string(), pa.float64())
    assert table.schema.field("score").type == pa.float64()
    got = table.to_pylist()
    assert [g["id"] for g in got] == [r["id"] for r in rows] == list(range(40))
    for g, r in zip(got, rows, strict=True):
        assert g["label"] == r["label"]
        assert np.float32(g["score"]) == np.float32(r["score"])
        assert {k: np.float32(v) for k, v in g["scores"]} == {
            k: np.float32(v) for k, v in r["scores"].items()
        }


def _onnx_dir(directory: Path, outputs: int, config: dict[str, Any]) -> torch.nn.Module:
    directory.mkdir(parents=True)
    torch.manual_seed(outputs)
    model = torch.nn.Linear(6, outputs).eval()
    torch.onnx.export(
        model,
        (torch.randn(2, 6),),
        str(directory / "model.onnx"),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    (directory / "barge.json").write_text(json.dumps(config))
    return model


def test_onnx_columns_are_written_as_columns_with_the_jsonl_numbers(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, tmp_path: Path, worker: Any
) -> None:
    """ONNX models over Parquet features (the columnar path): an embedder and a classifier,
    with rows that cannot run; both formats give the same records, numbers and errors, and
    the numbers are the model's."""
    fields = [f"f{i}" for i in range(6)]
    x = np.random.default_rng(5).normal(size=(300, 6))
    columns: dict[str, Any] = {"key": pa.array([f"k{i}" for i in range(300)])}
    for j, name in enumerate(fields):
        values = x[:, j].tolist()
        if j == 2:
            values[17] = None  # a missing feature: a per-record error
        columns[name] = pa.array(values, pa.float64())
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=64)
    s3.put_object(Bucket=bucket, Key="pq-out/features.parquet", Body=buf.getvalue())
    feature_input = [{"input": "x", "feature_fields": fields}]
    embedder = _onnx_dir(
        tmp_path / "embed",
        8,
        {"inputs": feature_input, "output": {"name": "y", "meaning": "embed"}},
    )
    labels = ["low", "mid", "high"]
    classifier = _onnx_dir(
        tmp_path / "clf",
        3,
        {
            "inputs": feature_input,
            "output": {"name": "y", "meaning": "classify", "scores": "logits", "labels": labels},
        },
    )
    good = [i for i in range(300) if i != 17]
    with torch.inference_mode():
        want_embed = embedder(torch.tensor(x[good], dtype=torch.float32)).numpy()
        want_probs = torch.softmax(classifier(torch.tensor(x[good], dtype=torch.float32)), -1)
    for name, task in (("embed", "embed"), ("clf", "classify")):
        uri = upload_dir(s3, bucket, f"pq-out/models/{name}", tmp_path / name)
        spec = inference_spec(
            uri,
            f"s3://{bucket}/pq-out/features.parquet",
            "",
            task=task,
            id_field="key",
            batch_size=50,
            shard_size=150,
        )
        rows, table = _run_both(api, auth, s3, bucket, f"pq-onnx-{name}", spec)
        assert table.column("id").to_pylist() == [r["id"] for r in rows] == [f"k{i}" for i in good]
        errors = [
            e
            for fmt in ("jsonl", "parquet")
            for p in manifest(s3, bucket, f"pq-onnx-{name}-{fmt}")["errors"]
            for e in read_jsonl(s3, bucket, p["key"])
        ]
        assert [(e["id"], e["line"]) for e in errors] == [("k17", 18)] * 2
        if task == "embed":
            assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
            got = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 8)
            jsonl = np.asarray([r["embedding"] for r in rows])
            assert np.array_equal(got, jsonl.astype(np.float32))
            assert np.abs(got - want_embed).max() < 1e-5
            continue
        assert table.schema.field("scores").type == pa.map_(pa.string(), pa.float64())
        for g, r, p in zip(table.to_pylist(), rows, want_probs.tolist(), strict=True):
            assert g["label"] == r["label"] == labels[int(np.argmax(p))]
            assert g["score"] == r["score"]
            assert [k for k, _ in g["scores"]] == list(r["scores"]) == labels
            assert [v for _, v in g["scores"]] == pytest.approx(p, abs=1e-5)
            assert dict(g["scores"]) == r["scores"]
