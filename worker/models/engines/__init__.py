"""Generation engines: one interface for every way Barge generates text from a causal LM.

Requests go in with their own sampling parameters (``GenRequest``); results come out as each
finishes (``GenResult``, not in input order: the caller puts them back in order). Nothing groups
requests by exact prompt length. An engine is built once per model and device and kept warm;
``Engine.run`` checks ``should_stop`` between steps and drops the requests still in flight
when it says stop (they yield nothing). A request that cannot run (too long for the engine's
token budget, out of memory even alone) is a result with ``error`` set, never an exception.

Engines (``BARGE_GENERATION_ENGINE``; ``choose`` resolves ``auto`` per device):

- ``batched`` (``worker.models.engines.batched``): token-budget batches over a length-sorted window,
  a lean decode loop over the model's KV cache that drops finished rows; the CPU default.
- ``continuous`` (``worker.models.engines.continuous``): transformers' continuous batching (paged KV
  cache sized by the token budget); the CUDA default where vLLM is not installed.
- ``vllm`` (``worker.models.engines.vllm``): vLLM's offline engine (prefix caching, per-request LoRA,
  tensor parallel); the CUDA default where it is installed (``pip install 'barge[vllm]'``).

``sampling`` (``worker.models.engines.sampling``): seeded sampling whose draws depend on the request's
seed and step only, so a sampled request gives the same tokens in any batch and engine.

An out-of-memory error halves the batch that hit it and runs both halves (down to one request,
then a per-record error); the size that worked is remembered per model, device and length
bucket (``SizeMemory``) and said in ``Engine.notes`` for the job's events.

torch and transformers are imported inside the functions, so importing this package is cheap.
Imports: ``barge``, ``worker.models.hf``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from barge.settings import Settings

ENGINES = ("batched", "continuous", "vllm")


@dataclass(frozen=True)
class GenRequest:
    """One generation request: its place in the caller's input, its prompt's token ids and its
    own sampling parameters (``temperature`` 0 is greedy; ``seed`` makes a sampled request
    reproducible wherever it runs), stop strings, and the LoRA adapter it runs through (a name
    on the warm base; None: the base model)."""

    index: int
    prompt_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ()
    adapter: str | None = None

    @property
    def tokens(self) -> int:
        """Tokens the request may hold in the KV cache: its prompt and every new token."""
        return len(self.prompt_ids) + self.max_new_tokens


@dataclass
class GenResult:
    """What one request made: the new token ids kept (up to and including an end-of-sequence
    or the token that completed a stop string), the text (end-of-sequence and special tokens
    left out, cut before a stop string), why it ended (``stop``: the model or a stop string
    ended it; ``length``: ``max_new_tokens`` did), and its usage. ``error`` is set, and the
    rest empty, when the request failed alone; ``refused`` when it failed for what it asked (too
    long for the token budget, empty): the client's error, not the model's."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    refused: bool = False

    @classmethod
    def failed(cls, request: GenRequest, error: str, refused: bool = False) -> GenResult:
        return cls(
            request.index, prompt_tokens=len(request.prompt_ids), error=error, refused=refused
        )


def never() -> bool:
    return False


class Engine(Protocol):
    """What every engine offers (see the module's docstring)."""

    name: str

    def run(
        self, requests: Sequence[GenRequest], should_stop: Callable[[], bool] = never
    ) -> Iterator[GenResult]: ...

    def notes(self) -> list[str]:
        """What the engine did that the job's events should say (out-of-memory back-offs),
        each said once."""
        ...


class Finisher:
    """Tracks one request's new tokens: ends it at an end-of-sequence token, at
    ``max_new_tokens``, or as soon as its text holds a stop string (the tail is decoded each
    step; a hit is confirmed on the whole text, so a tail decoded out of context never cuts
    early), and makes its ``GenResult``."""

    def __init__(self, request: GenRequest, tokenizer: Any, eos: set[int]):
        self.request = request
        self.tokenizer = tokenizer
        self.eos = eos
        self.tokens: list[int] = []
        self.finish = "length"
        self.text: str | None = None
        longest = max((len(s) for s in request.stop), default=0)
        self.window = 2 * longest + 8  # tokens decoded to look for a stop string

    def add(self, token: int) -> bool:
        """Take the next token; True when the request is done."""
        self.tokens.append(token)
        if token in self.eos:
            self.finish = "stop"
            return True
        if self.request.stop:
            tail = self.tokenizer.decode(self.tokens[-self.window :], skip_special_tokens=True)
            if any(s in tail for s in self.request.stop):
                text, cut = self._cut(self._decode())
                if cut:
                    self.text, self.finish = text, "stop"
                    return True
        return len(self.tokens) >= self.request.max_new_tokens

    def _decode(self) -> str:
        kept = [t for t in self.tokens if t not in self.eos]
        return str(self.tokenizer.decode(kept, skip_special_tokens=True))

    def _cut(self, text: str) -> tuple[str, bool]:
        at = min((i for s in self.request.stop if (i := text.find(s)) >= 0), default=-1)
        return (text[:at], True) if at >= 0 else (text, False)

    def result(self) -> GenResult:
        if self.text is None:
            self.text, cut = self._cut(self._decode())
            if cut:
                self.finish = "stop"
        return GenResult(
            self.request.index,
            list(self.tokens),
            self.text,
            self.finish,
            len(self.request.prompt_ids),
            len(self.tokens),
        )


