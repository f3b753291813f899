"""Throughput: a Barge job vs a bare PyTorch loop, same model, data and batch size, same run.

(a) bare loop: records already in memory, tokenize + forward + mean-pool per batch, length-sorted
    within the same windows Barge uses, `torch.inference_mode()`.
(b) Barge: the same records as a JSONL object in S3 (moto's server on loopback), submitted through
    the HTTP API (a real uvicorn process) to Postgres, dispatched over RabbitMQ to a real worker
    process, outputs written back to S3. Timed from submit to the job's final status.

The worker is warmed with a small job first (Barge keeps models loaded across jobs); the cold
figure (including the model load) is printed too.

Run: `make bench` (needs Postgres and RabbitMQ like `make test`).

`--batching`: instead, embed throughput of token-budget batches (a GPU worker's default: padded
tokens per batch at most `batch_size` x `max_length`, over length-sorted windows) against
fixed-count batches of `batch_size` (`max_batch_tokens: 0`, a CPU worker's default), the same job on the same records of mixed
length (2 to 300 words), on one warm worker, the two taking turns for `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = [
    "barge",
    "river",
    "cargo",
    "harbour",
    "engine",
    "crew",
    "night",
    "tide",
    "bridge",
    "lock",
    "canal",
    "grain",
    "coal",
    "steel",
    "container",
    "captain",
    "signal",
    "lantern",
    "rope",
    "anchor",
    "current",
    "shallow",
    "deep",
    "early",
    "late",
    "loaded",
    "empty",
    "north",
    "south",
    "upstream",
    "downstream",
    "quiet",
    "busy",
    "slow",
    "steady",
]


def make_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90))) for _ in range(n)]


def bare_loop(texts: list[str], batch_size: int) -> float:
    """records/s of the plain PyTorch loop."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tests.helpers import minilm_dir
    from worker.runners.records import WINDOW_BATCHES

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()
    window = batch_size * WINDOW_BATCHES
    out: list[list[float]] = []
    started = time.perf_counter()
    with torch.inference_mode():
        for w in range(0, len(texts), window):
            chunk = sorted(texts[w : w + window], key=len)
            for i in range(0, len(chunk), batch_size):
                enc = tok(
                    chunk[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=512,
                    return_tensors="pt",
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.extend(((hidden * mask).sum(1) / mask.sum(1)).tolist())
    return len(texts) / (time.perf_counter() - started)


def barge_job(texts: list[str], batch_size: int, log_dir: Path) -> dict[str, float]:
    from bench.stack import Stack
    from tests.helpers import minilm_dir

    with Stack(log_dir) as stack:
        model = stack.upload_model("minilm", minilm_dir())
        body = "\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)).encode()
        stack.s3.put_object(Bucket="bench", Key="data.jsonl", Body=body)
        stack.s3.put_object(Bucket="bench", Key="warm.jsonl", Body=b'{"text": "warm up"}\n')

        def run_job(input_key: str, out: str) -> tuple[float, dict[str, Any]]:
            spec = {
                "type": "inference",
                "model": model,
                "task": "embed",
                "input": f"s3://bench/{input_key}",
                "output": f"s3://bench/{out}/",
                "batch_size": batch_size,
                "shard_size": 1_000_000,
            }
            return stack.run_job(spec)

        cold, _ = run_job("warm.jsonl", "cold")
        elapsed, job = run_job("data.jsonl", "warm")
        assert job["progress"]["records_succeeded"] == len(texts)
        return {
            "elapsed": elapsed,
            "records_per_second": len(texts) / elapsed,
            "cold_start_seconds": cold,
        }


def mixed_texts(n: int, seed: int = 2) -> list[str]:
    """Texts of 2 to 300 words (most short, a long tail), as real corpora are."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(min(300, 2 + int(rng.expovariate(1 / 40)))))
        for _ in range(n)
    ]


def batching(texts: list[str], batch_size: int, rounds: int, log_dir: Path) -> dict[str, Any]:
    """records/s of the same embed job with token-budget and with fixed-count batches, taking
    turns on one warm worker; the median round of each."""
    import statistics

    from bench.stack import Stack
    from tests.helpers import minilm_dir

    with Stack(log_dir) as stack:
        model = stack.upload_model("minilm", minilm_dir())
        body = "\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)).encode()
        stack.s3.put_object(Bucket="bench", Key="mixed.jsonl", Body=body)
        stack.s3.put_object(Bucket="bench", Key="warm.jsonl", Body=b'{"text": "warm up"}\n')

        def run_job(input_key: str, out: str, **extra: Any) -> float:
            spec = {
                "type": "inference",
                "model": model,
                "task": "embed",
                "input": f"s3://bench/{input_key}",
                "output": f"s3://bench/{out}/",
                "batch_size": batch_size,
                "shard_size": 1_000_000,
                **extra,
            }
            elapsed, job = stack.run_job(spec)
            assert job["progress"]["records_succeeded"] == len(texts) or input_key == "warm.jsonl"
            return elapsed

        run_job("warm.jsonl", "warm")
        seconds: dict[str, list[float]] = {"tokens": [], "fixed": []}
        for n in range(rounds):
            seconds["fixed"].append(run_job("mixed.jsonl", f"fixed-{n}", max_batch_tokens=0))
            budget = batch_size * 512  # the GPU default: batch_size x max_length
            seconds["tokens"].append(run_job("mixed.jsonl", f"tokens-{n}", max_batch_tokens=budget))
            print(
                f"round {n}: fixed-count {len(texts) / seconds['fixed'][-1]:7.1f} records/s, "
                f"token-budget {len(texts) / seconds['tokens'][-1]:7.1f} records/s",
                flush=True,
            )
    rates = {k: len(texts) / statistics.median(v) for k, v in seconds.items()}
    return {
        "seconds": seconds,
        "records_per_second": rates,
        "ratio": rates["tokens"] / rates["fixed"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batching", action="store_true", help="token-budget vs fixed batches")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --batching")
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.batching:
        texts = mixed_texts(args.records)
        found = batching(texts, args.batch_size, args.rounds, log_dir)
        rates = found["records_per_second"]
        print(
            f"{args.records} records of 2-300 words, batch_size {args.batch_size}, MiniLM-L6 embed, "
            f"Barge job submit -> succeeded:\n"
            f"  fixed-count batches : {rates['fixed']:8.1f} records/s\n"
            f"  token-budget batches: {rates['tokens']:8.1f} records/s  ({found['ratio']:.2f}x)"
        )
        (log_dir / "result.json").write_text(json.dumps(found, indent=2))
        return 0
    texts = make_texts(args.records)
    import torch

    print(
        f"{args.records} records, batch {args.batch_size}, MiniLM-L6 embed, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    bare = bare_loop(texts, args.batch_size)
    print(f"bare PyTorch loop : {bare:8.1f} records/s  ({args.records / bare:.1f} s)")
    barge = barge_job(texts, args.batch_size, log_dir)
    ratio = barge["records_per_second"] / bare
    print(
        f"Barge job (e2e)   : {barge['records_per_second']:8.1f} records/s  ({barge['elapsed']:.1f} s, "
        f"submit → succeeded; API → RabbitMQ → worker → S3, Postgres)"
    )
    print(f"ratio Barge / bare: {ratio:.3f}")
    print(
        f"(first job on a cold worker, 1 record, incl. model load: {barge['cold_start_seconds']:.1f} s)"
    )
    (log_dir / "result.json").write_text(
        json.dumps({"bare": bare, **barge, "ratio": ratio}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
