"""The batched generation engine: padded batches done right, with a decode loop of its own over
the Hugging Face model's forward and its KV cache.

- **Order.** Requests are sorted by adapter, by ``max_new_tokens`` (power-of-two buckets, so
  requests of similar lengths share a batch) and by prompt length.
- **Prefill in groups of similar length.** Prompts are prefilled in groups cut from that order
  (little padding in each), left-padded, with their attention mask and explicit position ids
  (``cumsum(mask) - 1``).
- **Decode in one wide batch.** Each group's KV cache is merged, left-padded, into one decode
  batch, which steps one token per row at a time. A row that finishes (end-of-sequence,
  ``max_new_tokens``, a stop string) is yielded at once and dropped from the batch and its
  cache (and the padding columns nobody needs any more go with it), so a batch never waits on
  its longest member at full width; freed rows are refilled from the queue.
- **Token budget.** The batch admits a request only while its rows times its longest row's final
  length (prompt + ``max_new_tokens``) stay within the token budget, and at most ``max_rows``
  rows, or what an out-of-memory error taught for that length (``SizeMemory``). A request that
  alone needs more than the budget is a per-record error.
- **Sampling.** Each row is sampled with its own seeded noise (``worker.models.engines.sampling``):
  greedy rows equal ``model.generate`` on the prompt alone, and a sampled row gives the same
  tokens whatever batch it lands in.
- **Out of memory.** The rows in flight go back to the queue and the row limit for their length
  halves; a request alone out of memory is a per-record error.

Models whose cache is not plain per-layer key/value tensors (sliding-window or linear-attention
layers) cannot have caches merged: they prefill each batch at once and only drop finished rows.

Imports: ``worker.models.engines``, ``worker.models.hf``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from worker.models import hf
from worker.models.engines import (
    SIZES,
    Finisher,
    GenRequest,
    GenResult,
    SizeMemory,
    is_out_of_memory,
    length_bucket,
    never,
    refusal,
    release_memory,
    sampling,
)

PREFILL_SLACK = 1.2  # a prefill group's padded tokens stay within this much of its real ones
PREFILL_MIN_TOKENS = 2048  # the most tokens one prefill forward takes: this or budget / 4
REFILL_FRACTION = 4  # refill once a quarter of the batch's rows are free (or the queue is short)


def cache_argument(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` (recent transformers), else
    ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class BatchedEngine:
    """See the module's docstring. ``model`` is a causal LM (a peft model over a warm base when
    requests name adapters)."""

    name = "batched"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: Any,
        token_budget: int,
        max_rows: int,
        model_key: str = "",
        sizes: SizeMemory = SIZES,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.model_key = model_key
        self.sizes = sizes
        self.eos = hf.eos_ids(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.cache_arg = cache_argument(model)
        self.prefill_tokens = max(PREFILL_MIN_TOKENS, token_budget // 4)
        self.mergeable = self._mergeable()
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        taken, self._notes = self._notes, []
        return taken

    def run(
        self, requests: Sequence[GenRequest], should_stop: Callable[[], bool] = never
    ) -> Iterator[GenResult]:
        queue: deque[GenRequest] = deque()
        for request in requests:
            if (refused := refusal(request, self.token_budget)) is not None:
                yield refused
            elif not self._has_adapter(request.adapter):
                yield GenResult.failed(request, f"adapter {request.adapter} is not loaded")
            else:
                queue.append(request)
        queue = deque(sorted(queue, key=order))
        batch: Batch | None = None
        done: set[int] = set()  # indices yielded (never run again after a back-off)
        while queue or (batch is not None and batch.rows):
            if should_stop():
                return
            if batch is None or not batch.rows:
                batch = Batch(self, queue[0].adapter)
            group: list[GenRequest] = []
            try:
                group = self.admit(batch, queue)
                for result in batch.prefill(group) if group else ():
                    done.add(result.index)
                    yield result
                group = []
                for result in batch.step() if batch.rows else ():
                    done.add(result.index)
                    yield result
                continue
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failed = [r for r in batch.rows + group if r.index not in done]
            batch = None  # its cache goes (and the error's frames) before memory is released
            yield from self._back_off(failed, queue)

    # --- admission -----------------------------------------------------------------------------

    def admit(self, batch: Batch, queue: deque[GenRequest]) -> list[GenRequest]:
        """The requests to prefill into ``batch`` now (taken off ``queue``): a group of similar
        prompt lengths that keeps the batch within its row limit and the token budget."""
        if not queue or queue[0].adapter != batch.adapter:
            return []
        if batch.rows and not self.mergeable:
            return []
        rows = len(batch.rows)
        longest = batch.longest_final()
        limit = self._row_limit(max(longest, queue[0].tokens))
        free = limit - rows
        if free <= 0 or (rows and free < min(max(1, limit // REFILL_FRACTION), len(queue))):
            return []
        group: list[GenRequest] = []
        real = widest = 0  # the group's prompt tokens, and its widest prompt
        while queue and len(group) < free and queue[0].adapter == batch.adapter:
            nxt = queue[0]
            final = max(longest, nxt.tokens)
            n = rows + len(group) + 1
            padded = (len(group) + 1) * max(widest, len(nxt.prompt_ids))
            if n * final > self.token_budget and (group or rows):
                break
            if group and (
                n > self._row_limit(final)
                or (
                    self.mergeable
                    and (
                        padded > self.prefill_tokens
                        or padded > PREFILL_SLACK * (real + len(nxt.prompt_ids)) + 32
                    )
                )
            ):
                break
            group.append(queue.popleft())
            real += len(nxt.prompt_ids)
            widest = max(widest, len(nxt.prompt_ids))
            longest = final
        return group

    def _row_limit(self, tokens: int) -> int:
        learnt = self.sizes.limit(self.model_key, str(self.device), length_bucket(tokens))
        return min(self.max_rows, learnt) if learnt is not None else self.max_rows

    def _back_off(self, rows: list[GenRequest], queue: deque[GenRequest]) -> Iterator[GenResult]:
        """After an out-of-memory error: ``rows`` (in flight, unfinished) go back to the queue
        and batches of their length hold half as many from now on; one row alone fails."""
        release_memory(self.device)
        if len(rows) <= 1:
            for row in rows:
                yield GenResult.failed(
                    row,
                    f"out of memory generating this request alone ({row.tokens} tokens with its "
                    f"prompt) on {self.device}",
                )
            return
        half = len(rows) // 2
        bucket = length_bucket(max(r.tokens for r in rows))
        self.sizes.lower(self.model_key, str(self.device), bucket, half)
        self._notes.append(
            f"out of memory generating {len(rows)} requests of up to {bucket} tokens on "
            f"{self.device}; batches of this length now hold at most {half}"
        )
        queue.extendleft(sorted(rows, key=order, reverse=True))

    # --- the model -----------------------------------------------------------------------------

    def _mergeable(self) -> bool:
        """Whether this model's KV cache is plain key/value tensors per layer (so caches can be
        merged and trimmed, and grow in place)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers: list[Any] = list(DynamicCache(config=self.model.config).layers)
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def new_cache(self, data: Any = None) -> Any:
        """A KV cache for the model (growing in place where it is mergeable), holding ``data``
        (keys and values per layer) if given."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if self.mergeable:
            cache.layers = [growing_layer() for _ in cache.layers]
        for layer, (keys, values) in zip(cache.layers, data or (), strict=False):
            layer.update(keys, values)
        return cache

    def forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """Next-token logits (fp32, [rows, vocab]) of the last position of each row."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: cache},
        )
        return out.logits[:, -1, :].float()

    def autocast(self) -> Any:
        return hf.autocast(hf.autocast_dtype(self.device))

    def _has_adapter(self, name: str | None) -> bool:
        return name is None or name in (getattr(self.model, "peft_config", None) or {})

    def adapter(self, name: str | None) -> Any:
        """Run through LoRA adapter ``name`` on the shared base (peft), or the base alone."""
        if not hasattr(self.model, "peft_config"):
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        return contextlib.nullcontext()


