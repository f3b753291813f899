"""LoRA fine-tune speed and memory: a Barge LoRA fine-tune vs a bare peft training loop (same
model, data, batches, adapter and optimizer, same run), and the peak CPU RSS of Barge's trainer
for a LoRA vs a full fine-tune of the same model.

(a) bare peft loop: chat examples in memory, tokenized as Barge tokenizes them (assistant
    tokens only carry loss); each step pads a batch, runs forward and backward through the
    peft model, clips gradients and steps AdamW over the adapter's weights.
(b) Barge: the same examples as JSONL in S3 (moto's server on loopback), a `generate` fine-tune
    with ``method: lora`` submitted through the HTTP API and run by a real worker process;
    steps/s from Barge's own timing of its training steps (``training_summary.json``).
(c) memory: Barge's ``Trainer`` alone, in a fresh process per method, for a few steps; the
    process's peak RSS (``ru_maxrss``) for ``full`` and for ``lora``.

The model is a random GPT-2 built from a config (no download): ``--layers`` x ``--width``
over MiniLM's tokenizer, with a chat template.

Run: `make bench-lora` (needs Postgres and RabbitMQ like `make test`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LORA = {"type": "lora", "r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}


def build_base(path: Path, layers: int, width: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tests.helpers import CHAT_TEMPLATE, minilm_dir

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok.chat_template = CHAT_TEMPLATE
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=tok.vocab_size,
            n_positions=256,
            n_embd=width,
            n_layer=layers,
            n_head=max(1, width // 64),
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
        )
    ).save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


def examples(n: int) -> list[dict[str, Any]]:
    from tests.helpers import colour_chats

    rows = colour_chats(n, seed=1)
    for i, row in enumerate(rows):  # longer conversations than the tests' (about 60 tokens)
        row["messages"][0]["content"] += " " + " ".join(
            f"word{(i * 7 + k) % 50}" for k in range(40)
        )
    return rows


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": 1e-3,
        "max_length": 128,
        "seed": 0,
    }


def bare_loop(base: Path, rows: list[dict[str, Any]], hp: dict[str, Any]) -> dict[str, float]:
    """Steps/s of a plain peft training loop over the same batches (model load excluded)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.runners.finetune.training import IGNORE, chat_tokens, epoch_order

    torch.manual_seed(hp["seed"])
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        target_modules=LORA["target_modules"],
    )
    model = get_peft_model(model, config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp["learning_rate"], weight_decay=0.0)
    batch = hp["batch_size"]
    steps_per_epoch = -(-len(rows) // batch)
    total = hp["epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (total - s) / total)
    eos = tok.sep_token_id
    started = time.perf_counter()
    for epoch in range(hp["epochs"]):
        order = epoch_order(len(rows), hp["seed"], epoch)  # the same batches as Barge's
        for i in range(0, len(rows), batch):
            tokens = [
                chat_tokens(tok, eos, rows[j]["messages"], hp["max_length"])
                for j in order[i : i + batch]
            ]
            width = max(len(ids) for ids, _ in tokens)
            ids = torch.full((len(tokens), width), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(tokens), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(tokens), width), dtype=torch.long)
            for k, (row_ids, row_labels) in enumerate(tokens):
                ids[k, : len(row_ids)] = torch.tensor(row_ids)
                labels[k, : len(row_labels)] = torch.tensor(row_labels)
                mask[k, : len(row_ids)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    return {"steps": total, "seconds": elapsed, "steps_per_second": total / elapsed}


def barge_lora(
    base: Path, rows: list[dict[str, Any]], hp: dict[str, Any], log_dir: Path
) -> dict[str, Any]:
    from bench.stack import BUCKET, Stack

    with Stack(log_dir) as stack:
        model = stack.upload_model("lora-base", base)
        body = "\n".join(json.dumps(r) for r in rows).encode()
        stack.s3.put_object(Bucket=BUCKET, Key="lora-train.jsonl", Body=body)
        spec = {
            "type": "finetune",
            "base_model": model,
            "task": "generate",
            "train": f"s3://{BUCKET}/lora-train.jsonl",
            "model_name": "bench-lora",
            "output": f"s3://{BUCKET}/lora/",
            "method": LORA,
            "hyperparameters": hp,
            "checkpoint_every_steps": 1000,
            "log_every_steps": 10,
        }
        elapsed, _ = stack.run_job(spec)
        summary = json.loads(
            stack.s3.get_object(Bucket=BUCKET, Key="lora/model/training_summary.json")[
                "Body"
            ].read()
        )
    timing = summary["timing"]
    return {
        "elapsed": elapsed,
        "steps": timing["steps"],
        "train_seconds": timing["train_seconds"],
        "steps_per_second": timing["steps"] / timing["train_seconds"],
        "adapter_bytes": summary["metrics"]["adapter_bytes"],
        "base_bytes": summary["metrics"]["base_bytes"],
    }


def peak_rss(base: Path, method: str, steps: int, batch_size: int) -> dict[str, Any]:
    """Run Barge's trainer for ``steps`` in a fresh process; its peak RSS in MiB."""
    started = time.perf_counter()
    out = subprocess.run(
        [
            *(sys.executable, __file__, "--rss-child", method, "--base", str(base)),
            *("--steps", str(steps), "--batch-size", str(batch_size)),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {**child, "seconds": time.perf_counter() - started}


def rss_child(base: Path, method: str, steps: int, batch_size: int) -> None:
    import torch

    from barge.specs import FinetuneSpec
    from worker.kinds.finetune_data import Messages
    from worker.runners.finetune.lora import parameter_counts
    from worker.runners.finetune.training import Trainer

    rows = examples(steps * batch_size)
    pairs = [(Messages(json.dumps(r["messages"])), r["messages"][-1]["content"]) for r in rows]
    spec = FinetuneSpec.model_validate(
        {
            "type": "finetune",
            "base_model": "s3://bench/base/",
            "task": "generate",
            "train": "s3://bench/train.jsonl",
            "model_name": "rss",
            "method": LORA if method == "lora" else {"type": "full"},
            "hyperparameters": {"epochs": 1, "batch_size": batch_size, "max_length": 128},
        }
    )
    trainer = Trainer(spec, base, torch.device("cpu"), pairs, [])
    while not trainer.done:
        trainer.train_step()
    trainable, total = parameter_counts(trainer.model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"method": method, "peak_rss_mib": round(peak, 1), "trainable": trainable,
                      "parameters": total, "steps": trainer.step}))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rss-steps", type=int, default=6)
    parser.add_argument("--skip-barge", action="store_true", help="bare loop and memory only")
    parser.add_argument("--rss-child", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.base, args.rss_child, args.steps, args.batch_size)
        return 0
    import torch

    log_dir = ROOT / "bench" / "results" / time.strftime("lora-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    base = build_base(
        ROOT / "bench" / "results" / f"gpt2-{args.layers}x{args.width}", args.layers, args.width
    )
    rows = examples(args.examples)
    hp = hyperparameters(args)
    print(
        f"random GPT-2 {args.layers} layers x {args.width} over MiniLM's vocabulary, "
        f"{args.examples} chat examples x {args.epochs} epochs, batch {args.batch_size}, "
        f"LoRA r {LORA['r']} on {', '.join(LORA['target_modules'])}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    result: dict[str, Any] = {}
    for method in ("full", "lora"):
        result[f"rss_{method}"] = peak_rss(base, method, args.rss_steps, args.batch_size)
        r = result[f"rss_{method}"]
        print(
            f"peak RSS, {method:4} : {r['peak_rss_mib']:8.1f} MiB  ({r['trainable']:,} of "
            f"{r['parameters']:,} parameters train; {r['steps']} steps)"
        )
    bare = bare_loop(base, rows, hp)
    result["bare"] = bare
    print(
        f"bare peft loop    : {bare['steps_per_second']:6.2f} steps/s  "
        f"({bare['steps']} steps, {bare['seconds']:.1f} s)"
    )
    if not args.skip_barge:
        barge = barge_lora(base, rows, hp, log_dir)
        result["barge"] = barge
        print(
            f"Barge LoRA        : {barge['steps_per_second']:6.2f} steps/s  ({barge['steps']} "
            f"steps, {barge['train_seconds']:.1f} s of training steps; {barge['elapsed']:.1f} s "
            "POST to succeeded)"
        )
        print(f"ratio Barge / bare: {barge['steps_per_second'] / bare['steps_per_second']:.3f}")
        print(
            f"adapter           : {barge['adapter_bytes']:,} bytes vs base "
            f"{barge['base_bytes']:,} bytes ({barge['adapter_bytes'] / barge['base_bytes']:.2%})"
        )
    (log_dir / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
