"""Generation throughput: Barge's generation engines against bare loops, same model, requests and
threads, in one run.

The model is a random Llama (4 layers, hidden size 256 by default) over MiniLM's tokenizer with a
chat template; the requests are chat prompts of mixed length rendered with that template, all
with the same ``max_tokens``, greedy. Each path is one function of (``Setup``) returning the
completion tokens it made and the seconds it took; every path is warmed first on a few requests
(kernels, allocator, caches), then timed on all of them. Paths:

- ``generate-static``: bare ``model.generate`` over length-sorted, left-padded batches of 16;
- ``generate-batch``: bare transformers continuous batching (``model.generate_batch``, default
  config);
- ``generate-one``: bare ``model.generate`` one prompt at a time (``--one-at-a-time``; slow);
- ``engine-batched`` / ``engine-continuous`` / ``engine-vllm``: Barge's engines
  (``worker.models.engines``), as a shard runs them;
- ``vllm-bare``: a bare ``vllm.LLM.generate`` loop (CUDA, vLLM installed);
- ``openai-e2e``: the same chats as a chat-completions batch through the real ``/openai/v1``
  surface (the official ``openai`` client: upload, create, poll until completed, download the
  output) of a real stack (``bench.stack``: API and worker processes, Postgres, RabbitMQ, moto's
  S3), the worker generating with the engine ``BARGE_GENERATION_ENGINE`` picks (``auto``);
  started once and warmed like the others (``--e2e``; needs Postgres and RabbitMQ like ``make
  test``). Its "per CPU second" counts this process only and means nothing.

Completion tokens/s (and per CPU second, steadier on a busy machine) and each path's ratio to
the best bare loop are printed and written to ``bench/results/generate-<time>/result.json``.
Adding a path (the end-to-end row through the OpenAI surface) is one more function in ``PATHS``:
``Setup`` holds the chats (``messages``) beside their token ids and the model's directory.

Run: ``make bench-generate`` or ``python bench/generate.py [--requests 256] [--max-tokens 48]
[--threads N] [--paths a,b,...]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import WORDS  # noqa: E402

STATIC_BATCH = 16
WARM_REQUESTS = 4


@dataclass
class Setup:
    """What every path shares: the model (in memory and on disk), its tokenizer, the device, the
    prompts' token ids and the new tokens each may make."""

    model: Any
    tokenizer: Any
    device: Any
    model_dir: Path
    prompts: list[list[int]]
    max_tokens: int
    messages: list[list[dict[str, str]]] = field(default_factory=list)  # each prompt's chat
    notes: dict[str, Any] = field(default_factory=dict)


