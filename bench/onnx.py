"""ONNX throughput: a Barge `regress` job over Parquet features vs onnxruntime in a bare loop,
same model, same batches, same run.

(a) bare loop: the features already in memory as one float32 array, `InferenceSession.run` on
    consecutive slices of `--batch-size` records (the CPU provider, or CUDA's where onnxruntime
    has it, as the worker picks).
(a') bare loop from S3: the same, but first reading the Parquet object from the same S3 server
    (one GET, pyarrow, the feature columns to one float32 array) and timed from the GET: what
    the job cannot avoid paying on this machine, where the S3 server shares its cores.
(b) Barge: the same records as a Parquet object in S3 (moto's server on loopback), submitted
    through the HTTP API (a real uvicorn process) to Postgres, dispatched over RabbitMQ to a
    real worker process, which reads the rows, turns each into its feature vector (a missing or
    non-numeric value would be a per-record error), runs the same batches and writes the values
    back to S3. Timed from submit to the job's final status (seen through `?wait=`), on a worker
    warmed by a first job.

(c) with `--small-jobs N`: a small job's fixed costs on the warm worker, N times each for an
    8-record and a 1,000-record Parquet object: the client's submit -> seen `succeeded` (through
    `?wait=`), and from the server's own timestamps (same host, same clock) the steps
    between: POST -> created_at (the API), created_at -> started_at (planning: the model
    directory checked, the object's footer read, the shard created and sent), -> the shard's
    started_at (the message to the worker, the claim), -> its finished_at (model from the
    cache, the read, the model, the PUT, the settle), -> the job's finished_at (finalize:
    the manifest), -> seen by the client. Medians printed.

The regressor is an MLP `--features` -> `--hidden` -> `--hidden` -> 1 with random weights,
exported with `torch.onnx.export` (a dynamic batch axis). With a tiny network (`--hidden 20`)
the figure measures Barge's per-record cost rather than the model's.

Run: `python bench/onnx.py [--small-jobs 10]` (needs Postgres and RabbitMQ like `make test`).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/onnx.py`, this file's folder comes first on sys.path, and this module
# would stand in for the `onnx` package: take the folder off (bench.* imports go through ROOT).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def export_regressor(directory: Path, features: int, hidden: int) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    ).eval()
    directory.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.randn(2, features),),
        str(directory / "model.onnx"),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    config = {
        "inputs": [{"input": "x", "feature_fields": [f"f{i}" for i in range(features)]}],
        "output": {"name": "y", "meaning": "regress"},
    }
    (directory / "barge.json").write_text(json.dumps(config))
    return directory


def bare_loop(model_dir: Path, data: Any, batch_size: int) -> float:
    """records/s of onnxruntime over the in-memory array, batch by batch."""
    import numpy as np
    import onnxruntime as ort

    from barge.settings import get_settings
    from worker.models.onnx import providers

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        (model_dir / "model.onnx").read_bytes(), options, providers=providers(get_settings())
    )
    x = np.ascontiguousarray(data, dtype=np.float32)
    out = []
    started = time.perf_counter()
    for start in range(0, len(x), batch_size):
        (y,) = session.run(["y"], {"x": x[start : start + batch_size]})
        out.extend(y[:, 0].tolist())
    return len(x) / (time.perf_counter() - started)


def bare_loop_from_s3(s3: Any, model_dir: Path, key: str, batch_size: int) -> float:
    """records/s of the bare loop timed from one GET of the Parquet object (pyarrow reads it
    and the feature columns become one float32 array first)."""
    import numpy as np
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket="bench", Key=key)["Body"].read()))
    features = [name for name in table.column_names if name.startswith("f")]
    x = np.column_stack([table.column(name).to_numpy() for name in features]).astype(np.float32)
    read = time.perf_counter() - started
    loop = bare_loop(model_dir, x, batch_size)
    return len(x) / (read + len(x) / loop)


def parquet_bytes(data: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": pa.array(range(len(data)))}
    for j in range(data.shape[1]):
        columns[f"f{j}"] = pa.array(data[:, j])
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=8192)
    return buf.getvalue()


def at(value: str) -> float:
    """An API timestamp as seconds since the epoch."""
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


STEPS = ("api", "plan", "dispatch", "shard", "finalize", "seen")


def small_job(stack: Any, spec: dict[str, Any]) -> dict[str, float]:
    """One job, waited on (`?wait=`): the client's submit -> succeeded and each step's seconds."""
    sent = time.time()
    job = stack.api.post("/v1/jobs", json=spec).raise_for_status().json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        job = stack.api.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
    seen = time.time()
    assert job["status"] == "succeeded", job
    (shard,) = stack.api.get(f"/v1/jobs/{job['id']}/shards").json()["shards"]
    marks = [
        sent,
        at(job["created_at"]),
        at(job["started_at"]),
        at(shard["started_at"]),
        at(shard["finished_at"]),
        at(job["finished_at"]),
        seen,
    ]
    steps = {name: b - a for name, a, b in zip(STEPS, marks, marks[1:], strict=False)}
    return {"client": seen - sent, **steps}


def small_jobs(stack: Any, model: str, data: Any, batch_size: int, n: int) -> dict[str, Any]:
    """(c): ``n`` jobs of 8 records and of 1,000, alternating; every figure and the medians."""
    import statistics

    sizes = (8, 1000)
    for size in sizes:
        stack.s3.put_object(
            Bucket="bench", Key=f"small-{size}.parquet", Body=parquet_bytes(data[:size])
        )
    runs: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    for i in range(n):
        for size in sizes:
            spec = {
                "type": "inference",
                "model": model,
                "task": "regress",
                "input": f"s3://bench/small-{size}.parquet",
                "output": f"s3://bench/small/{size}-{i}/",
                "id_field": "id",
                "batch_size": batch_size,
            }
            runs[size].append(small_job(stack, spec))
    medians = {
        size: {k: statistics.median(r[k] for r in rs) for k in ("client", *STEPS)}
        for size, rs in runs.items()
    }
    for size, m in medians.items():
        steps = ", ".join(f"{k} {m[k] * 1000:.0f}" for k in STEPS)
        print(
            f"small job, {size} records (median of {n}): submit -> seen succeeded "
            f"{m['client'] * 1000:.0f} ms = {steps} ms"
        )
    return {"runs": runs, "medians": medians}


def run_rounds(
    model_dir: Path, data: Any, batch_size: int, rounds: int, log_dir: Path, small: int = 0
) -> dict[str, Any]:
    """Start a stack, warm its worker, then ``rounds`` times: a bare loop, then the Barge job,
    and one more bare loop at the end; each job is compared with the bare loops either side of
    it (the machine's load can change between them)."""
    from bench.stack import Stack

    with Stack(log_dir) as stack:
        model = stack.upload_model("onnx-regressor", model_dir)
        stack.s3.put_object(Bucket="bench", Key="features.parquet", Body=parquet_bytes(data))
        stack.s3.put_object(Bucket="bench", Key="warm.parquet", Body=parquet_bytes(data[:8]))

        def run_job(input_key: str, out: str) -> tuple[float, dict[str, Any]]:
            spec = {
                "type": "inference",
                "model": model,
                "task": "regress",
                "input": f"s3://bench/{input_key}",
                "output": f"s3://bench/{out}/",
                "id_field": "id",
                "batch_size": batch_size,
                "shard_size": 1_000_000,
            }
            return stack.run_job(spec)

        cold, _ = run_job("warm.parquet", "cold")
        bare = [bare_loop(model_dir, data, batch_size)]
        from_s3 = []
        jobs = []
        for r in range(rounds):
            elapsed, job = run_job("features.parquet", f"warm-{r}")
            assert job["progress"]["records_succeeded"] == len(data), job
            jobs.append(len(data) / elapsed)
            bare.append(bare_loop(model_dir, data, batch_size))
            from_s3.append(bare_loop_from_s3(stack.s3, model_dir, "features.parquet", batch_size))
            ratio = jobs[-1] / ((bare[-2] + bare[-1]) / 2)
            print(
                f"round {r + 1}: bare {bare[-2]:9.1f} | Barge job {jobs[-1]:9.1f} ({elapsed:.1f} s) "
                f"| bare {bare[-1]:9.1f} records/s -> ratio {ratio:.3f}; bare from S3 "
                f"{from_s3[-1]:9.1f} records/s -> ratio {jobs[-1] / from_s3[-1]:.3f}"
            )
        result = {"cold_start_seconds": cold, "bare": bare, "jobs": jobs, "bare_from_s3": from_s3}
        if small:
            result["small_jobs"] = small_jobs(stack, model, data, batch_size, small)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--small-jobs",
        type=int,
        default=0,
        metavar="N",
        help="also time N jobs of 8 and of 1,000 records on the warm worker, step by step",
    )
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / time.strftime("onnx-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    import statistics

    import numpy as np
    import onnxruntime as ort

    data = np.random.default_rng(0).normal(size=(args.records, args.features))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_regressor(Path(tmp) / "model", args.features, args.hidden)
        print(
            f"{args.records} records, batch {args.batch_size}, MLP {args.features}->{args.hidden}->"
            f"{args.hidden}->1, onnxruntime {ort.__version__}, providers "
            f"{ort.get_available_providers()}; bare loop and Barge job (Parquet in S3 -> worker "
            "-> S3, submit -> succeeded) alternate"
        )
        result = run_rounds(model_dir, data, args.batch_size, args.rounds, log_dir, args.small_jobs)
    bare, jobs = result["bare"], result["jobs"]
    ratios = [job / ((bare[i] + bare[i + 1]) / 2) for i, job in enumerate(jobs)]
    print(
        f"median: bare {statistics.median(bare):.1f} records/s, Barge {statistics.median(jobs):.1f} "
        f"records/s, ratio Barge / bare (each job against the bare loops either side) "
        f"{statistics.median(ratios):.3f}"
    )
    from_s3 = [job / b for job, b in zip(jobs, result["bare_from_s3"], strict=True)]
    print(
        f"median: bare from S3 {statistics.median(result['bare_from_s3']):.1f} records/s, ratio "
        f"Barge / bare from S3 {statistics.median(from_s3):.3f}"
    )
    print(
        f"(first job on a cold worker, 8 records, incl. model load: {result['cold_start_seconds']:.1f} s)"
    )
    (log_dir / "result.json").write_text(
        json.dumps({"args": vars(args), **result, "ratios": ratios}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
