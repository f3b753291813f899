"""Planning a prefix of many small JSONL objects: Barge's planner (which reads each object whole
to count its records and split it into shards) vs a bare loop fetching the same objects.

(a) bare loop: one boto3 GET per object, ``--threads`` at a time (a thread pool, results taken
    in key order), each body read and its non-blank lines counted;
(b) Barge: ``barge.records.plan_objects_ranges`` over the same objects, ``--threads`` concurrent
    GETs (BARGE_INPUT_FETCH_THREADS; ``barge.storage.S3Store``, its retries), in order;
(c) Barge one object at a time (``threads=1``): how the planner read them before.

The objects are on moto's S3 server on loopback, started by the bench. Prints objects/s of each
and (b) ÷ (a). Run: `python bench/many_objects.py --objects 200 --threads 8`.

``--job``: a whole Barge job over the prefix instead (``bench.stack``: API, worker, Postgres,
RabbitMQ, moto), MiniLM ``embed``, submit to succeeded, against a bare loop in the same run
that fetches the same objects with the same concurrency (``--threads`` GETs, in order), parses
their lines and runs the same model in batches of ``--batch-size``; twice: packing off
(``BARGE_PACK_MAX_OBJECTS=1``: a shard per object, as before packing) and on (the default).
Prints records/s of each and Barge ÷ bare. Run:
`python bench/many_objects.py --job --objects 2000 --records 5 --threads 8`.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--records", type=int, default=20, help="records per object")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--job", action="store_true", help="a whole job vs a bare model loop")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument(
        "--rounds", type=int, default=1, help="--job: timed jobs, bare loops between"
    )
    parser.add_argument(
        "--modes", default="off,on", help="--job: packing off, on, or both (off,on)"
    )
    args = parser.parse_args()
    if args.job:
        return jobs(args)

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


def jobs(args: argparse.Namespace) -> int:
    """Barge ÷ bare for a job over the prefix, packing off then on."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        modes = (("off", "packing off (a shard per object)", "1"), ("on", "packing on", "1000"))
        for mode, name, pack in modes:
            if mode not in args.modes.split(","):
                continue
            log_dir = Path(tmp) / f"pack-{pack}"
            log_dir.mkdir()
            rows[name] = job_vs_bare(args, log_dir, pack)
    records = args.objects * args.records
    print(f"{args.objects} objects of {args.records} records, {args.threads} fetch threads")
    for name, (barge, bare, shards) in rows.items():
        print(
            f"{name:<34} barge {records / barge:8.1f} records/s ({barge:.2f} s, {shards} shards)"
            f"  bare {records / bare:8.1f} records/s ({bare:.2f} s)  barge / bare {bare / barge:.2f}"
        )
    return 0


def job_vs_bare(args: argparse.Namespace, log_dir: Path, pack: str) -> tuple[float, float, int]:
    """(seconds of the Barge job, of the bare loop, shards of the job) on a fresh stack."""
    from bench.stack import BUCKET, Stack
    from tests.helpers import minilm_dir

    with Stack(
        log_dir, BARGE_PACK_MAX_OBJECTS=pack, BARGE_INPUT_FETCH_THREADS=str(args.threads)
    ) as stack:
        model = stack.upload_model("minilm", minilm_dir())
        keys = [f"in/obj-{i:05d}.jsonl" for i in range(args.objects)]

        def put(item: tuple[int, str]) -> None:
            i, key = item
            lines = [
                json.dumps({"id": f"{i}-{j}", "text": f"object {i} record {j} of the bench"})
                for j in range(args.records)
            ]
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines) + "\n").encode())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, enumerate(keys)))
        stack.s3.put_object(Bucket=BUCKET, Key="warm/one.jsonl", Body=b'{"text": "warm"}\n')
        spec = {
            "type": "inference",
            "model": model,
            "task": "embed",
            "batch_size": args.batch_size,
            "shard_size": args.shard_size,
        }
        stack.run_job({**spec, "input": "s3://bench/warm/", "output": "s3://bench/warm-out/"})
        barge, job = stack.run_job({**spec, "input": "s3://bench/in/", "output": "s3://bench/out/"})
        assert job["progress"]["records_succeeded"] == len(keys) * args.records, job
        rows = stack.api.get(f"/v1/jobs/{job['id']}/shards").json()["shards"]
        print_breakdown(job, rows)
        # the machine's load moves: a bare loop before and after, their mean is the bar
        bare = [bare_model_loop(stack.s3, keys, args.threads, args.batch_size)]
        for n in range(args.rounds):
            out = f"s3://bench/out-{n}/"
            elapsed, job = stack.run_job({**spec, "input": "s3://bench/in/", "output": out})
            bare.append(bare_model_loop(stack.s3, keys, args.threads, args.batch_size))
            pair = (bare[-2] + bare[-1]) / 2
            print(
                f"  round {n + 1}: barge {elapsed:.2f} s, bare {pair:.2f} s, {pair / elapsed:.2f}"
            )
            barge = elapsed if n == 0 else min(barge, elapsed)
    return barge, sum(bare) / len(bare), len(rows)


def print_breakdown(job: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    """Where the job's time went: submit to its first shard (planning, dispatch), its shards
    first start to last end, the last end to the job's end (finalizing)."""
    from datetime import datetime

    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    first = min(at(s["started_at"]) for s in shards)
    last = max(at(s["finished_at"]) for s in shards)
    busy = sum(at(s["finished_at"]) - at(s["started_at"]) for s in shards)
    print(
        f"  job {job['id']}: submit to first shard {first - at(job['created_at']):.2f} s, "
        f"shards {last - first:.2f} s ({busy:.2f} s in shards), "
        f"last shard to finished {at(job['finished_at']) - last:.2f} s"
    )


def bare_model_loop(s3: Any, keys: list[str], threads: int, batch_size: int) -> float:
    """Seconds to fetch ``keys`` (``threads`` GETs at a time, taken in order), parse their
    lines and embed their texts with MiniLM (mean-pooled) in batches of ``batch_size``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bench.stack import BUCKET
    from tests.helpers import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()

    def fetch(key: str) -> list[str]:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return [json.loads(line)["text"] for line in body.splitlines() if line.strip()]

    def embed(texts: list[str]) -> None:
        enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).tolist()

    started = time.perf_counter()
    with torch.inference_mode(), ThreadPoolExecutor(threads) as pool:
        batch: list[str] = []
        for texts in pool.map(fetch, keys):
            batch.extend(texts)
            while len(batch) >= batch_size:
                embed(batch[:batch_size])
                batch = batch[batch_size:]
        if batch:
            embed(batch)
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
