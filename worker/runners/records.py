"""What the kinds over text records share (``worker.runners.text``, ``worker.runners.text2text``,
``worker.runners.onnx``): loading the job's model for a shard (``load``), and running the
shard's records through the kind's ``Predict`` in length-sorted batches (``run``; ``generate``
records go through the generation engine instead, a window at once, see
``worker.runners.generation``), writing its part (and its errors file) in one PUT each, and
handing the lifecycle what was written; the lifecycle marks the shard done only while this
attempt holds its lease (fencing).

A record that cannot be read, has no usable id or text, or makes the model fail is a per-record
error, never the shard's. A cancel stops the shard between batches with what it finished (before
the first batch the claim's check, moments old, stands: a small shard of one batch reads the
job's status once, at its claim).

What a shard asks of the store: one ranged GET of its records (plus a HEAD for formats other
than plain JSONL; a packed shard: a ranged GET of its listing, then a GET of each of its
objects, ``BARGE_INPUT_FETCH_THREADS`` at a time), one PUT of its part (and of its errors file, when it has errors). The model is
listed once per job per worker process (``worker.models.cache.ModelCache``).

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.metrics``, ``worker.models``,
``worker.runners.generation``, ``worker.shard``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, describe
from barge.records import Record
from barge.specs import InferenceSpec
from worker import metrics
from worker.context import WorkerContext
from worker.lease import Lease, Result, ShardWork, Stop, job_event
from worker.models import chat, engines
from worker.models.cache import cache_for
from worker.models.engines import GenResult
from worker.models.loaded import LoadedModel
from worker.models.onnx import OutputTooLarge
from worker.runners.generation import ShardGeneration
from worker.shard import RecordId, ShardRun, coerce_id, prefetch, read_records, windows

WINDOW_BATCHES = 16  # records are length-sorted within windows of this many batches

# One batch through a kind's model: (model, texts or what ``loaded.read`` made of each record,
# the job's or the records' parameters, seed, add special tokens) -> one result per record.
Predict = Callable[[LoadedModel, list[Any], Any, int, bool], list[dict[str, Any]]]


def load(ctx: WorkerContext, work: ShardWork) -> LoadedModel:
    """The job's model for this shard, warm or loaded now (then a ``model_loaded`` event says
    so); refuses parameters the model leaves no room for (max_new_tokens)."""
    spec = work.spec
    assert isinstance(spec, InferenceSpec)
    models = cache_for(ctx)
    before = dict(models.loads)
    loaded = models.get(work.model_ref, spec.task, work.job_id, base=work.base_ref)
    if models.loads != before:
        _loaded_event(ctx, work, loaded, before)
    loaded.input_tokens(spec.task_params())  # refuses max_new_tokens that leave no room
    return loaded


def run(
    ctx: WorkerContext,
    work: ShardWork,
    lease: Lease,
    loaded: LoadedModel,
    predict: Predict,
) -> Result:
    """Run the shard's records through ``predict``; return what was written."""
    spec = work.spec
    assert isinstance(spec, InferenceSpec)
    with ctx.scratch() as tmp:
        shard = _RecordsShard(ctx, work, lease, loaded, tmp, predict)
        window_size = spec.batch_size * WINDOW_BATCHES
        reading = read_records(ctx, work)
        # A shard of one window computes nothing before its last record is read: nothing for
        # a background reader to overlap, so it reads on this thread.
        records = (
            prefetch(reading, window_size * 2) if work.rng.record_count > window_size else reading
        )
        return shard.upload(shard.process(records, window_size), usage=shard.usage or None)


def _loaded_event(
    ctx: WorkerContext, work: ShardWork, loaded: LoadedModel, before: dict[str, int]
) -> None:
    """A ``model_loaded`` event when this shard loaded something: what, and how many bases,
    adapters and full models this worker process has loaded so far."""
    models = cache_for(ctx)
    loads = models.loads
    new = {kind: loads[kind] - before.get(kind, 0) for kind in loads}
    what = ", ".join(f"{n} {kind}" for kind, n in new.items() if n)
    job_event(
        ctx,
        work,
        "model_loaded",
        f"shard {work.index} loaded {what} ({loaded.load_seconds:.2f}s)",
        shard=work.index,
        loaded=new,
        worker_loads=dict(loads),
        adapter=loaded.adapter is not None,
        base=work.base_ref,
        warm=models.warm(),
        worker_pid=os.getpid(),
    )


