"""The vLLM generation engine (CUDA workers with the ``vllm`` extra: ``pip install
'barge[vllm]'``): vLLM's offline engine over the model's directory, with prefix caching on, LoRA
adapters per request over the warm base (``LoRARequest``), and tensor parallel across the
worker's visible GPUs when the model does not fit one.

- **Budget.** vLLM's KV cache gets the token budget's worth of bytes (``kv_cache_memory_bytes``,
  from the model's config) and never more; ``max_model_len`` is at most the budget, and a
  request that alone needs more is a per-record error naming its token count.
- **Requests** are added to vLLM's engine one by one with their own ``SamplingParams``
  (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``); results come out of
  ``step()`` as each finishes. ``should_stop`` is checked between steps; when it says stop the
  requests in flight are aborted.

vLLM is imported inside the functions: importing this module needs no vLLM. Imports:
``worker.models.engines``, ``worker.models.hf``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from worker.models import hf
from worker.models.engines import GenRequest, GenResult, never, refusal

_RUNS = itertools.count()


def kv_bytes_per_token(config: Any, element_bytes: int = 2) -> int:
    """Bytes of KV cache one token takes in the model described by ``config`` (keys and values
    of every layer and key/value head)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0))
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0))
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // max(1, heads)))
    return 2 * layers * kv_heads * head_dim * element_bytes


def tensor_parallel(need_bytes: int, gpu_bytes: Sequence[int], heads: int) -> int:
    """How many of the visible GPUs (each of ``gpu_bytes``) the model is split over: one when it
    fits one, else the fewest that hold ``need_bytes`` together, of the sizes vLLM can split
    it into (powers of two dividing the attention heads); the most of those when none do."""
    sizes = [n for n in (1, 2, 4, 8, 16, 32) if n <= len(gpu_bytes) and heads % n == 0]
    for size in sizes:
        if need_bytes <= 0.9 * min(gpu_bytes) * size:
            return size
    return sizes[-1] if sizes else 1


class VllmEngine:
    """See the module's docstring. ``adapters`` maps an adapter's name (as requests name it) to
    its directory; ``lora`` builds vLLM with LoRA support (adapters can be added later)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        tokenizer: Any,
        token_budget: int,
        max_rows: int,
        config: Any = None,
        adapters: dict[str, Path] | None = None,
        lora: bool = False,
        dtype: str = "auto",
        max_lora_rank: int = 64,
    ):
        from vllm import LLM

        self.tokenizer = tokenizer
        self.adapters: dict[str, Any] = {}
        self.lora = lora or bool(adapters)
        config = config if config is not None else _config(model_dir)
        self.max_len = min(
            token_budget, hf.position_limit(_Shim(config), tokenizer) or token_budget
        )
        self.token_budget = token_budget
        tp = self._tensor_parallel(model_dir, config, token_budget)
        options: dict[str, Any] = {
            "model": str(model_dir),
            "tokenizer": str(model_dir),
            "enable_prefix_caching": True,
            "tensor_parallel_size": tp,
            "max_num_seqs": max_rows,
            "max_model_len": self.max_len,
            "kv_cache_memory_bytes": kv_bytes_per_token(config, 4 if dtype == "float32" else 2)
            * token_budget
            // tp,
            "dtype": dtype,
            "trust_remote_code": False,
            "seed": 0,
        }
        if self.lora:
            options.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.llm = LLM(**options)
        for name, path in (adapters or {}).items():
            self.add_adapter(name, path)

    @staticmethod
    def _tensor_parallel(model_dir: Path, config: Any, token_budget: int) -> int:
        import torch

        gpus = [
            int(torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())
        ]
        if not gpus:
            return 1
        need = (
            hf.weight_bytes(model_dir, element_bytes=2) + kv_bytes_per_token(config) * token_budget
        )
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return tensor_parallel(need, gpus, int(getattr(text, "num_attention_heads", 1) or 1))

    def add_adapter(self, name: str, path: Path) -> None:
        """Serve LoRA adapter ``name`` (its directory ``path``) over the base, per request."""
        from vllm.lora.request import LoRARequest

        if not self.lora:
            raise ValueError("this vLLM engine was built without LoRA support")
        if name not in self.adapters:
            self.adapters[name] = LoRARequest(name, len(self.adapters) + 1, str(path))

    def notes(self) -> list[str]:
        return []  # vLLM sizes its own batches within its KV cache: it never backs off

    def run(
        self, requests: Sequence[GenRequest], should_stop: Callable[[], bool] = never
    ) -> Iterator[GenResult]:
        engine = self.llm.llm_engine
        run = next(_RUNS)
        pending: dict[str, GenRequest] = {}
        try:
            for request in requests:
                if (refused := refusal(request, self.max_len)) is not None:
                    yield refused
                elif request.adapter is not None and request.adapter not in self.adapters:
                    yield GenResult.failed(request, f"adapter {request.adapter} is not loaded")
                else:
                    rid = f"barge-{run}-{request.index}"
                    pending[rid] = request
                    engine.add_request(
                        rid,
                        {"prompt_token_ids": list(request.prompt_ids)},
                        self._params(request),
                        lora_request=self.adapters.get(request.adapter or ""),
                    )
            while pending:
                if should_stop():
                    return
                for output in engine.step():
                    if output.finished and output.request_id in pending:
                        yield self._result(pending.pop(output.request_id), output)
        finally:
            if pending:
                engine.abort_request(list(pending))

    @staticmethod
    def _params(request: GenRequest) -> Any:
        from vllm import SamplingParams

        sampled = request.temperature > 0
        return SamplingParams(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature if sampled else 0.0,
            top_p=request.top_p if sampled else 1.0,
            seed=request.seed % 2**63 if sampled else None,
            stop=list(request.stop) or None,
            skip_special_tokens=True,
        )

    @staticmethod
    def _result(request: GenRequest, output: Any) -> GenResult:
        made = output.outputs[0]
        tokens = [int(t) for t in made.token_ids]
        return GenResult(
            request.index,
            tokens,
            str(made.text),
            "length" if made.finish_reason == "length" else "stop",
            len(request.prompt_ids),
            len(tokens),
        )


class _Shim:
    """A config seen as a model (``hf.position_limit`` reads ``model.config``)."""

    def __init__(self, config: Any):
        self.config = config


def _config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
