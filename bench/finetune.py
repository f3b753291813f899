"""Fine-tune speed: a Barge fine-tune vs a bare PyTorch training loop, same model, data, batch
size and schedule, same run.

(a) bare loop: examples in memory; each step tokenizes a shuffled batch, runs forward and
    backward, clips gradients and steps AdamW and a linear schedule, as Barge's trainer does.
(b) Barge: the same examples as JSONL in S3 (moto's server on loopback), a fine-tune submitted
    through the HTTP API (a real uvicorn process) to Postgres, run by a real worker process that
    checks the job's status between steps, heartbeats, writes loss events to Postgres, and
    checkpoints to S3 every ``--checkpoint-every`` steps.

Printed: steps/s of each and their ratio, excluding checkpoint stalls (Barge's own timing of its
training steps, from the model's training_summary.json); the checkpoint stall (the time training
stands still while a checkpoint is serialized; uploads run in the background); and the job's
end-to-end time including model load and writing the final model.

Run: `make bench-finetune` (needs Postgres and RabbitMQ like `make test`).
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

from bench.throughput import make_texts  # noqa: E402


def make_examples(n: int, seed: int = 2) -> list[dict[str, str]]:
    rng = random.Random(seed)
    texts = make_texts(n, seed)
    return [{"text": t[: rng.randint(60, 400)], "label": rng.choice("abc")} for t in texts]


def bare_loop(examples: list[dict[str, str]], hp: dict[str, Any]) -> dict[str, float]:
    """Steps/s of a plain PyTorch training loop (model load excluded)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.helpers import minilm_dir
    from worker.runners.finetune.training import epoch_order

    labels = sorted({e["label"] for e in examples})
    torch.manual_seed(hp["seed"])
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(labels)
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["learning_rate"])
    batch = hp["batch_size"]
    steps_per_epoch = -(-len(examples) // batch)
    total = hp["epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (total - s) / total)
    started = time.perf_counter()
    for epoch in range(hp["epochs"]):
        order = epoch_order(len(examples), hp["seed"], epoch)  # the same batches as Barge's
        for i in range(0, len(examples), batch):
            rows = [examples[j] for j in order[i : i + batch]]
            enc = tok(
                [r["text"] for r in rows],
                padding=True,
                truncation=True,
                max_length=hp["max_length"],
                return_tensors="pt",
            )
            target = torch.tensor([labels.index(r["label"]) for r in rows])
            loss = torch.nn.functional.cross_entropy(model(**enc).logits.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    return {"steps": total, "seconds": elapsed, "steps_per_second": total / elapsed}


def barge_finetune(
    examples: list[dict[str, str]], hp: dict[str, Any], every: int, log_dir: Path
) -> dict[str, Any]:
    from bench.stack import BUCKET, Stack
    from tests.helpers import minilm_dir

    with Stack(log_dir) as stack:
        model = stack.upload_model("minilm", minilm_dir())
        body = "\n".join(json.dumps(e) for e in examples).encode()
        stack.s3.put_object(Bucket=BUCKET, Key="train.jsonl", Body=body)
        spec = {
            "type": "finetune",
            "base_model": model,
            "task": "classify",
            "train": f"s3://{BUCKET}/train.jsonl",
            "model_name": "bench",
            "output": f"s3://{BUCKET}/finetune/",
            "hyperparameters": hp,
            "checkpoint_every_steps": every,
            "log_every_steps": 10,
        }
        elapsed, job = stack.run_job(spec)
        summary = json.loads(
            stack.s3.get_object(Bucket=BUCKET, Key="finetune/model/training_summary.json")[
                "Body"
            ].read()
        )
        events = stack.api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()
        checkpoints = [e["data"] for e in events["events"] if e["kind"] == "checkpoint"]
    timing = summary["timing"]
    return {
        "elapsed": elapsed,
        "steps": timing["steps"],
        "train_seconds": timing["train_seconds"],
        "steps_per_second": timing["steps"] / timing["train_seconds"],
        "checkpoints": timing["checkpoints"],
        "checkpoint_stall_seconds": timing["checkpoint_stall_seconds"],
        "upload_seconds": [c["upload_seconds"] for c in checkpoints],
        "load_seconds": timing["load_seconds"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / time.strftime("finetune-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    examples = make_examples(args.examples)
    hp = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": 5e-5,
        "max_length": args.max_length,
        "seed": 0,
    }
    import torch

    print(
        f"{args.examples} examples x {args.epochs} epochs, batch {args.batch_size}, max_length "
        f"{args.max_length}, MiniLM-L6 classify, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    bare = bare_loop(examples, hp)
    print(
        f"bare PyTorch loop : {bare['steps_per_second']:6.2f} steps/s  "
        f"({bare['steps']} steps, {bare['seconds']:.1f} s)"
    )
    barge = barge_finetune(examples, hp, args.checkpoint_every, log_dir)
    ratio = barge["steps_per_second"] / bare["steps_per_second"]
    with_stalls = barge["steps"] / (barge["train_seconds"] + barge["checkpoint_stall_seconds"])
    print(
        f"Barge fine-tune   : {barge['steps_per_second']:6.2f} steps/s  ({barge['steps']} steps, "
        f"{barge['train_seconds']:.1f} s of training steps)"
    )
    print(f"ratio Barge / bare: {ratio:.3f} (excluding checkpoint stalls)")
    print(
        f"checkpoints       : {barge['checkpoints']}, training stood still "
        f"{barge['checkpoint_stall_seconds']:.2f} s in all "
        f"({barge['checkpoint_stall_seconds'] / max(1, barge['checkpoints']):.2f} s each); "
        f"uploads in the background took {sum(barge['upload_seconds']):.2f} s"
    )
    print(f"ratio incl. stalls: {with_stalls / bare['steps_per_second']:.3f}")
    print(
        f"end to end        : {barge['elapsed']:.1f} s from POST to succeeded (model load "
        f"{barge['load_seconds']:.1f} s, data read, final model written and registered)"
    )
    (log_dir / "result.json").write_text(
        json.dumps({"bare": bare, "barge": barge, "ratio": ratio}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
