"""CPU seconds of each process of a Barge stack during one ONNX `regress` job, against the bare
loop from S3 on the same data (`bench/onnx.py`'s (a')), twice.

CPU time, unlike wall time, hardly moves with the machine's load: it shows what each part of
Barge (the API, the worker's processes, the S3 server) spends on a job, and how that compares
with what the bare loop spends. The job is waited on with `GET /v1/jobs/{id}?wait=60`.

Run: `python bench/job_cpu.py [--hidden 2048] [--rounds 2]` (needs Postgres and RabbitMQ like
`make test`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/job_cpu.py`, this file's folder comes first on sys.path, where bench/onnx.py
# would stand in for the `onnx` package: take the folder off (bench.* imports go through ROOT).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

Times = dict[int, tuple[str, float]]


def cpu_times() -> Times:
    """pid -> (a short name, user + system CPU seconds) of this process and its descendants."""
    import psutil

    me = psutil.Process()
    out: Times = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = (" ".join(p.cmdline()[1:4])[-48:], t.user + t.system)
        except psutil.Error:
            continue
    return out


def spent(before: Times, after: Times) -> list[tuple[float, str]]:
    """(CPU seconds, name) of each process that used more than 10 ms between the two."""
    rows = []
    for pid, (name, total) in after.items():
        used = total - before.get(pid, (name, 0.0))[1]
        if used > 0.01:
            rows.append((used, name))
    return sorted(rows, reverse=True)


def show(what: str, wall: float, rows: list[tuple[float, str]]) -> None:
    print(f"{what}: {wall:.2f} s wall, {sum(r[0] for r in rows):.2f} s CPU")
    for used, name in rows[:6]:
        print(f"    {used:6.2f} s  {name}")


def main() -> int:
    import numpy as np

    from bench import onnx as bench_onnx
    from bench.stack import Stack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = np.random.default_rng(0).normal(size=(args.records, 128))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bench_onnx.export_regressor(Path(tmp) / "model", 128, args.hidden)
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        with Stack(log_dir) as stack:
            model = stack.upload_model("regressor", model_dir)
            put = stack.s3.put_object
            put(Bucket="bench", Key="f.parquet", Body=bench_onnx.parquet_bytes(data))
            put(Bucket="bench", Key="w.parquet", Body=bench_onnx.parquet_bytes(data[:8]))

            def job(key: str, out: str) -> tuple[float, dict[str, Any]]:
                spec = {
                    "type": "inference",
                    "model": model,
                    "task": "regress",
                    "input": f"s3://bench/{key}",
                    "output": f"s3://bench/{out}/",
                    "id_field": "id",
                    "batch_size": 256,
                    "shard_size": 1_000_000,
                }
                return stack.run_job(spec)

            job("w.parquet", "cold")  # the worker warmed
            for r in range(args.rounds):
                before = cpu_times()
                wall, _ = job("f.parquet", f"out-{r}")
                show(f"round {r + 1}, Barge job", wall, spent(before, cpu_times()))
                before = cpu_times()
                started = time.perf_counter()
                bench_onnx.bare_loop_from_s3(stack.s3, model_dir, "f.parquet", 256)
                wall = time.perf_counter() - started
                show(f"round {r + 1}, bare loop from S3", wall, spent(before, cpu_times()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
