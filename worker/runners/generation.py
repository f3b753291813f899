"""What the generating runners share (OpenAI chat and completions, ``worker.runners.openai_batch``;
native ``generate`` records, ``worker.runners.records``): a shard's requests run through the
generation engine (``worker.models.engines``) that ``BARGE_GENERATION_ENGINE`` picks for the
worker's device, under the shard's lease.

- **One engine run per window.** The runner hands a window's requests (``GenRequest``, each with
  its own sampling parameters and adapter) to ``ShardGeneration.run`` at once; results come back
  as each finishes and the runner puts them in input order. Nothing groups by prompt length.
- **The lease between engine steps.** The engine asks ``should_stop`` between its steps; that
  runs the lease's checks (the job's status: cancel; the soft time limit; the heartbeat) at most
  every ``CHECK_SECONDS``, and a ``Stop`` (or a lost lease, or the time limit) they raise ends
  the engine's run, its requests in flight dropped, and is raised again once the engine has
  returned, so the runner writes what finished and the shard ends as it always has.
- **Events.** The first shard of a job that a process runs says which engine ran (a
  ``generation_engine`` event); what the engine noted (out-of-memory back-offs and the batch
  size that worked) becomes a ``generation_backoff`` event.
- **Warm engines.** The batched and continuous engines run the warm model itself and are made per
  shard (they hold nothing between runs). vLLM loads the model's directory into an engine of its
  own, kept warm for the model (one at a time) with the adapters served so far.

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.coldstart`` (building a
vLLM engine is noted as cold start), ``worker.models``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from worker import coldstart
from worker.context import WorkerContext
from worker.lease import Lease, LeaseLost, ShardWork, Stop, job_event
from worker.models import engines
from worker.models.cache import fetch_model
from worker.models.engines import GenRequest, GenResult
from worker.models.loaded import LoadedModel

CHECK_SECONDS = 0.25  # the lease's checks run at most this often between engine steps

_said: set[Any] = set()  # jobs whose engine this process has named in an event
_vllm: dict[str, Any] = {}  # the warm vLLM engine, by its base model's directory
_lock = threading.Lock()


def engine_kind(ctx: WorkerContext, loaded: LoadedModel) -> str:
    """The engine this worker generates with for ``loaded`` (``engines.choose``)."""
    return engines.choose(ctx.settings.generation_engine, loaded.device)


def build_engine(ctx: WorkerContext, work: ShardWork, loaded: LoadedModel, kind: str) -> Any:
    """The engine ``kind`` over the shard's model: a new batched or continuous engine over the
    warm model, or the warm vLLM engine of the model's directory (the adapter added)."""
    key = f"{loaded.ref}@{loaded.revision}"
    if kind != "vllm":
        return engines.build(
            kind, loaded.model, loaded.tokenizer, loaded.device, ctx.settings, model_key=key
        )
    base_ref = work.base_ref or work.model_ref
    base_dir, _ = fetch_model(ctx.settings, ctx.store, base_ref)
    with _lock:
        engine: Any = _vllm.get(str(base_dir))
        if engine is None:
            _vllm.clear()  # one vLLM engine at a time: it holds its own copy of the weights
            started = time.monotonic()
            engine = _build_vllm(ctx, work, loaded, base_dir)
            coldstart.note(time.monotonic() - started)  # vLLM loads its own weights
            _vllm[str(base_dir)] = engine
        if loaded.adapter is not None:
            adapter_dir, _ = fetch_model(ctx.settings, ctx.store, work.model_ref)
            engine.add_adapter(loaded.adapter, adapter_dir)
    return engine


def _build_vllm(ctx: WorkerContext, work: ShardWork, loaded: LoadedModel, base_dir: Any) -> Any:
    """A vLLM engine over the base model's directory (it loads the weights itself)."""
    return engines.build(
        "vllm",
        loaded.model,
        loaded.tokenizer,
        loaded.device,
        ctx.settings,
        model_dir=base_dir,
        adapters={} if work.base_ref else None,
    )


class ShardGeneration:
    """A shard's generation: the engine picked for its model, run window by window under the
    shard's lease (see the module's docstring)."""

    def __init__(self, ctx: WorkerContext, work: ShardWork, lease: Lease, loaded: LoadedModel):
        self.ctx = ctx
        self.work = work
        self.lease = lease
        self.loaded = loaded
        self.kind = engine_kind(ctx, loaded)
        self.engine = build_engine(ctx, work, loaded, self.kind)
        self._last_check = time.monotonic()
        self._stopped: BaseException | None = None
        if work.job_id not in _said:
            _said.add(work.job_id)
            job_event(
                ctx,
                work,
                "generation_engine",
                f"shard {work.index} generates with the {self.kind} engine on {loaded.device}",
                shard=work.index,
                engine=self.kind,
                device=str(loaded.device),
                token_budget=ctx.settings.generation_token_budget,
                max_batch=ctx.settings.generation_max_batch,
                worker_pid=os.getpid(),
            )

    def request(self, index: int, prompt_ids: list[int], params: Any) -> GenRequest:
        """A request over the shard's model (its adapter, if any) with ``params``' sampling
        (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` where it has them)."""
        return GenRequest(
            index,
            prompt_ids,
            int(params.max_new_tokens),
            temperature=float(params.temperature),
            top_p=float(getattr(params, "top_p", 1.0)),
            seed=int(params.seed),
            stop=tuple(getattr(params, "stop", ()) or ()),
            adapter=self.loaded.adapter,
        )

    def should_stop(self) -> bool:
        """Between engine steps: the lease's checks, at most every ``CHECK_SECONDS``; True (and
        the reason kept) once they say stop."""
        if self._stopped is not None:
            return True
        now = time.monotonic()
        if now - self._last_check < CHECK_SECONDS:
            return False
        self._last_check = now
        try:
            self.lease.between_batches()
        except (Stop, LeaseLost, SoftTimeLimitExceeded) as exc:
            self._stopped = exc
            return True
        return False

    def run(self, requests: Iterable[GenRequest], take: Callable[[GenResult], None]) -> None:
        """Run ``requests`` through the engine, handing each result to ``take`` as it finishes;
        raises what stopped the run (``Stop``, ``LeaseLost``, ``SoftTimeLimitExceeded``) after
        the engine has returned."""
        self.loaded.activate()
        try:
            for result in self.engine.run(list(requests), self.should_stop):
                take(result)
        finally:
            self._say_notes()
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            raise stopped

    def _say_notes(self) -> None:
        notes = self.engine.notes()
        if notes:
            job_event(
                self.ctx,
                self.work,
                "generation_backoff",
                f"shard {self.work.index}: " + "; ".join(notes),
                shard=self.work.index,
                engine=self.kind,
                notes=notes,
            )
