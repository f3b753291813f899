"""A shard's read of a Parquet object from S3 (moto's server on loopback), alone: Barge's
``row_batches`` over every row of the object (all its columns, record batches of 8,192 rows, as
the ONNX columnar path reads them) against one GET of the whole object read by pyarrow (the bare
loop's read in `bench/onnx.py`).

Each round reads, in turn: a new copy of the object (its footer unknown to this process: what
a shard pays on a worker that has not read the object before), the same copy again (its footer
known), and the bare read. For each: the GETs sent (counted by a hook on the boto3 client), the
seconds to the first record batch and to the last, and the CPU seconds the S3 server spent
(on this machine it shares the cores). Medians printed.

Run: `python bench/parquet_read.py [--rounds 5]` (no other services needed).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def read_rows(store: Any, info: Any, rows: int) -> tuple[float, float]:
    """Seconds to the first record batch and to the last of ``row_batches`` over every row."""
    from barge.records import Limits, Range
    from barge.records.parquet import row_batches

    limits = Limits(object_bytes=1 << 34, record_bytes=1 << 20)
    started = time.perf_counter()
    first = None
    n = 0
    for _, batch in row_batches(store, info, Range(0, rows, 1), limits, lambda b: b, None, 8192):
        first = first or time.perf_counter() - started
        n += batch.num_rows
    assert n == rows, n
    return first or 0.0, time.perf_counter() - started


def bare_read(s3: Any, key: str) -> tuple[float, float]:
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket="bench", Key=key)["Body"].read()))
    assert table.num_rows
    took = time.perf_counter() - started
    return took, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "bench")  # moto takes any

    import boto3
    import numpy as np
    import psutil

    from barge.settings import Settings
    from barge.storage import S3Store, S3Uri
    from bench.onnx import parquet_bytes
    from tests.services import MotoServer

    body = parquet_bytes(np.random.default_rng(0).normal(size=(args.records, args.features)))
    with tempfile.TemporaryDirectory() as tmp:
        moto = MotoServer(Path(tmp) / "moto.log")
        try:
            server = psutil.Process(moto.proc.pid)
            settings = Settings(storage_backend="s3", s3_endpoint_url=moto.url)
            store = S3Store(settings)
            gets: list[int] = []
            store.client.meta.events.register(
                "provide-client-params.s3.GetObject", lambda **_: gets.append(1)
            )
            s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
            s3.create_bucket(Bucket="bench")
            results: dict[str, list[tuple[int, float, float, float]]] = {}
            for r in range(args.rounds):
                key = f"features-{r}.parquet"
                s3.put_object(Bucket="bench", Key=key, Body=body)
                info = store.head(S3Uri("bench", key))
                assert info is not None
                for name, read in (
                    ("Barge, footer unknown", lambda i=info: read_rows(store, i, args.records)),
                    ("Barge, footer known", lambda i=info: read_rows(store, i, args.records)),
                    ("bare: one GET, pyarrow", lambda key=key: bare_read(s3, key)),
                ):
                    gets.clear()
                    cpu = server.cpu_times()
                    first, total = read()
                    after = server.cpu_times()
                    moto_cpu = after.user + after.system - cpu.user - cpu.system
                    sent = len(gets) if name.startswith("Barge") else 1
                    results.setdefault(name, []).append((sent, first, total, moto_cpu))
        finally:
            moto.stop()
    print(
        f"{args.records} rows x {args.features + 1} columns, {len(body) / 1e6:.1f} MB, "
        f"row groups of 8,192; load average {psutil.getloadavg()[0]:.2f}; medians of {args.rounds}"
    )
    for name, rows in results.items():
        sent, first, total, moto_cpu = (statistics.median(c) for c in zip(*rows, strict=True))
        print(
            f"{name:24s}: {sent:.0f} GETs, first batch {first * 1000:6.0f} ms, all rows "
            f"{total * 1000:6.0f} ms, S3 server CPU {moto_cpu * 1000:5.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