class _RecordsShard(ShardRun[LoadedModel]):
    """One records shard's run (``worker.shard.ShardRun``): records are read, checked and run
    window by window, length-sorted within each, through the kind's ``predict``."""

    def __init__(
        self,
        ctx: WorkerContext,
        work: ShardWork,
        lease: Lease,
        loaded: LoadedModel,
        tmp: Path,
        predict: Predict,
    ):
        super().__init__(ctx, work, lease, loaded, tmp)
        self.predict = predict
        self.max_text_chars = ctx.settings.max_text_chars
        # Chat prompts come from the template with their special tokens already in them.
        self.add_special_tokens = self.spec.messages_field is None
        self.usage: dict[str, int] | None = (
            {} if self.spec.task in ("generate", "text2text") else None
        )
        lease.tokens = self.usage  # the heartbeat reads the tokens so far (tokens/s over time)
        # generate runs through the generation engine (made at the first window), the other
        # tasks through ``predict`` in batches.
        self.generation: ShardGeneration | None = None
        if self.spec.task == "generate" and loaded.read is None:
            self.generation = ShardGeneration(ctx, work, lease, loaded)
        # Out-of-memory back-off: the largest batch that failed and the largest that worked
        # since the last event, and the token budget learnt (0: none).
        self.out_of_memory = 0
        self.worked = 0
        self.learnt_tokens = 0

    def process(self, records: Iterator[Record], window_size: int) -> Stop | None:
        """Every record, window by window; the ``Stop`` that cut the shard short, if any."""
        return self.walk(
            windows(enumerate(records, self.work.record_offset), window_size), self._window
        )

    def _window(self, window: list[tuple[int, Record]]) -> None:
        """Length-sort the window's usable records, run them in batches, write the results in
        input order (whatever finished, even when stopping mid-window)."""
        results: list[dict[str, Any] | None] = [None] * len(window)
        rejected, todo = self._extract_all(window)
        failed: dict[int, dict[str, Any]] = {}  # by index in window: failed in the model
        try:
            if self.generation is not None:
                self._generate(window, todo, results, failed, len(rejected))
            budget = self.token_budget()
            lengths = self._lengths(todo) if budget and self.generation is None else None
            cut = cut_batches(todo, self.spec.batch_size, budget if lengths else 0, lengths)
            for batch in cut if self.generation is None else ():
                self.next_batch()
                self._batch(window, batch, results, failed)
                self._say_back_off(batch, lengths)
                self.lease.succeeded = self.part.count + sum(r is not None for r in results)
                self.lease.failed = self.errors.count + len(rejected) + len(failed)
        finally:
            self.part.write_rows([r for r in results if r is not None])
            merged = sorted(rejected + list(failed.values()), key=lambda row: row["line"])
            self.errors.write_rows(merged)
            self.lease.succeeded = self.part.count
            self.lease.failed = self.errors.count

    def _extract_all(
        self, window: list[tuple[int, Record]]
    ) -> tuple[list[dict[str, Any]], list[_Todo]]:
        """The error rows of records that cannot run, and what to run of the others."""
        rejected: list[dict[str, Any]] = []
        todo: list[_Todo] = []
        for i, (position, rec) in enumerate(window):
            rec_id, text, problem = _extract(
                rec, position, self.spec, self.max_text_chars, self.loaded.read
            )
            params = self.params
            if problem is None and rec.data is not None:
                text, params, problem = self._prompt_and_params(rec.data, text)
            if problem is not None:
                rejected.append(self._error_row(rec_id, rec, problem))
            else:
                todo.append(_Todo(i, rec_id, text, params))
        if rejected:
            metrics.RECORDS.labels(self.loaded.task, "failed").inc(len(rejected))
        return rejected, todo

    def _prompt_and_params(self, data: dict[str, Any], text: str) -> tuple[str, Any, str | None]:
        """The record's prompt (its chat messages rendered, with ``messages_field``) and its
        generation parameters (its own over the job's, with ``params_field``), or why it
        cannot run."""
        spec = self.spec
        params = self.params
        if spec.messages_field is not None:
            try:
                messages = chat.parse_messages(data[spec.messages_field], spec.messages_field)
                text = chat.render(self.loaded.tokenizer, messages, spec.messages_field)
            except chat.MessagesError as exc:
                return "", params, exc.message
            if len(text) > self.max_text_chars:
                return (
                    "",
                    params,
                    f"field {spec.messages_field!r} renders to {len(text)} characters, more than "
                    f"the limit of {self.max_text_chars} (BARGE_MAX_TEXT_CHARS)",
                )
        if spec.params_field is not None and spec.params_field in data:
            try:
                params = spec.record_params(data[spec.params_field])
                self.loaded.input_tokens(params)  # room left for the prompt?
            except (ValueError, PermanentJobError) as exc:
                return "", params, str(exc)
        return text, params, None

    def _batch(
        self,
        window: list[tuple[int, Record]],
        batch: list[_Todo],
        results: list[dict[str, Any] | None],
        failed: dict[int, dict[str, Any]],
    ) -> None:
        """Predict one batch (records of one set of parameters) into ``results`` (or
        ``failed``), by index in the window."""
        loaded = self.loaded
        params = batch[0].params
        sampled = self.spec.task in ("generate", "text2text")
        seed = params.seed + window[batch[0].at][0] if sampled else 0
        started = time.monotonic()
        predictions = self._predict_backing_off([t.text for t in batch], params, seed)
        metrics.observe_batch(loaded.task, time.monotonic() - started, predictions, loaded.device)
        for todo, (ok, value) in zip(batch, predictions, strict=True):
            if ok:
                results[todo.at] = {"id": todo.rec_id, **value}
                if self.usage is not None:
                    for k, n in value.get("usage", {}).items():
                        self.usage[k] = self.usage.get(k, 0) + n
            else:
                failed[todo.at] = self._error_row(todo.rec_id, window[todo.at][1], value)

    # --- token-budget batches and out-of-memory back-off ----------------------------------------

    def token_budget(self) -> int:
        """Padded tokens per batch (0: fixed, length-sorted batches of ``batch_size``): the
        job's ``max_batch_tokens``, else ``BARGE_MAX_BATCH_TOKENS``, else, on a GPU,
        ``batch_size`` times the tokens kept per record (the most a fixed batch could hold) and
        on a CPU fixed batches (wide batches measured slower there), lowered by an
        out-of-memory back-off."""
        chosen = self.spec.max_batch_tokens
        if chosen is None:
            chosen = self.ctx.settings.max_batch_tokens
        if chosen is None and str(self.loaded.device).startswith("cuda"):
            chosen = self.spec.batch_size * int(getattr(self.params, "max_length", 512))
        chosen = chosen or 0
        if chosen and self.learnt_tokens:
            chosen = min(chosen, self.learnt_tokens)
        return chosen

    def _lengths(self, todo: list[_Todo]) -> list[int] | None:
        """Each record's tokens as its batch will pad them, by index in the window (None: the
        model's inputs are not token sequences; fixed batches then)."""
        loaded = self.loaded
        if not todo:
            return None
        if loaded.read is not None:
            sizer = getattr(loaded.model, "token_lengths", None)
            found = sizer([t.text for t in todo], self.params) if sizer else None
        elif loaded.tokenizer is not None:
            enc = loaded.tokenizer(
                [t.text for t in todo],
                truncation=True,
                max_length=loaded.input_tokens(self.params),
                add_special_tokens=self.add_special_tokens,
            )
            found = [len(ids) for ids in enc["input_ids"]]
        else:
            found = None
        if found is None:
            return None
        lengths = [0] * (max(t.at for t in todo) + 1)
        for t, n in zip(todo, found, strict=True):
            lengths[t.at] = n
        return lengths

    def _predict_backing_off(
        self, texts: list[Any], params: Any, seed: int, halved: bool = False
    ) -> list[tuple[bool, Any]]:
        """Predict a batch; out of memory, halve it and run both halves (down to one record,
        then a per-record error); any other failure is retried record by record."""
        try:
            out = [
                (True, r)
                for r in self.predict(self.loaded, texts, params, seed, self.add_special_tokens)
            ]
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            if len(texts) == 1 or not engines.is_out_of_memory(exc):
                return _predict_isolating(
                    self.predict, self.loaded, texts, params, seed, self.add_special_tokens
                )
            failed = len(texts)
        else:
            if halved:
                self.worked = max(self.worked, len(texts))
            return out
        engines.release_memory(self.loaded.device)
        self.out_of_memory = max(self.out_of_memory, failed)
        half = (len(texts) + 1) // 2
        return self._predict_backing_off(
            texts[:half], params, seed, True
        ) + self._predict_backing_off(texts[half:], params, seed + half, True)

    def _say_back_off(self, batch: list[_Todo], lengths: list[int] | None) -> None:
        """After a batch that ran out of memory: an event naming the size that worked, and a
        token budget for the shard's later batches that holds it."""
        if not self.out_of_memory:
            return
        longest = max((lengths[t.at] for t in batch), default=0) if lengths else 0
        worked = self.worked
        if worked and longest:
            self.learnt_tokens = worked * longest
        job_event(
            self.ctx,
            self.work,
            "batch_backoff",
            f"shard {self.work.index}: out of memory with {self.out_of_memory} records in a "
            f"batch; halved, {worked or 1} at a time worked"
            + (
                f" ({worked * longest} padded tokens; the shard's later batches hold at most that)"
                if worked and longest
                else ""
            ),
            shard=self.work.index,
            failed_size=self.out_of_memory,
            worked_size=worked,
            max_batch_tokens=self.learnt_tokens or None,
        )
        self.out_of_memory = self.worked = 0

    def _generate(
        self,
        window: list[tuple[int, Record]],
        todo: list[_Todo],
        results: list[dict[str, Any] | None],
        failed: dict[int, dict[str, Any]],
        rejected: int,
    ) -> None:
        """The window's prompts through the generation engine at once, each with its own
        parameters (a record's seed is its parameters' seed plus its position in the input);
        results land in ``results`` (or ``failed``) as each finishes."""
        if not todo:
            return
        assert self.generation is not None and self.usage is not None
        gen, usage = self.generation, self.usage
        self.next_batch()
        by_at = {t.at: t for t in todo}
        requests = [
            gen.request(
                t.at,
                self._prompt_ids(t),
                t.params.model_copy(update={"seed": t.params.seed + window[t.at][0]}),
            )
            for t in todo
        ]
        started = time.monotonic()

        def take(result: GenResult) -> None:
            item = by_at[result.index]
            if result.error is not None:
                error = result.error if result.refused else f"model failed: {result.error}"
                failed[item.at] = self._error_row(item.rec_id, window[item.at][1], error)
            else:
                made = generated(result)
                results[item.at] = {"id": item.rec_id, **made}
                for k, n in made["usage"].items():
                    usage[k] = usage.get(k, 0) + n
            self.lease.succeeded = self.part.count + sum(r is not None for r in results)
            self.lease.failed = self.errors.count + rejected + len(failed)

        try:
            gen.run(requests, take)
        finally:
            outcomes = [(True, r) for r in results if r is not None]
            outcomes += [(False, r) for r in failed.values()]
            metrics.observe_batch(
                self.loaded.task, time.monotonic() - started, outcomes, self.loaded.device
            )

    def _prompt_ids(self, item: _Todo) -> list[int]:
        """A prompt's token ids as the model sees them: cut to the tokens the job keeps."""
        enc = self.loaded.tokenizer(
            item.text,
            truncation=True,
            max_length=self.loaded.input_tokens(item.params),
            add_special_tokens=self.add_special_tokens,
        )
        return list(enc["input_ids"])

    def _error_row(self, rec_id: RecordId | None, rec: Record, error: str | None) -> dict[str, Any]:
        source = rec.source or self.work.source  # a packed shard's records name their object
        return {"id": rec_id, "source": source, "line": rec.line, "error": error}


