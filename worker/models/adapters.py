"""LoRA adapters at inference: what an adapter directory says of itself, how the base it
applies to is loaded, and attaching or dropping an adapter on a warm base (peft's
``load_adapter`` / ``set_adapter`` / ``delete_adapter``) without reloading the base.

``worker.models.ModelCache`` keeps the bases and the adapters and counts their loads apart.

Imports: ``barge``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from barge.errors import PermanentJobError, without_paths

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_INFO = "barge_adapter.json"  # written by worker.runners.finetune.lora


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def labels_of(path: Path, ref: str) -> list[str]:
    """A classify adapter's labels, in head order (none for generate)."""
    try:
        info = json.loads((path / ADAPTER_INFO).read_text())
        labels = info.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("labels is not a list of strings")
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise PermanentJobError(f"adapter {ref}: unreadable {ADAPTER_INFO}: {exc}") from None
    return list(labels)


def base_options(task: str, labels: list[str]) -> dict[str, Any]:
    """``from_pretrained`` options of a base that classify adapters with ``labels`` share: a
    head of that size (each adapter brings its own head's weights)."""
    if task != "classify" or not labels:
        return {}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "ignore_mismatched_sizes": True,
    }


def adapter_name(ref: str, revision: str) -> str:
    """The name an adapter goes by inside its base (peft's names may not hold dots)."""
    return "adapter_" + hashlib.sha256(f"{ref}\0{revision}".encode()).hexdigest()[:16]


def attach(model: Any, path: Path, name: str, ref: str) -> Any:
    """Load the adapter at ``path`` onto ``model`` as ``name`` (frozen, for inference); the
    model to use from then on (the base wrapped in a PeftModel the first time)."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and name in model.peft_config:
        return model  # kept when it was the last one dropped
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    except Exception as exc:
        raise PermanentJobError(
            f"cannot apply adapter {ref} to its base: {without_paths(str(exc))}"
        ) from exc
    model.eval()
    return model


def detach(model: Any, name: str) -> None:
    """Drop adapter ``name`` from ``model`` (when it holds it)."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and name in model.peft_config:
        if len(model.peft_config) == 1:
            return  # peft keeps one adapter; re-attaching it later finds it there
        if model.active_adapter == name:
            others = [n for n in model.peft_config if n != name]
            if others:
                model.set_adapter(others[0])
        model.delete_adapter(name)
