"""The OpenAI adapter's cost: an embeddings batch through /openai/v1 (official `openai` client:
upload, create, poll, download) vs the same records as a native Barge job, same model, batch
size, stack and run. Runs alternate (native, batch, native, batch, ...) on one warm worker; the
median of each is compared.

Run: `python bench/openai_batch.py [--records 2000] [--rounds 2]` (needs Postgres and RabbitMQ
like `make test`, and the dev extra for the `openai` client).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import make_texts  # noqa: E402

BATCH_SIZE = 32  # what a batch's job uses (services.openai_batches.BATCH_SIZE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / time.strftime("openai-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    texts = make_texts(args.records)

    import openai

    from bench.stack import Stack
    from tests.helpers import minilm_dir, upload_dir

    with Stack(log_dir) as stack:
        stack.s3.create_bucket(Bucket="barge")  # the default scopes: s3://barge/<tenant>/
        model = upload_dir(stack.s3, "barge", "bench/models/minilm", minilm_dir())
        native_input = "s3://barge/bench/native/data.jsonl"
        body = "\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)).encode()
        stack.s3.put_object(Bucket="barge", Key="bench/native/data.jsonl", Body=body)
        client = openai.OpenAI(
            base_url=str(stack.api.base_url).rstrip("/") + "/openai/v1",
            api_key=stack.api.headers["Authorization"].removeprefix("Bearer "),
        )
        lines = "\n".join(
            json.dumps(
                {
                    "custom_id": f"r-{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": model, "input": t},
                }
            )
            for i, t in enumerate(texts)
        ).encode()

        def native(n: int) -> float:
            spec = {
                "type": "inference",
                "model": model,
                "task": "embed",
                "input": native_input,
                "output": f"s3://barge/bench/native/out-{n}/",
                "batch_size": BATCH_SIZE,
                "params": {"normalize": True},
                "shard_size": 1_000_000,
            }
            elapsed, job = stack.run_job(spec)
            assert job["progress"]["records_succeeded"] == len(texts)
            return elapsed

        def batch() -> float:
            started = time.perf_counter()
            source = client.files.create(file=("in.jsonl", lines), purpose="batch")
            created = client.batches.create(
                input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
            )
            while (done := client.batches.retrieve(created.id)).status not in (
                "completed",
                "failed",
                "cancelled",
            ):
                time.sleep(0.2)
            assert done.status == "completed" and done.output_file_id, done
            out = client.files.content(done.output_file_id).text.splitlines()
            assert len(out) == len(texts)
            return time.perf_counter() - started

        stack.s3.put_object(Bucket="barge", Key="bench/warm.jsonl", Body=b'{"text": "warm"}\n')
        stack.run_job(
            {
                "model": model,
                "task": "embed",
                "input": "s3://barge/bench/warm.jsonl",
                "output": "s3://barge/bench/warm/",
            }
        )
        native_s: list[float] = []
        batch_s: list[float] = []
        for n in range(args.rounds):
            native_s.append(native(n))
            batch_s.append(batch())
            print(f"round {n}: native {native_s[-1]:.1f} s, batch {batch_s[-1]:.1f} s")
    n_rate = len(texts) / statistics.median(native_s)
    b_rate = len(texts) / statistics.median(batch_s)
    result: dict[str, Any] = {
        "records": len(texts),
        "batch_size": BATCH_SIZE,
        "native_seconds": native_s,
        "batch_seconds": batch_s,
        "native_records_per_second": n_rate,
        "batch_records_per_second": b_rate,
        "ratio": b_rate / n_rate,
    }
    print(
        f"native job : {n_rate:7.1f} records/s\n"
        f"OpenAI batch (upload → create → completed → output downloaded): {b_rate:7.1f} records/s\n"
        f"ratio batch / native: {b_rate / n_rate:.3f}"
    )
    (log_dir / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