BUDGET_SETTING = "BARGE_GENERATION_TOKEN_BUDGET"


def refusal(request: GenRequest, budget: int) -> GenResult | None:
    """The per-record error of a request no engine can run (an empty prompt, no new tokens),
    or that can never fit the engine's token ``budget``; None for a request that can run."""
    if not request.prompt_ids:
        return GenResult.failed(request, "the prompt is empty", refused=True)
    if request.max_new_tokens < 1:
        return GenResult.failed(request, "max_tokens must be at least 1", refused=True)
    if request.tokens <= budget:
        return None
    return GenResult.failed(
        request,
        f"the request needs {request.tokens} tokens (a {len(request.prompt_ids)}-token prompt "
        f"and max_tokens {request.max_new_tokens}); this worker's generation engine holds at "
        f"most {budget} ({BUDGET_SETTING}): send a shorter prompt or a lower max_tokens",
        refused=True,
    )


# --- out-of-memory back-off ----------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure (CUDA's, or the CPU allocator's), not any other error."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def release_memory(device: Any) -> None:
    """Hand cached blocks back after an out-of-memory error."""
    import gc

    gc.collect()
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.empty_cache()


def length_bucket(tokens: int) -> int:
    """The power of two at or above ``tokens`` (the longest request of a batch, prompt and new
    tokens together): batch sizes learnt from out-of-memory errors are kept per bucket."""
    return 1 << max(0, int(tokens) - 1).bit_length()


class SizeMemory:
    """The largest batch that worked after an out-of-memory error, per (model, device, length
    bucket), for every later shard and job in this process."""

    def __init__(self) -> None:
        self._sizes: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()

    def limit(self, model: str, device: str, bucket: int) -> int | None:
        """The most requests a batch of this bucket may hold (None: no limit learnt); a limit
        learnt for a shorter bucket holds for longer ones too."""
        with self._lock:
            found = [
                n
                for (m, d, b), n in self._sizes.items()
                if m == model and d == device and b <= bucket
            ]
        return min(found) if found else None

    def lower(self, model: str, device: str, bucket: int, size: int) -> None:
        with self._lock:
            key = (model, device, bucket)
            self._sizes[key] = min(size, self._sizes.get(key, size))

    def known(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._sizes)


SIZES = SizeMemory()  # this process's: engines share what they learnt


# --- the choice ----------------------------------------------------------------------------------


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose(setting: str, device: Any) -> str:
    """The engine ``BARGE_GENERATION_ENGINE`` names for ``device``: itself, or for ``auto``
    what ``bench/generate.py`` found fastest there: vLLM on CUDA where it is installed, else
    transformers' continuous batching on CUDA, and the batched engine off CUDA."""
    if setting != "auto":
        return setting
    if getattr(device, "type", str(device)) != "cuda":
        return "batched"
    return "vllm" if vllm_installed() else "continuous"


def build(
    kind: str,
    model: Any,
    tokenizer: Any,
    device: Any,
    settings: Settings,
    model_key: str = "",
    model_dir: Any = None,
    adapters: dict[str, Any] | None = None,
) -> Engine:
    """The engine ``kind`` (``choose``'s answer) over a loaded model: ``batched`` and
    ``continuous`` run ``model`` itself (adapters are peft's, on it); ``vllm`` loads
    ``model_dir`` into vLLM (on the GPUs this worker sees) with ``adapters`` (name: directory;
    more with ``add_adapter``). ``model_key`` names the model in ``SizeMemory``."""
    if kind == "batched":
        from worker.models.engines.batched import BatchedEngine

        return BatchedEngine(
            model,
            tokenizer,
            device,
            token_budget=settings.generation_token_budget,
            max_rows=settings.generation_max_batch,
            model_key=model_key,
        )
    if kind == "continuous":
        from worker.models.engines.continuous import ContinuousEngine

        return ContinuousEngine(
            model,
            tokenizer,
            device,
            token_budget=settings.generation_token_budget,
            max_rows=settings.generation_max_batch,
            model_key=model_key,
        )
    if kind == "vllm":
        from worker.models.engines.vllm import VllmEngine

        if model_dir is None:
            raise ValueError("the vllm engine loads the model from its directory")
        return VllmEngine(
            model_dir,
            tokenizer,
            token_budget=settings.generation_token_budget,
            max_rows=settings.generation_max_batch,
            config=getattr(model, "config", None),
            adapters=adapters,
            lora=adapters is not None,
        )
    raise ValueError(f"unknown generation engine {kind!r}; one of {', '.join(ENGINES)}")