def order(request: GenRequest) -> tuple[str, int, int]:
    return (request.adapter or "", length_bucket(request.max_new_tokens), len(request.prompt_ids))


class Batch:
    """One decode batch: its rows (requests, unfinished), what each has made, and the KV cache,
    attention mask, last positions and pending tokens of them all (row ``i`` everywhere)."""

    def __init__(self, engine: BatchedEngine, adapter: str | None):
        self.engine = engine
        self.adapter = adapter
        self.rows: list[GenRequest] = []
        self.finishers: list[Finisher] = []
        self.cache: Any = None
        self.mask: Any = None
        self.positions: Any = None
        self.pending: Any = None

    def longest_final(self) -> int:
        return max((r.tokens for r in self.rows), default=0)

    def prefill(self, group: list[GenRequest]) -> Iterator[GenResult]:
        """Prefill ``group``, take each one's first token, and merge the unfinished into the
        batch."""
        import torch

        engine = self.engine
        ids, mask, positions = self._prefill_inputs(group)
        cache = engine.new_cache()
        with torch.inference_mode(), engine.adapter(self.adapter), engine.autocast():
            logits = engine.forward(ids, mask, positions, cache)
        finishers = [Finisher(r, engine.tokenizer, engine.eos) for r in group]
        tokens = pick(logits, finishers)
        keep = yield from self._advance(finishers, tokens)
        if not keep:
            return
        picked = torch.tensor(keep, device=engine.device)
        cache.reorder_cache(picked)
        self._merge(
            [group[j] for j in keep],
            [finishers[j] for j in keep],
            cache,
            mask[picked],
            positions[picked, -1:],
            tokens[picked],
        )

    def step(self) -> Iterator[GenResult]:
        """Feed every row its pending token; take the next."""
        import torch

        engine = self.engine
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        positions = self.positions + 1
        with torch.inference_mode(), engine.adapter(self.adapter), engine.autocast():
            logits = engine.forward(self.pending[:, None], mask, positions, self.cache)
        self.mask, self.positions = mask, positions
        tokens = pick(logits, self.finishers)
        keep = yield from self._advance(self.finishers, tokens)
        self.pending = tokens
        if len(keep) < len(self.rows):
            self._select(keep)

    @staticmethod
    def _advance(finishers: list[Finisher], tokens: Any) -> Generator[GenResult, None, list[int]]:
        """Give each row its token; yield the finished; return the indices of the others."""
        keep = []
        for j, token in enumerate(tokens.tolist()):
            if finishers[j].add(token):
                yield finishers[j].result()
            else:
                keep.append(j)
        return keep

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep``, and drop the padding columns no row needs any more."""
        import torch

        self.rows = [self.rows[j] for j in keep]
        self.finishers = [self.finishers[j] for j in keep]
        if not keep:
            self.cache = self.mask = self.positions = self.pending = None
            return
        picked = torch.tensor(keep, device=self.engine.device)
        self.cache.reorder_cache(picked)
        self.mask, self.positions = self.mask[picked], self.positions[picked]
        self.pending = self.pending[picked]
        unused = int(self.mask.any(dim=0).int().argmax())
        if unused and self.engine.mergeable:
            self.mask = self.mask[:, unused:]
            self.cache = self.engine.new_cache(
                [(k[:, :, unused:], v[:, :, unused:]) for k, v, *_ in self.cache]
            )

    def _merge(
        self,
        rows: list[GenRequest],
        finishers: list[Finisher],
        cache: Any,
        mask: Any,
        positions: Any,
        pending: Any,
    ) -> None:
        """Add prefilled rows to the batch, left-padding the narrower side's cache and mask."""
        import torch

        if not self.rows:
            self.rows, self.finishers = rows, finishers
            self.cache, self.mask, self.positions, self.pending = cache, mask, positions, pending
            return
        width = max(self.mask.shape[1], mask.shape[1])
        layers = []
        for (k1, v1, *_), (k2, v2, *_) in zip(self.cache, cache, strict=True):
            layers.append(
                (
                    torch.cat([_pad_left(k1, width, 2), _pad_left(k2, width, 2)], dim=0),
                    torch.cat([_pad_left(v1, width, 2), _pad_left(v2, width, 2)], dim=0),
                )
            )
        self.cache = self.engine.new_cache(layers)
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions])
        self.pending = torch.cat([self.pending, pending])
        self.rows += rows
        self.finishers += finishers

    def _prefill_inputs(self, rows: list[GenRequest]) -> tuple[Any, Any, Any]:
        """Left-padded prompt ids, their attention mask, and position ids that start at 0 at
        each prompt's first real token (padding positions hold 1, as ``generate`` does)."""
        import torch

        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.engine.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.prompt_ids)
            ids[i, width - n :] = torch.tensor(list(r.prompt_ids), dtype=torch.long)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        device = self.engine.device
        return ids.to(device), mask.to(device), positions.to(device)


