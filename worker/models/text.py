"""Hugging Face text models: load one for a text task (``embed``, ``classify``, ``generate``,
``text2text``; safetensors only, nothing remote) and predict one batch of ``embed`` or
``classify`` (``generate`` runs through ``worker.models.engines``, ``text2text`` predicts in
``worker.models.seq2seq``).

Imports: ``barge``, ``worker.models.hf``, ``worker.models.loaded``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, without_paths
from worker.models import hf
from worker.models.loaded import LoadedModel


def load_model(
    path: Path,
    task: str,
    device: Any,
    ref: str,
    revision: str,
    options: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load the model for ``task`` (safetensors only, nothing remote) with ``load_options``."""
    import transformers

    if task not in hf.TASK_CLASSES:
        raise PermanentJobError(
            f"task {task!r} runs ONNX models only; {ref} is a Hugging Face model directory"
        )
    started = time.monotonic()
    hf.check_config_fits_weights(path, hf.model_class(task), ref)
    options = options or {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = hf.model_class(task).from_pretrained(
            str(path),
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
            **options,
        )
    except SoftTimeLimitExceeded:
        raise  # the shard's time is up: not the model's fault
    except Exception as exc:
        raise PermanentJobError(
            f"cannot load model {ref} for task {task!r}: {without_paths(str(exc))}"
        ) from exc
    model.eval()
    if "device_map" in options:
        device = model.device  # inputs go where its first layers are
    else:
        model.to(device)
    if task == "generate":
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    labels = {}
    if task == "classify":
        labels = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    return LoadedModel(
        task,
        model,
        tokenizer,
        device,
        ref,
        revision,
        time.monotonic() - started,
        labels,
        hf.position_limit(model, tokenizer),
    )


def predict(
    loaded: LoadedModel,
    texts: Sequence[str],
    params: Any,
    seed: int = 0,
    add_special_tokens: bool = True,
) -> list[dict[str, Any]]:
    """Run one batch of ``embed`` or ``classify``; returns one result dict per text, in order
    (``seed`` is the records runner's and unused: these tasks are deterministic)."""
    import torch

    if loaded.task not in ("embed", "classify"):
        raise ValueError(f"task {loaded.task!r} does not predict in batches here")
    loaded.activate()
    enc = loaded.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=loaded.input_tokens(params),
        return_tensors="pt",
        add_special_tokens=add_special_tokens,
    ).to(loaded.device)
    with torch.inference_mode(), loaded.autocast():
        if loaded.task == "embed":
            return _embed(loaded, enc, params)
        return _classify(loaded, enc)


def _embed(loaded: LoadedModel, enc: Any, params: Any) -> list[dict[str, Any]]:
    import torch

    hidden = loaded.model(**enc).last_hidden_state
    pooled = hf.mean_pool(hidden, enc["attention_mask"]).float()
    if params.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return [{"embedding": row} for row in pooled.cpu().tolist()]


def _classify(loaded: LoadedModel, enc: Any) -> list[dict[str, Any]]:
    import torch

    logits = loaded.model(**enc).logits.float()
    probs = torch.softmax(logits, dim=-1).cpu()
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        names = [loaded.labels.get(i, str(i)) for i in range(len(row))]
        out.append(
            {
                "label": names[best],
                "score": row[best],
                "scores": dict(zip(names, row, strict=True)),
            }
        )
    return out
