"""The Hugging Face helpers that inference (``worker.models.text``, ``worker.models.seq2seq``,
``worker.runners.openai_batch``) and training (``worker.runners.finetune.training``) share: the
model class each task loads, the CUDA autocast dtype, mean pooling, generation's sampling
arguments and where a generated sequence ends, and the checks on a model directory's config
(its size against its weights, the most tokens it takes).

torch and transformers are imported inside the functions, so importing this module is cheap.
Imports: ``barge`` only; never ``api`` or ``cli``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, without_paths

# Nothing is ever downloaded from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No progress bars in worker logs ("Loading weights" is not a warning).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _auto(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


# The Hugging Face class each task loads (resolved lazily: transformers is imported on use).
TASK_CLASSES: dict[str, Any] = {
    "embed": lambda: _auto("AutoModel"),
    "classify": lambda: _auto("AutoModelForSequenceClassification"),
    "generate": lambda: _auto("AutoModelForCausalLM"),
    "image_classify": lambda: _auto("AutoModelForImageClassification"),
    "image_embed": lambda: _auto("AutoModel"),
    "detect": lambda: _auto("AutoModelForObjectDetection"),
    "text2text": lambda: _auto("AutoModelForSeq2SeqLM"),
}


def model_class(task: str) -> Any:
    """The ``transformers`` auto class that loads a model for ``task``."""
    return TASK_CLASSES[task]()


def autocast_dtype(device: Any) -> Any:
    """The dtype mixed precision runs in on ``device``: bf16 where the GPU supports it, else
    fp16; None off CUDA (full precision)."""
    if device.type != "cuda":
        return None
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype: Any) -> Any:
    """An autocast context for ``dtype`` (from ``autocast_dtype``); a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=dtype)


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """The mean of each sequence's token vectors, padding excluded."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# A config may describe at most this many more parameters than the weights hold (a new task
# head, tied embeddings stored once) before Barge refuses to build it.
CONFIG_SLACK_RATIO = 1.25
CONFIG_SLACK_PARAMS = 50_000_000


def stored_parameters(path: Path) -> int:
    """Elements in the directory's safetensors weights (read from their headers only)."""
    from safetensors import safe_open

    total = 0
    for weights in sorted(path.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                numel = 1
                for dim in f.get_slice(name).get_shape():
                    numel *= int(dim)
                total += numel
    return total


# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


def weight_bytes(path: Path, element_bytes: int | None = None) -> int:
    """Bytes the directory's safetensors weights take once loaded: as stored, or at
    ``element_bytes`` per floating-point element (integer tensors stay as stored). Read from
    the files' headers only."""
    from safetensors import safe_open

    total = 0
    for weights in sorted(path.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                part = f.get_slice(name)
                numel = 1
                for dim in part.get_shape():
                    numel *= int(dim)
                dtype = str(part.get_dtype())
                size = DTYPE_BYTES.get(dtype, 4)
                if element_bytes is not None and dtype.startswith(("F", "BF")):
                    size = element_bytes
                total += numel * size
    return total


def check_config_fits_weights(path: Path, model_class: Any, ref: str) -> None:
    """Refuse a config.json that describes a far bigger model than the weights hold, before
    anything is allocated: the model is built on the meta device, which allocates nothing."""
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device("meta"):
            skeleton = model_class.from_config(config)
        implied = sum(p.numel() for p in skeleton.parameters())
        stored = stored_parameters(path)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        raise PermanentJobError(f"cannot load model {ref}: {without_paths(str(exc))}") from exc
    if implied > stored * CONFIG_SLACK_RATIO + CONFIG_SLACK_PARAMS:
        raise PermanentJobError(
            f"model {ref}: config.json describes {implied:,} parameters but the safetensors "
            f"weights hold {stored:,}; refusing to build it (check config.json's dimensions)"
        )


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a generated sequence (the generation config's, else the model
    config's, else the tokenizer's)."""
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if found is None:
        found = getattr(getattr(model, "config", None), "eos_token_id", None)
    if found is None:
        found = tokenizer.eos_token_id
    if found is None:
        return set()
    return {int(t) for t in found} if isinstance(found, list) else {int(found)}


def sampling(temperature: float, seed: int, **options: Any) -> dict[str, Any]:
    """``generate``'s sampling arguments: greedy at temperature 0; else sampled at
    ``temperature`` (with ``options``, such as ``top_p``) from torch's generator seeded with
    ``seed`` here, so a re-run batch generates the same text."""
    if temperature <= 0:
        return {"do_sample": False}
    import torch

    torch.manual_seed(seed)
    return {"do_sample": True, "temperature": temperature, **options}


def completion(tokens: Sequence[int], eos: set[int]) -> tuple[int, str]:
    """How many of the generated ``tokens`` count (up to and including the first
    end-of-sequence: what follows it is padding), and why generation ended: ``stop`` (the
    model ended it) or ``length`` (it ran out of new tokens)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return i + 1, "stop"
    return len(tokens), "length"


OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"})


def position_limit(model: Any, tokenizer: Any) -> int | None:
    """The most tokens the model takes in one sequence, from its config and tokenizer."""
    config = model.config
    limits = []
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            # RoBERTa-style position ids start after the padding index.
            offset = 2 if getattr(config, "model_type", "") in OFFSET_POSITIONS else 0
            limits.append(value - offset)
            break
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    return min(limits) if limits else None
