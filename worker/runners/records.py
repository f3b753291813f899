"""What the kinds over text records share (``worker.runners.text``, ``worker.runners.text2text``,
``worker.runners.onnx``): loading the job's model for a shard (``load``), and running the
shard's records through the kind's ``Predict`` in length-sorted batches (``run``), writing its
part (and its errors file) in one PUT each, and handing the lifecycle what was written; the
lifecycle marks the shard done only while this attempt holds its lease (fencing).

A record that cannot be read, has no usable id or text, or makes the model fail is a per-record
error, never the shard's. A cancel stops the shard between batches with what it finished (before
the first batch the claim's check, moments old, stands: a small shard of one batch reads the
job's status once, at its claim).

What a shard asks of the store: one ranged GET of its records (plus a HEAD for formats other
than plain JSONL), one PUT of its part (and of its errors file, when it has errors). The model is
listed once per job per worker process (``worker.models.cache.ModelCache``).

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.metrics``, ``worker.models``,
``worker.shard``; never ``api`` or ``cli``.
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
from barge.records import Record, iter_range
from barge.specs import InferenceSpec
from barge.storage import ObjectInfo
from worker import metrics
from worker.context import WorkerContext
from worker.lease import Lease, Result, ShardWork, Stop, job_event
from worker.models import chat
from worker.models.cache import cache_for
from worker.models.loaded import LoadedModel
from worker.models.onnx import OutputTooLarge
from worker.shard import RecordId, ShardRun, coerce_id, prefetch, windows

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
    info: ObjectInfo,
    predict: Predict,
) -> Result:
    """Run the shard's records through ``predict``; return what was written."""
    spec = work.spec
    assert isinstance(spec, InferenceSpec)
    with ctx.scratch() as tmp:
        shard = _RecordsShard(ctx, work, lease, loaded, tmp, predict)
        window_size = spec.batch_size * WINDOW_BATCHES
        reading = iter_range(ctx.store, info, work.fmt, work.rng)
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
            for batch in _batches(todo, self.spec.batch_size):
                self.next_batch()
                self._batch(window, batch, results, failed)
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
        predictions = _predict_isolating(
            self.predict, loaded, [t.text for t in batch], params, seed, self.add_special_tokens
        )
        metrics.observe_batch(loaded.task, time.monotonic() - started, predictions, loaded.device)
        for todo, (ok, value) in zip(batch, predictions, strict=True):
            if ok:
                results[todo.at] = {"id": todo.rec_id, **value}
                if self.usage is not None:
                    for k, n in value.get("usage", {}).items():
                        self.usage[k] = self.usage.get(k, 0) + n
            else:
                failed[todo.at] = self._error_row(todo.rec_id, window[todo.at][1], value)

    def _error_row(self, rec_id: RecordId | None, rec: Record, error: str | None) -> dict[str, Any]:
        return {"id": rec_id, "source": self.work.source, "line": rec.line, "error": error}


@dataclass
class _Todo:
    """A record to run: its index in the window, its id, its text and its parameters."""

    at: int
    rec_id: Any
    text: str
    params: Any


def _batches(todo: list[_Todo], batch_size: int) -> Iterator[list[_Todo]]:
    """Batches of records with the same parameters, each length-sorted (so little padding)."""
    groups: dict[Any, list[_Todo]] = {}
    for item in todo:
        groups.setdefault(_params_key(item.params), []).append(item)
    for group in groups.values():
        group.sort(key=lambda item: len(item.text))
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


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