def pick(logits: Any, finishers: list[Finisher]) -> Any:
    """Each row's next token: greedy, or drawn with its request's seeded noise."""
    import torch

    requests = [f.request for f in finishers]
    if all(r.temperature <= 0 for r in requests):
        return torch.argmax(logits, dim=-1)
    device = logits.device
    keys = [
        sampling.row_key(r.seed, len(f.tokens)) if r.temperature > 0 else 0
        for r, f in zip(requests, finishers, strict=True)
    ]
    return sampling.pick(
        logits,
        torch.tensor([r.temperature for r in requests], device=device),
        torch.tensor([r.top_p for r in requests], device=device),
        torch.tensor(keys, device=device),
    )


def _pad_left(tensor: Any, width: int, dim: int) -> Any:
    """``tensor`` widened to ``width`` along ``dim`` with zeros on the left."""
    import torch

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


GROW_TOKENS = 64  # a cache layer grows by this much room at a time (copied once per 64 steps)
_GROWING: list[Any] = []


def growing_layer() -> Any:
    """A ``DynamicLayer`` whose keys and values are views of buffers with room to spare, so a
    decode step writes its token in place instead of copying the whole cache (as concatenation
    does each step)."""
    if not _GROWING:
        _GROWING.append(_growing_class())
    return _GROWING[0]()


