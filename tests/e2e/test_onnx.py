"""ONNX models of users' own networks, end to end: trained here in torch, exported with
``torch.onnx.export``, registered (``barge.json`` checked against the graph), and run by a real
worker over Parquet records: numeric features (a regressor) and PNG images (a CNN on scikit-learn's
digits, exported with a fixed batch size)."""

from __future__ import annotations

import io
import json
import uuid
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
    onnx_file_reader,
    put_jsonl,
    read_jsonl,
    upload_dir,
    wait_job,
)
from tests.services import ROOT

pytestmark = pytest.mark.e2e

FEATURES = [f"f{i}" for i in range(10)]


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path / "model.onnx"),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None,
        dynamo=False,
    )


def _regressor(directory: Path) -> tuple[torch.nn.Module, Path]:
    """A 10 -> 20 -> 1 MLP trained with SGD on MSE to a synthetic linear target."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=gen)
    y = x @ torch.linspace(-1, 1, 10).unsqueeze(1) + 0.3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Tanh(), torch.nn.Linear(20, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    _export(model, x[:4], directory, dynamic=True)
    return model, directory


def _barge_json(directory: Path, config: dict[str, Any]) -> Path:
    (directory / "barge.json").write_text(json.dumps(config))
    return directory


def _parquet(s3: Any, bucket: str, key: str, table: pa.Table) -> str:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=100)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def _rows(s3: Any, bucket: str, prefix: str, kind: str = "parts") -> list[dict[str, Any]]:
    m = manifest(s3, bucket, prefix)
    return [row for part in m[kind] for row in read_jsonl(s3, bucket, part["key"])]


def test_an_onnx_regressor_is_registered_and_runs_over_parquet_features(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_path: Path,
    worker: Any,
) -> None:
    model, directory = _regressor(tmp_path / "regressor")
    config = {
        "inputs": [{"input": "x", "feature_fields": FEATURES}],
        "output": {"name": "y", "meaning": "regress"},
    }
    uri = upload_dir(
        s3, models_bucket, f"onnx-reg-{uuid.uuid4().hex[:6]}", _barge_json(directory, config)
    )
    name = f"reg-{uuid.uuid4().hex[:6]}"

    # The registry checks barge.json against the graph and says what does not fit.
    wrong_task = api.post(
        "/v1/models", json={"name": name, "uri": uri, "task": "classify"}, headers=auth
    )
    assert wrong_task.status_code == 422 and wrong_task.json()["field"] == "task", wrong_task.text
    assert "output means 'regress'" in wrong_task.json()["message"]
    bad = _barge_json(
        _regressor(tmp_path / "bad")[1],
        {
            "inputs": [{"input": "features", "feature_fields": FEATURES[:9]}],
            "output": {"name": "out", "meaning": "regress"},
        },
    )
    bad_uri = upload_dir(s3, models_bucket, f"onnx-bad-{uuid.uuid4().hex[:6]}", bad)
    refused = api.post(
        "/v1/models", json={"name": name, "uri": bad_uri, "task": "regress"}, headers=auth
    )
    assert refused.status_code == 422 and refused.json()["field"] == "uri", refused.text
    message = refused.json()["message"]
    assert "names graph input 'features', which the graph does not have" in message
    assert "graph input x (float [batch, 10]) is not fed" in message
    assert "output 'out' is not an output of the graph (its outputs: y" in message
    registered = api.post(
        "/v1/models", json={"name": name, "uri": uri, "task": "regress"}, headers=auth
    )
    assert registered.status_code == 201, registered.text

    # Submits that cannot work are refused before anything runs, naming the field.
    text = put_jsonl(s3, bucket, "onnx/text.jsonl", [{"id": 1, "text": "no features here"}])
    refusals = {
        "task": inference_spec(name, text, f"s3://{bucket}/o1/", task="embed"),
        "input": inference_spec(name, text, f"s3://{bucket}/o2/", task="regress"),
        "base_model": {
            "type": "finetune",
            "base_model": name,
            "task": "classify",
            "train": text,
            "model_name": "nope",
        },
    }
    for field, spec in refusals.items():
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert "reads 'f0', 'f1'" in api.post("/v1/jobs", json=refusals["input"], headers=auth).text

    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 10))
    columns: dict[str, Any] = {"id": list(range(300))}
    for j, f in enumerate(FEATURES):
        columns[f] = features[:, j].tolist()
    # f3 is a text column (as a CSV export would give): numbers as text are read, others are
    # per-record errors; f5 has a null.
    columns["f3"] = [repr(v) for v in features[:, 3].tolist()]
    columns["f3"][7] = "n/a"
    columns["f5"][42] = None
    columns["id"][99] = None  # an id that cannot be written
    data = _parquet(s3, bucket, "onnx/features.parquet", pa.table(columns))
    # Shards of 70 records start and end inside the Parquet row groups of 100.
    spec = inference_spec(
        name,
        data,
        f"s3://{bucket}/onnx-reg-out/",
        task="regress",
        id_field="id",
        batch_size=64,
        shard_size=70,
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["records_succeeded"] == 297 and job["progress"]["records_failed"] == 3

    out = _rows(s3, bucket, "onnx-reg-out")
    assert [o["id"] for o in out] == [i for i in range(300) if i not in (7, 42, 99)]
    with torch.inference_mode():
        expected = model(torch.tensor(features, dtype=torch.float32)).squeeze(1).tolist()
    for o in out:
        assert set(o) == {"id", "value"}
        assert o["value"] == pytest.approx(expected[o["id"]], abs=1e-5)
    errors = {e["line"]: e for e in _rows(s3, bucket, "onnx-reg-out", "errors")}
    assert (
        errors[8]["id"] == 7
        and errors[8]["error"] == "feature field 'f3' is 'n/a', expected a number"
    )
    assert errors[43]["id"] == 42 and errors[43]["error"] == "feature field 'f5' has no value"
    assert errors[100] == {
        "id": None,
        "source": data,
        "line": 100,
        "error": "id must be a string or a number, got null (id_field 'id')",
    }

    # The same model over a CSV export: every cell is text; a bad one fails its record alone.
    lines = ["key," + ",".join(FEATURES)]
    lines += [f"r{i}," + ",".join(repr(v) for v in features[i].tolist()) for i in range(20)]
    lines[4] = lines[4].replace(",", ",oops,", 1).rsplit(",", 1)[0]  # r3 (line 5): f0 is 'oops'
    s3.put_object(Bucket=bucket, Key="onnx/features.csv", Body="\n".join(lines).encode())
    spec = inference_spec(
        f"{name}@1",
        f"s3://{bucket}/onnx/features.csv",
        f"s3://{bucket}/onnx-csv-out/",
        task="regress",
        id_field="key",
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    assert wait_job(api, auth, r.json()["id"])["status"] == "succeeded"
    out = _rows(s3, bucket, "onnx-csv-out")
    assert [o["id"] for o in out] == [f"r{i}" for i in range(20) if i != 3]
    for o in out:
        assert o["value"] == pytest.approx(expected[int(o["id"][1:])], abs=1e-5)
    (error,) = _rows(s3, bucket, "onnx-csv-out", "errors")
    assert error == {
        "id": "r3",
        "source": f"s3://{bucket}/onnx/features.csv",
        "line": 5,
        "error": "feature field 'f0' is 'oops', expected a number",
    }


class _Digits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(x.flatten(1))


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_a_digits_cnn_exported_with_a_fixed_batch_scores_what_torch_scores(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_path: Path,
    worker: Any,
) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)  # what the PNGs hold
    inputs = torch.tensor((pixels / 255.0 - 0.5) / 0.5, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    train, test = slice(0, 1200), slice(1200, None)
    torch.manual_seed(0)
    model = _Digits()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(6):
        for start in range(0, 1200, 50):
            batch = slice(start, start + 50)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                model(inputs[train][batch]), labels[train][batch]
            ).backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        torch_pred = model(inputs[test]).argmax(1)
    torch_accuracy = int((torch_pred == labels[test]).sum()) / len(torch_pred)
    assert torch_accuracy > 0.85

    directory = tmp_path / "digits"
    _export(model, inputs[:16], directory, dynamic=False)  # a graph with a fixed batch of 16
    _barge_json(
        directory,
        {
            "inputs": [
                {
                    "input": "x",
                    "image_field": "image",
                    "size": [8, 8],
                    "mode": "L",
                    "mean": [0.5],
                    "std": [0.5],
                }
            ],
            "output": {"name": "y", "meaning": "classify", "labels": [str(d) for d in range(10)]},
        },
    )
    uri = upload_dir(s3, models_bucket, f"onnx-digits-{uuid.uuid4().hex[:6]}", directory)
    test_ids = list(range(1200, len(labels)))
    table = pa.table(
        {
            "id": test_ids,
            "image": pa.array([_png(pixels[i]) for i in test_ids], pa.binary()),
            "label": [str(int(labels[i])) for i in test_ids],
        }
    )
    data = _parquet(s3, bucket, "onnx/digits.parquet", table)
    # 597 records in batches of 50: each batch runs as 16 + 16 + 16 + 2 (padded to 16).
    spec = inference_spec(
        uri, data, f"s3://{bucket}/onnx-digits-out/", task="classify", id_field="id", batch_size=50
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded" and job["progress"]["records_failed"] == 0, job

    out = _rows(s3, bucket, "onnx-digits-out")
    assert [o["id"] for o in out] == test_ids
    truth = {i: str(int(labels[i])) for i in test_ids}
    barge_accuracy = sum(o["label"] == truth[o["id"]] for o in out) / len(out)
    assert barge_accuracy == torch_accuracy
    assert [o["label"] for o in out] == [str(int(p)) for p in torch_pred]
    assert all(set(o["scores"]) == set(truth.values()) | {str(d) for d in range(10)} for o in out)


def test_barge_models_register_says_what_does_not_fit(
    api_url: str,
    barge_env: dict[str, str],
    database_url: str,
    s3: Any,
    models_bucket: str,
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    from cli.errors import EXIT_REFUSED
    from tests.conftest import new_key
    from tests.services import ROOT

    directory = _regressor(tmp_path / "cli")[1]
    good = {
        "inputs": [{"input": "x", "feature_fields": FEATURES}],
        "output": {"name": "y", "meaning": "regress"},
    }
    uri = upload_dir(
        s3, models_bucket, f"onnx-cli-{uuid.uuid4().hex[:6]}", _barge_json(directory, good)
    )
    bad = {**good, "output": {"name": "y", "meaning": "classify", "labels": ["a", "b"]}}
    bad_uri = upload_dir(
        s3, models_bucket, f"onnx-cli-bad-{uuid.uuid4().hex[:6]}", _barge_json(directory, bad)
    )
    env = {
        **os.environ,
        **barge_env,
        "BARGE_API_URL": api_url,
        "BARGE_API_KEY": new_key(database_url, f"cli-onnx-{uuid.uuid4().hex[:6]}"),
    }

    def barge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = barge("models", "register", "net", "--uri", bad_uri, "--task", "classify")
    assert refused.returncode == EXIT_REFUSED, refused  # the API's 422
    assert (
        "output y (float [batch, 1]) scores 1 classes, but barge.json has 2 labels"
        in refused.stderr
    )
    registered = barge("models", "register", "net", "--uri", uri, "--task", "regress")
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == "net@1"


def _directory(path: Path, graph: bytes, meaning: str = "embed") -> Path:
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(graph)
    config = {
        "inputs": [{"input": "x", "feature_fields": ["a", "b", "c"]}],
        "output": {"name": "y", "meaning": meaning},
    }
    return _barge_json(path, config)


def _objects(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_an_onnx_model_that_reads_a_file_of_the_worker_gets_no_byte_of_it(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_path: Path,
    worker: Any,
) -> None:
    """A tensor in an If branch kept as external data at ``alembic.ini``: onnxruntime would
    read it from the worker's working directory (the repository root here) and return its bytes
    as the output. The registry refuses the model, naming the rule; submitted by its URI, the
    worker refuses it before onnxruntime sees it, and no output holds a byte of the file."""
    planted = (ROOT / "alembic.ini").read_bytes()[:48]
    graph = onnx_file_reader("alembic.ini", len(planted), "if_initializer")
    directory = _directory(tmp_path / "reader", graph)
    uri = upload_dir(s3, models_bucket, f"onnx-reader-{uuid.uuid4().hex[:6]}", directory)
    where = "node 1 (If) > then_branch > initializer 'secret'"

    refused = api.post(
        "/v1/models", json={"name": "reader", "uri": uri, "task": "embed"}, headers=auth
    )
    assert refused.status_code == 422 and refused.json()["field"] == "uri", refused.text
    assert f"the graph keeps tensors in external data files ({where})" in refused.json()["message"]

    rows = [{"id": i, "a": 1.0, "b": 2.0, "c": 3.0} for i in range(4)]
    data = put_jsonl(s3, bucket, "onnx/reader.jsonl", rows)
    spec = inference_spec(uri, data, f"s3://{bucket}/onnx-reader-out/", id_field="id")
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "failed", job
    assert f"the graph keeps tensors in external data files ({where})" in job["error"], job
    outputs = _objects(s3, bucket, "onnx-reader-out/")
    assert not any(k.split("/")[-1].startswith("part-") for k in outputs), sorted(outputs)
    secret_floats = json.dumps([float(b) for b in planted])[1:-1]
    for key, body in outputs.items():
        assert planted[:16] not in body and secret_floats.encode() not in body, key


def test_an_onnx_output_over_the_per_record_bound_is_a_per_record_error(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_path: Path,
    worker: Any,
) -> None:
    """A graph whose output width is the largest feature of its batch (so the registry cannot
    see it): the record whose feature is 300,000 is an error naming the size and the limit,
    the records of its batch that fit, run alone, are written, on the record path (JSONL) and
    the columnar one (Parquet); no 300,000-value row reaches a part."""
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["one"], value=one),
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1, axes=[1]),
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0, axes=[0, 1]),
            helper.make_node("Cast", ["m"], ["w"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["w"], ["w1"], axes=[0]),
            helper.make_node("Concat", ["one", "w1"], ["shape"], axis=0),
            helper.make_node("Expand", ["s", "shape"], ["y"]),
        ],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    directory = _directory(tmp_path / "wide", model.SerializeToString(), "regress")
    uri = upload_dir(s3, models_bucket, f"onnx-wide-{uuid.uuid4().hex[:6]}", directory)
    name = f"wide-{uuid.uuid4().hex[:6]}"
    registered = api.post(
        "/v1/models", json={"name": name, "uri": uri, "task": "regress"}, headers=auth
    )
    assert registered.status_code == 201, registered.text

    width = 300_000
    rows = [{"id": i, "a": 1.0, "b": 2.0, "c": float(width if i == 1 else 3)} for i in range(3)]
    inputs = {
        "jsonl": put_jsonl(s3, bucket, "onnx/wide.jsonl", rows),
        "parquet": _parquet(s3, bucket, "onnx/wide.parquet", pa.Table.from_pylist(rows)),
    }
    problem = (
        f"output 'y' gives {width:,} values per record, more than the limit of 262,144 "
        "(BARGE_ONNX_MAX_OUTPUT_VALUES)"
    )
    for kind, data in inputs.items():
        out = f"onnx-wide-{kind}"
        spec = inference_spec(
            name, data, f"s3://{bucket}/{out}/", task="regress", id_field="id", max_failed_ratio=0.5
        )
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        job = wait_job(api, auth, r.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["progress"]["records_failed"] == 1, job
        assert _rows(s3, bucket, out, "errors") == [
            {"id": 1, "source": data, "line": 2, "error": problem}
        ], kind
        assert _rows(s3, bucket, out) == [
            {"id": 0, "values": [6.0, 6.0, 6.0]},
            {"id": 2, "values": [6.0, 6.0, 6.0]},
        ], kind
        sizes = [len(body) for body in _objects(s3, bucket, f"{out}/").values()]
        assert max(sizes) < 10_000, (kind, sizes)