def generated(result: GenResult) -> dict[str, Any]:
    """A native generate record's result: its text, why it ended and its token usage."""
    return {
        "text": result.text,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


@dataclass
class _Todo:
    """A record to run: its index in the window, its id, its text and its parameters."""

    at: int
    rec_id: Any
    text: str
    params: Any


def cut_batches(
    todo: list[_Todo], batch_size: int, budget: int = 0, lengths: list[int] | None = None
) -> Iterator[list[_Todo]]:
    """Batches of records with the same parameters, each length-sorted (so little padding):
    ``batch_size`` records each, or, with a token ``budget`` and each record's token
    ``lengths`` (by index in the window), as many as keep the padded batch (records times its
    longest) within the budget: short records run in wide batches, long ones in narrow ones
    (a record over the budget alone)."""
    groups: dict[Any, list[_Todo]] = {}
    for item in todo:
        groups.setdefault(_params_key(item.params), []).append(item)
    for group in groups.values():
        if not budget or lengths is None:
            group.sort(key=lambda item: len(item.text))
            for start in range(0, len(group), batch_size):
                yield group[start : start + batch_size]
            continue
        group.sort(key=lambda item: lengths[item.at])
        batch: list[_Todo] = []
        for item in group:  # ascending: the newest record is the batch's longest
            if batch and (len(batch) + 1) * lengths[item.at] > budget:
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch


def _params_key(params: Any) -> Any:
    return tuple(sorted(params.model_dump().items()))


def _extract(
    rec: Record,
    position: int,
    spec: InferenceSpec,
    max_text_chars: int,
    read: Callable[[dict[str, Any]], tuple[Any, str | None]] | None = None,
) -> tuple[RecordId | None, Any, str | None]:
    """The record's id (coerced, see ``coerce_id``), its text (or, for a model that reads its
    own fields, what ``read`` makes of the record), and why it cannot be run (a per-record
    error) or None."""
    if rec.data is None:
        return (None if spec.id_field else position), "", rec.error
    data = rec.data
    rec_id: RecordId | None = position
    if spec.id_field:
        if spec.id_field not in data:
            return None, "", f"record has no id field {spec.id_field!r}"
        rec_id, problem = coerce_id(data[spec.id_field])
        if problem is not None:
            return None, "", f"{problem} (id_field {spec.id_field!r})"
    if read is not None:
        value, problem = read(data)
        return rec_id, value, problem
    if spec.messages_field is not None:
        if spec.messages_field not in data:
            return (
                rec_id,
                "",
                f"record has no field {spec.messages_field!r} (the job's messages_field)",
            )
        return rec_id, "", None  # rendered by the shard run, which has the tokenizer
    if spec.text_field not in data:
        return rec_id, "", f"record has no field {spec.text_field!r} (the job's text_field)"
    text = data[spec.text_field]
    if not isinstance(text, str):
        return rec_id, "", f"field {spec.text_field!r} is {type(text).__name__}, expected a string"
    if len(text) > max_text_chars:
        return (
            rec_id,
            "",
            f"field {spec.text_field!r} has {len(text)} characters, more than the limit of "
            f"{max_text_chars} (BARGE_MAX_TEXT_CHARS)",
        )
    return rec_id, text, None


def _predict_isolating(
    predict: Predict,
    loaded: LoadedModel,
    texts: list[Any],
    params: Any,
    seed: int,
    add_special_tokens: bool = True,
) -> list[tuple[bool, Any]]:
    """Predict a batch; if it fails, retry record by record so one bad record fails alone."""
    try:
        return [(True, r) for r in predict(loaded, texts, params, seed, add_special_tokens)]
    except SoftTimeLimitExceeded:
        raise  # the shard's time is up; no record is to blame
    except Exception as exc:
        if len(texts) == 1 and isinstance(exc, OutputTooLarge):
            return [(False, str(exc))]  # an ONNX output over its bound names size and limit
        if len(texts) == 1:
            return [(False, f"model failed on this record: {describe(exc)}")]
    out: list[tuple[bool, Any]] = []
    for i, text in enumerate(texts):
        out.extend(
            _predict_isolating(predict, loaded, [text], params, seed + i, add_special_tokens)
        )
    return out