def _growing_class() -> Any:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):  # type: ignore[misc]
        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self.used = 0
            self.key_room: Any = None
            self.value_room: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.used + key_states.shape[-2]
            if self.key_room is None or end > self.key_room.shape[-2]:
                self.key_room = _widen(self.key_room, key_states, self.used, end)
                self.value_room = _widen(self.value_room, value_states, self.used, end)
            self.key_room[:, :, self.used : end] = key_states
            self.value_room[:, :, self.used : end] = value_states
            self.used = end
            self.keys = self.key_room[:, :, :end]
            self.values = self.value_room[:, :, :end]
            return self.keys, self.values

        def reorder_cache(self, beam_idx: Any) -> None:
            if self.used:
                self.key_room = self.key_room.index_select(0, beam_idx)
                self.value_room = self.value_room.index_select(0, beam_idx)
                self.keys = self.key_room[:, :, : self.used]
                self.values = self.value_room[:, :, : self.used]

    return GrowingLayer


def _widen(room: Any, states: Any, used: int, end: int) -> Any:
    """A buffer for ``end`` tokens and ``GROW_TOKENS`` more, holding ``room``'s first ``used``."""
    shape = list(states.shape)
    shape[-2] = end + GROW_TOKENS
    wider = states.new_empty(shape)
    if room is not None and used:
        wider[:, :, :used] = room[:, :, :used]
    return wider
