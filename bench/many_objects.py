"""Planning a prefix of many small JSONL objects: Barge's planner (which reads each object whole
to count its records and split it into shards) vs a bare loop fetching the same objects.

(a) bare loop: one boto3 GET per object, ``--threads`` at a time (a thread pool, results taken
    in key order), each body read and its non-blank lines counted;
(b) Barge: ``barge.records.plan_objects_ranges`` over the same objects, ``--threads`` concurrent
    GETs (BARGE_INPUT_FETCH_THREADS; ``barge.storage.S3Store``, its retries), in order;
(c) Barge one object at a time (``threads=1``): how the planner read them before.

The objects are on moto's S3 server on loopback, started by the bench. Prints objects/s of each
and (b) ÷ (a). Run: `python bench/many_objects.py --objects 200 --threads 8`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--records", type=int, default=20, help="records per object")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    from tests.services import MotoServer

    with tempfile.TemporaryDirectory() as tmp:
        moto = MotoServer(Path(tmp) / "moto.log")
        try:
            rows = run(moto.url, args)
        finally:
            moto.stop()
    for name, seconds in rows.items():
        print(f"{name:<34} {args.objects / seconds:9.1f} objects/s  ({seconds:.3f} s)")
    print(f"barge pooled / bare loop: {rows['bare loop'] / rows['barge pooled']:.2f}")
    return 0


def run(endpoint: str, args: argparse.Namespace) -> dict[str, float]:
    os.environ.update(
        {
            "BARGE_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "BARGE_INPUT_FETCH_THREADS": str(args.threads),
        }
    )
    import boto3

    from barge.records import Format, plan_objects_ranges, resolve_inputs
    from barge.settings import get_settings
    from barge.storage import S3Store

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    keys = [f"in/obj-{i:05d}.jsonl" for i in range(args.objects)]
    for i, key in enumerate(keys):
        lines = [json.dumps({"id": f"{i}-{j}", "text": f"record {j}"}) for j in range(args.records)]
        s3.put_object(Bucket="bench", Key=key, Body=("\n".join(lines) + "\n").encode())
    store = S3Store(get_settings())
    objects = [(info, Format("jsonl", False)) for info in resolve_inputs(store, "s3://bench/in/")]
    expected = args.objects * args.records

    def bare() -> int:
        def fetch(key: str) -> int:
            body = s3.get_object(Bucket="bench", Key=key)["Body"].read()
            return sum(1 for line in body.splitlines() if line.strip())

        with ThreadPoolExecutor(args.threads) as pool:
            return sum(pool.map(fetch, keys))

    def barge(threads: int) -> int:
        return sum(n for _, n in plan_objects_ranges(store, objects, 1000, threads=threads))

    runs = {
        "bare loop": bare,
        "barge pooled": lambda: barge(args.threads),
        "barge one at a time": lambda: barge(1),
    }
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            started = time.perf_counter()
            assert fn() == expected
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    return best


if __name__ == "__main__":
    raise SystemExit(main())
