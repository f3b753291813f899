"""A model loaded for one task, as the runners hold it (``LoadedModel``: a Hugging Face model
and its tokenizer, an ONNX model's runner, or an image model, ``worker.models.vision``), and the
device models load on (``pick_device``).

Imports: ``barge``, ``worker.models.hf``; never ``api`` or ``cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from barge.errors import PermanentJobError
from barge.settings import Settings
from worker.models import hf


def pick_device(settings: Settings) -> Any:
    import torch

    if settings.device:
        return torch.device(settings.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedModel:
    task: str
    model: Any
    tokenizer: Any
    device: Any
    ref: str
    revision: str
    load_seconds: float
    labels: dict[int, str] = field(default_factory=dict)
    max_positions: int | None = None  # tokens the model takes; max_length is clamped to it
    # A model that reads its own record fields (an ONNX model: its barge.json): one record's
    # inputs, or why it cannot run. None: the job's text_field is the model's input.
    read: Callable[[dict[str, Any]], tuple[Any, str | None]] | None = None
    adapter: str | None = None  # a LoRA adapter's name on its (shared) base model

    def activate(self) -> None:
        """Before each use: a LoRA adapter's base serves this adapter from now on."""
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)

    def input_tokens(self, params: Any) -> int:
        """Tokens kept per record: the job's max_length, clamped to what the model takes (for
        generate, leaving room for max_new_tokens)."""
        keep = int(params.max_length)
        if self.max_positions is None:
            return keep
        room = self.max_positions
        if self.task == "generate":
            room -= int(params.max_new_tokens)
            if room < 1:
                raise PermanentJobError(
                    f"max_new_tokens {params.max_new_tokens} leaves no room for a prompt: "
                    f"model {self.ref} takes at most {self.max_positions} tokens in all"
                )
        return min(keep, room)

    def autocast(self) -> Any:
        """Mixed precision on CUDA (bf16 where supported, else fp16); nothing elsewhere."""
        return hf.autocast(hf.autocast_dtype(self.device))
