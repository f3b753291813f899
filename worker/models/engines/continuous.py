"""The continuous generation engine: transformers' continuous batching
(``ContinuousBatchingManager``: a paged KV cache, requests joining and leaving the running batch
every step, prefixes shared between requests), with its cache sized by the token budget so it
never allocates more than it was given.

- **Budget.** The paged cache holds ``token_budget`` tokens (``num_blocks * page_size``); one
  forward takes at most ``max_batch_tokens`` tokens and ``max_rows`` requests. A request that
  alone needs more than the cache holds is a per-record error naming its token count.
- **Sampling.** A logits processor of Barge's (``SeededSampler``) applies each request's
  temperature and top-p and draws with the request's seeded noise (``worker.models.engines.sampling``,
  the batched engine's), so a sampled request gives the same tokens whatever runs beside it;
  greedy requests are left to the manager's argmax. Runs with sampled requests turn CUDA graphs
  off (the sampler is not capturable).
- **Stop strings** cut the text after the request finishes (the manager knows only stop
  tokens); the usage counts the tokens up to the stop.
- **Adapters.** Requests through a LoRA adapter run in one manager session per adapter, that
  adapter active on the shared base (peft injects it into the base's layers) for the session.
- **Sessions.** A manager is started for each ``run`` (and adapter) and stopped after it, which
  gives the model back its own attention implementation; starting and stopping cost about a
  second on a CPU, nothing next to a shard.
- **Cancel.** ``should_stop`` is polled while results are awaited; when it says stop the manager
  is stopped hard and the requests in flight yield nothing.
- **Out of memory.** A session whose requests fail out of memory runs them again with half the
  requests per batch (remembered per model, device and length bucket); alone, a per-record
  error.

Imports: ``worker.models.engines``, ``worker.models.hf``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from worker.models import hf
from worker.models.engines import (
    SIZES,
    Finisher,
    GenRequest,
    GenResult,
    SizeMemory,
    length_bucket,
    never,
    refusal,
    release_memory,
    sampling,
)

PAGE_SIZE = 32  # tokens per page: a request wastes less than one page of the budget
POLL_SECONDS = 0.05


class ContinuousEngine:
    """See the module's docstring."""

    name = "continuous"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: Any,
        token_budget: int,
        max_rows: int,
        model_key: str = "",
        sizes: SizeMemory = SIZES,
        page_size: int = PAGE_SIZE,
        batch_tokens: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.page_size = page_size
        self.num_blocks = max(1, token_budget // page_size)
        self.token_budget = self.num_blocks * page_size
        self.batch_tokens = batch_tokens or min(max(256, token_budget // 8), 2048)
        self.max_rows = max_rows
        self.model_key = model_key
        self.sizes = sizes
        self.eos = hf.eos_ids(model, tokenizer)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        taken, self._notes = self._notes, []
        return taken

    def run(
        self, requests: Sequence[GenRequest], should_stop: Callable[[], bool] = never
    ) -> Iterator[GenResult]:
        groups: dict[str | None, list[GenRequest]] = {}
        for request in requests:
            if (refused := refusal(request, self.token_budget)) is not None:
                yield refused
            elif request.adapter is not None and request.adapter not in (
                getattr(self.model, "peft_config", None) or {}
            ):
                yield GenResult.failed(request, f"adapter {request.adapter} is not loaded")
            else:
                groups.setdefault(request.adapter, []).append(request)
        stopped = [False]

        def stop() -> bool:
            stopped[0] = stopped[0] or should_stop()
            return stopped[0]

        for adapter, group in groups.items():
            if stop():
                return
            with self._adapter(adapter):
                yield from self._backing_off(group, stop)

    def _backing_off(
        self, requests: list[GenRequest], should_stop: Callable[[], bool]
    ) -> Iterator[GenResult]:
        """Sessions over ``requests`` until each has a result: those that ran out of memory
        run again with half the rows per batch, and alone fail."""
        todo = requests
        while todo and not should_stop():
            rows = self._row_limit(todo)
            lacking: list[GenRequest] = []
            for request, result in self._session(todo, rows, should_stop):
                if result is None:
                    lacking.append(request)
                else:
                    yield result
            if not lacking:
                return
            release_memory(self.device)
            if rows <= 1:
                for request in lacking:
                    yield GenResult.failed(
                        request,
                        f"out of memory generating this request alone ({request.tokens} tokens "
                        f"with its prompt) on {self.device}",
                    )
                return
            bucket = length_bucket(max(r.tokens for r in lacking))
            self.sizes.lower(self.model_key, str(self.device), bucket, rows // 2)
            self._notes.append(
                f"out of memory generating {rows} requests at once of up to {bucket} tokens on "
                f"{self.device}; batches of this length now hold at most {rows // 2}"
            )
            todo = lacking

    def _row_limit(self, requests: list[GenRequest]) -> int:
        bucket = length_bucket(max(r.tokens for r in requests))
        learnt = self.sizes.limit(self.model_key, str(self.device), bucket)
        return min(self.max_rows, learnt) if learnt is not None else self.max_rows

    def _session(
        self, requests: list[GenRequest], rows: int, should_stop: Callable[[], bool]
    ) -> Iterator[tuple[GenRequest, GenResult | None]]:
        """One manager session: every request submitted, each result as it comes (None for a
        request that failed out of memory)."""
        import torch

        sampled = any(r.temperature > 0 for r in requests)
        by_id = {str(r.index): r for r in requests}
        manager = self._manager(rows, sampled)
        try:
            with torch.inference_mode():  # the manager's thread runs in the mode it starts in
                manager.start()
            for r in requests:
                manager.add_request(
                    list(r.prompt_ids),
                    request_id=str(r.index),
                    max_new_tokens=r.max_new_tokens,
                    eos_token_id=sorted(self.eos) or -1,
                    **(
                        {"temperature": r.temperature, "top_p": r.top_p, "seed": r.seed}
                        if sampled
                        else {}
                    ),
                )
            yield from self._collect(manager, by_id, should_stop)
        finally:
            manager.stop(block=True, hard_stop=True)
            manager.destroy()

    def _collect(
        self, manager: Any, by_id: dict[str, GenRequest], should_stop: Callable[[], bool]
    ) -> Iterator[tuple[GenRequest, GenResult | None]]:
        from barge.errors import describe

        pending = dict(by_id)
        while pending:
            if should_stop():
                return
            output = manager.get_result(timeout=POLL_SECONDS)
            if output is None:
                if not manager.is_running():
                    error = manager.background_thread_status.fatal_error
                    raise RuntimeError(f"continuous batching stopped: {error}")
                continue
            request = pending.pop(output.request_id, None)
            if request is None:
                continue
            if output.error is not None:
                if "out of memory" in str(output.error).lower():
                    yield request, None
                else:
                    yield (
                        request,
                        GenResult.failed(
                            request, f"the model failed on this request: {describe(output.error)}"
                        ),
                    )
                continue
            finisher = Finisher(request, self.tokenizer, self.eos)
            for token in output.generated_tokens:
                if finisher.add(int(token)):
                    break
            yield request, finisher.result()

    def _manager(self, rows: int, sampled: bool) -> Any:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        eos = sorted(self.eos)
        generation = GenerationConfig(
            do_sample=False,
            max_new_tokens=1,
            eos_token_id=eos or None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        config = ContinuousBatchingConfig(
            page_size=self.page_size,
            num_blocks=self.num_blocks,
            max_batch_tokens=max(self.batch_tokens, rows),
            max_requests_per_batch=rows,
            use_cuda_graph=False if sampled else None,
        )
        manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        if sampled:
            manager.logit_processor = seeded_processors()
        return manager

    def _adapter(self, name: str | None) -> Any:
        if not hasattr(self.model, "peft_config"):
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        return contextlib.nullcontext()


def seeded_processors() -> Any:
    """The manager's logits processors for a run with sampled requests: three per-request
    arguments (temperature, top-p, the seed as the row's noise key) and the sampler."""
    from transformers import LogitsProcessorList
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessorList,
    )

    shared: dict[str, Any] = {}
    chain = [
        FloatArgument("temperature", 0.0, shared),
        FloatArgument("top_p", 1.0, shared),
        SeededSampler(shared),
    ]
    processors = ContinuousBatchingLogitsProcessorList(
        LogitsProcessorList(chain), per_request_processors=False
    )
    processors.tensors_required = len(chain)
    return processors


def _processor_base() -> Any:
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    return ContinuousBatchingLogitsProcessor


class FloatArgument(_processor_base()):  # type: ignore[misc]
    """Carries one float per request (by keyword) to ``SeededSampler``; leaves scores alone."""

    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, name: str, default: float, shared: dict[str, Any]):
        self.name = name
        self.default = default
        self.shared = shared
        self.supported_kwargs = {name: float}

    def fill_defaults(self, int32_tensor: Any) -> None:
        import torch

        int32_tensor.copy_(
            torch.full_like(int32_tensor, self.default, dtype=torch.float32).view(torch.int32)
        )

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> Any:
        import torch

        values = [
            float(r.state.logit_processor_kwargs.get(self.name, self.default))
            for r in requests_with_new_token
        ]
        return torch.tensor(values, dtype=torch.float32).view(torch.int32)

    def __call__(self, scores: Any, tensor_arg: Any) -> Any:
        import torch

        self.shared[self.name] = tensor_arg[: scores.size(0)].view(torch.float32)
        return scores


class SeededSampler(_processor_base()):  # type: ignore[misc]
    """Draws each sampled request's token with its seeded noise and leaves only that token's
    score (the manager's argmax then takes it); greedy rows (no seed key) are left alone. The
    step of each request's noise is counted here, once per token it makes."""

    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, shared: dict[str, Any]):
        self.supported_kwargs: dict[str, type] = {"seed": int}
        self.shared = shared
        self.steps: dict[str, int] = {}

    def fill_defaults(self, int32_tensor: Any) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> Any:
        import torch

        keys = []
        for r in requests_with_new_token:
            kwargs = r.state.logit_processor_kwargs
            if float(kwargs.get("temperature", 0.0)) <= 0 or "seed" not in kwargs:
                keys.append(0)
                continue
            step = self.steps.get(r.state.request_id, 0)
            self.steps[r.state.request_id] = step + 1
            keys.append(sampling.row_key(int(kwargs["seed"]), step))
        return torch.tensor(keys, dtype=torch.int32)

    def __call__(self, scores: Any, tensor_arg: Any) -> Any:
        import torch

        rows = scores.size(0)
        keys = tensor_arg[:rows].to(torch.int64)
        chosen = sampling.pick(scores, self.shared["temperature"], self.shared["top_p"], keys)
        sampled = (keys != 0)[:, None]
        only = torch.full_like(scores, float("-inf")).scatter(-1, chosen[:, None], 0.0)
        return torch.where(sampled, only, scores)
