"""LoRA fine-tunes (peft): wrap a frozen base with an adapter, and save, checkpoint and restore
only the weights that train (the adapter's and, for classify, the new head's).

A registered adapter directory holds ``adapter_config.json``, ``adapter_model.safetensors``,
the tokenizer and ``barge_adapter.json`` (task, labels, rank); inference applies it over the base
the registry records for it (``worker.models.adapters``). With ``merge`` the base with the adapter
merged in is saved instead: a full model directory.

Imports: ``barge``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from barge.errors import PermanentJobError
from barge.specs import LoraMethod

ADAPTER_INFO = "barge_adapter.json"  # task, labels and rank of a registered adapter


def load_kwargs(method: LoraMethod, device: Any) -> dict[str, Any]:
    """``from_pretrained`` options for the frozen base: its dtype and, on CUDA with
    bitsandbytes installed, 8- or 4-bit quantization."""
    import torch

    options: dict[str, Any] = {"dtype": getattr(torch, method.base_dtype)}
    if method.quantize is None:
        return options
    if device.type != "cuda":
        raise PermanentJobError(
            f"method.quantize {method.quantize!r} needs a CUDA worker (bitsandbytes); this "
            f"worker runs on {device.type}"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise PermanentJobError(
            "method.quantize needs bitsandbytes on the worker: install Barge with the "
            "`lora-quantized` extra"
        ) from None
    if method.quantize == "8bit":
        options["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    else:
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    options["device_map"] = {"": device.index or 0}
    return options


def wrap(model: Any, method: LoraMethod, task: str) -> Any:
    """The model with a fresh adapter named ``default``: everything else is frozen (for
    classify, peft trains the new head too). Without ``target_modules``, peft's defaults for
    the model type, else every linear layer."""
    from peft import LoraConfig, TaskType, get_peft_model

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    def config(targets: Any) -> Any:
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM if task == "generate" else TaskType.SEQ_CLS,
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=targets,
        )

    try:
        return get_peft_model(model, config(method.target_modules))
    except ValueError as exc:
        if method.target_modules is not None:
            raise PermanentJobError(f"method.target_modules: {exc}") from None
    return get_peft_model(model, config("all-linear"))


def trainable(model: Any) -> dict[str, Any]:
    """The parameters that train, by name (the adapter's, and a classify head's)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: Any, path: Path) -> None:
    """Only the weights that train, in one safetensors file."""
    from safetensors.torch import save_file

    tensors = {name: p.detach().contiguous().cpu() for name, p in trainable(model).items()}
    save_file(tensors, str(path))


def load_trainable(model: Any, path: Path) -> None:
    """Restore what ``save_trainable`` wrote (exactly those names, else refused)."""
    import torch
    from safetensors.torch import load_file

    params = trainable(model)
    tensors = load_file(str(path))
    if tensors.keys() != params.keys():
        raise PermanentJobError(
            "the checkpoint's adapter weights do not match this fine-tune's adapter "
            f"({len(tensors)} tensors saved, {len(params)} expected)"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device, param.dtype))


def save(
    model: Any, tokenizer: Any, method: LoraMethod, task: str, labels: list[str], directory: Path
) -> None:
    """The adapter directory (or, with ``merge``, the merged full model directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    if method.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(directory), safe_serialization=True)
    else:
        model.save_pretrained(str(directory), safe_serialization=True)
        info = {"task": task, "labels": labels, "r": method.r, "alpha": method.alpha}
        (directory / ADAPTER_INFO).write_text(json.dumps(info, indent=1) + "\n")
        readme = directory / "README.md"  # peft's model card; Barge neither needs nor copies it
        readme.unlink(missing_ok=True)
    tokenizer.save_pretrained(str(directory))


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, all) parameters."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in trainable(model).values()), total