def build_model(path: Path, layers: int, hidden: int, device: Any) -> tuple[Any, Any]:
    """A random Llama over MiniLM's tokenizer with a chat template, saved to ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.helpers import CHAT_TEMPLATE, minilm_dir

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    if device.type == "cuda":
        model = model.to(device=device, dtype=torch.bfloat16)
    return model, tok


def chats(n: int, seed: int = 1) -> list[list[dict[str, str]]]:
    """``n`` chats of mixed length: a system line and a user message of 5 to 150 words."""
    rng = random.Random(seed)
    return [
        [
            {"role": "system", "content": "answer briefly"},
            {
                "role": "user",
                "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 150))),
            },
        ]
        for _ in range(n)
    ]


def chat_prompts(tok: Any, messages: list[list[dict[str, str]]]) -> list[list[int]]:
    """The chats rendered with the model's chat template, as token ids (what the OpenAI
    surface makes of them)."""
    prompts = []
    for chat in messages:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompts.append(list(tok(text, add_special_tokens=False)["input_ids"]))
    return prompts


def counted(rows: list[list[int]], eos: set[int]) -> int:
    """Completion tokens of generated rows (up to and including an end-of-sequence)."""
    from worker.models import hf

    return sum(hf.completion(row, eos)[0] for row in rows)


# --- the paths -----------------------------------------------------------------------------------


def generate_static(s: Setup, prompts: list[list[int]]) -> int:
    """Bare ``model.generate`` over length-sorted, left-padded batches of 16."""
    import torch

    from worker.models import hf

    eos = hf.eos_ids(s.model, s.tokenizer)
    ordered = sorted(prompts, key=len)
    tokens = 0
    for start in range(0, len(ordered), STATIC_BATCH):
        batch = ordered[start : start + STATIC_BATCH]
        enc = s.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(s.device)
        with torch.inference_mode(), hf.autocast(hf.autocast_dtype(s.device)):
            out = s.model.generate(
                **enc,
                max_new_tokens=s.max_tokens,
                do_sample=False,
                pad_token_id=s.tokenizer.pad_token_id,
            )
        tokens += counted(out[:, enc["input_ids"].shape[1] :].tolist(), eos)
    return tokens


def generate_one(s: Setup, prompts: list[list[int]]) -> int:
    """Bare ``model.generate`` one prompt at a time."""
    import torch

    from worker.models import hf

    eos = hf.eos_ids(s.model, s.tokenizer)
    tokens = 0
    for prompt in prompts:
        ids = torch.tensor([prompt], device=s.device)
        with torch.inference_mode(), hf.autocast(hf.autocast_dtype(s.device)):
            out = s.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=s.max_tokens,
                do_sample=False,
                pad_token_id=s.tokenizer.pad_token_id,
            )
        tokens += counted(out[:, ids.shape[1] :].tolist(), eos)
    return tokens


def generate_batch(s: Setup, prompts: list[list[int]]) -> int:
    """Bare transformers continuous batching, its default configuration."""
    from transformers import GenerationConfig

    from worker.models import hf

    eos = hf.eos_ids(s.model, s.tokenizer)
    config = GenerationConfig(
        max_new_tokens=s.max_tokens,
        do_sample=False,
        eos_token_id=s.model.config.eos_token_id,
        pad_token_id=s.tokenizer.pad_token_id,
    )
    outputs = s.model.generate_batch(inputs=prompts, generation_config=config)
    return counted([list(o.generated_tokens) for o in outputs.values()], eos)


def engine_path(kind: str) -> Callable[[Setup, list[list[int]]], int]:
    def run(s: Setup, prompts: list[list[int]]) -> int:
        from barge.settings import Settings
        from worker.models import engines

        key = ("engine", kind)
        if key not in s.notes:  # built once, kept warm, as a worker keeps it
            s.notes[key] = engines.build(
                kind, s.model, s.tokenizer, s.device, Settings(), "bench", s.model_dir
            )
        engine = s.notes[key]
        requests = [
            engines.GenRequest(i, p, s.max_tokens, temperature=0.0) for i, p in enumerate(prompts)
        ]
        results = list(engine.run(requests))
        failed = [r for r in results if r.error]
        assert not failed and len(results) == len(prompts), failed[:1]
        return sum(r.completion_tokens for r in results)

    run.__doc__ = f"Barge's {kind} engine (worker.models.engines)."
    return run


def vllm_bare(s: Setup, prompts: list[list[int]]) -> int:
    """A bare ``vllm.LLM.generate`` loop over the same prompts (token ids), greedy."""
    from vllm import LLM, SamplingParams

    if "vllm-llm" not in s.notes:
        s.notes["vllm-llm"] = LLM(model=str(s.model_dir), enable_prefix_caching=True)
    llm = s.notes["vllm-llm"]
    params = SamplingParams(max_tokens=s.max_tokens, temperature=0.0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def openai_e2e(s: Setup, prompts: list[list[int]]) -> int:
    """The chats of ``prompts`` as one chat-completions batch through ``/openai/v1``,
    submit (file upload) to completed (output downloaded), greedy, ``max_tokens`` as the
    others."""
    import openai

    stack, model = e2e_stack(s)
    client = openai.OpenAI(
        base_url=str(stack.api.base_url).rstrip("/") + "/openai/v1",
        api_key=stack.api.headers["Authorization"].removeprefix("Bearer "),
    )
    lines = b"".join(
        json.dumps(
            {
                "custom_id": f"r-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": chat,
                    "max_tokens": s.max_tokens,
                    "temperature": 0,
                },
            }
        ).encode()
        + b"\n"
        for i, chat in enumerate(s.messages[: len(prompts)])
    )
    source = client.files.create(file=("chats.jsonl", lines), purpose="batch")
    created = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while (done := client.batches.retrieve(created.id)).status not in (
        "completed",
        "failed",
        "cancelled",
        "expired",
    ):
        time.sleep(0.1)
    assert done.status == "completed" and done.output_file_id, done
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert len(out) == len(prompts), f"{len(out)} of {len(prompts)} lines"
    return sum(int(line["response"]["body"]["usage"]["completion_tokens"]) for line in out)


def e2e_stack(s: Setup) -> tuple[Any, str]:
    """The stack of the end-to-end path (started at its first use, stopped by ``main``) and
    the model's URI in its S3."""
    if "stack" not in s.notes:
        from bench.stack import Stack

        threads = s.notes.get("threads")  # the worker's torch threads: the same as here
        env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        stack = Stack(s.notes["log_dir"], **env).__enter__()
        s.notes["stack"] = stack
        stack.s3.create_bucket(Bucket="barge")  # the default scopes: s3://barge/<tenant>/
        s.notes["stack-model"] = stack.upload_model("generate-bench", s.model_dir)
    return s.notes["stack"], s.notes["stack-model"]


PATHS: dict[str, Callable[[Setup, list[list[int]]], int]] = {
    "generate-static": generate_static,
    "generate-batch": generate_batch,
    "generate-one": generate_one,
    "engine-batched": engine_path("batched"),
    "engine-continuous": engine_path("continuous"),
    "engine-vllm": engine_path("vllm"),
    "vllm-bare": vllm_bare,
    "openai-e2e": openai_e2e,
}
BARE = ("generate-static", "generate-batch", "generate-one", "vllm-bare")


def default_paths(device: Any, one_at_a_time: bool) -> list[str]:
    from worker.models import engines

    names = ["generate-static", "generate-batch", "engine-batched", "engine-continuous"]
    if one_at_a_time:
        names.append("generate-one")
    if device.type == "cuda" and engines.vllm_installed():
        names += ["vllm-bare", "engine-vllm"]
    return names


def timed(s: Setup, name: str) -> tuple[int, float, float]:
    """One timed run of path ``name`` over every prompt: completion tokens, seconds, and the
    CPU seconds this process spent (steadier than the wall clock on a busy machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    tokens = PATHS[name](s, s.prompts)
    return tokens, time.perf_counter() - started, time.process_time() - cpu


def measure(s: Setup, names: list[str], rounds: int) -> list[dict[str, Any]]:
    """Each path warmed, then timed ``rounds`` times, the paths taking turns (so a busy
    machine slows them alike); the median round of each counts."""
    for name in names:
        PATHS[name](s, s.prompts[:WARM_REQUESTS])
    runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in names}
    for n in range(rounds):
        for name in names:
            runs[name].append(timed(s, name))
            tokens, seconds, cpu = runs[name][-1]
            print(
                f"round {n}: {name:18s} {tokens / seconds:8.1f} completion tokens/s "
                f"({tokens / cpu:.1f} per CPU second)",
                flush=True,
            )
    rows = []
    for name in names:
        rates = sorted(tokens / seconds for tokens, seconds, _ in runs[name])
        per_cpu = sorted(tokens / cpu for tokens, _, cpu in runs[name])
        rows.append(
            {
                "path": name,
                "tokens": runs[name][0][0],
                "seconds": [seconds for _, seconds, _ in runs[name]],
                "cpu_seconds": [cpu for _, _, cpu in runs[name]],
                "tokens_per_s": rates[len(rates) // 2],
                "tokens_per_cpu_s": per_cpu[len(per_cpu) // 2],
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--paths", default="", help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--one-at-a-time", action="store_true", help="add generate-one")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--e2e", action="store_true", help="add openai-e2e (a real stack)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = [n for n in args.paths.split(",") if n] or default_paths(device, args.one_at_a_time)
    if args.e2e and "openai-e2e" not in names:
        names.append("openai-e2e")
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        parser.error(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
    log_dir = ROOT / "bench" / "results" / time.strftime("generate-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build_model(Path(tmp) / "model", args.layers, args.hidden, device)
        messages = chats(args.requests)
        prompts = chat_prompts(tok, messages)
        s = Setup(model, tok, device, Path(tmp) / "model", prompts, args.max_tokens, messages)
        s.notes["log_dir"] = log_dir
        s.notes["threads"] = args.threads
        try:
            rows = measure(s, names, args.rounds)
        finally:
            if "stack" in s.notes:
                s.notes["stack"].__exit__(None, None, None)
    report(rows, args, device, torch.get_num_threads(), prompts, log_dir)
    return 0


def report(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    device: Any,
    threads: int,
    prompts: list[list[int]],
    log_dir: Path,
) -> None:
    bare = [r["tokens_per_s"] for r in rows if r["path"] in BARE]
    best = max(bare) if bare else None
    lengths = sorted(len(p) for p in prompts)
    print(
        f"\n{len(prompts)} chat requests, prompts of {lengths[0]}-{lengths[-1]} tokens "
        f"(median {lengths[len(lengths) // 2]}), max_tokens {args.max_tokens}, greedy; "
        f"{device}, {threads} threads; Llama {args.layers} layers, hidden {args.hidden}"
    )
    for r in rows:
        r["ratio_to_best_bare"] = r["tokens_per_s"] / best if best else None
        ratio = f"{r['ratio_to_best_bare']:.2f}x" if best else "-"
        print(
            f"  {r['path']:18s} {r['tokens_per_s']:8.1f} tokens/s  {ratio} of the best bare loop"
            f"  ({r['tokens_per_cpu_s']:.1f} per CPU second)"
        )
    result = {"device": str(device), "threads": threads, "args": vars(args), "rows": rows}
    (log_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"written to {log_dir / 'result.json'}")


if __name__ == "__main__":
    sys.exit(main())
