"""Running one claimed inference shard: stream its records through the model in length-sorted
batches, write its part in one PUT, and mark it done only while holding its lease (fencing)."""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError
from barge.records import Record, iter_range
from barge.specs import InferenceSpec
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from worker import metrics
from worker.context import WorkerContext
from worker.models import LoadedModel, predict
from worker.outputs import JsonlPart, RecordId, coerce_id, errors_name, make_part, part_name
from worker.units import Control, LeaseLost, ShardWork, Stop, fail, finalize_if_last, retry_or_fail

log = logging.getLogger(__name__)

WINDOW_BATCHES = 16  # records are length-sorted within windows of this many batches


@dataclass
class Outcome:
    status: str
    succeeded: int
    failed: int
    output_key: str
    errors_key: str | None


def run_claimed(ctx: WorkerContext, work: ShardWork) -> str:
    """Run a claimed shard to its end; returns how it ended (the shard metric's status)."""
    shard_id = work.shard_id
    try:
        outcome = execute(ctx, work)
    except LeaseLost:
        log.warning("shard %s attempt %s lost its lease; dropping its work", shard_id, work.attempt)
        return "lease_lost"
    except PermanentJobError as exc:
        fail(ctx, work, exc.message)
        return state.SHARD_FAILED
    except SoftTimeLimitExceeded:
        limit = ctx.settings.shard_soft_time_limit
        fail(
            ctx,
            work,
            f"ran longer than the shard time limit ({limit:.0f}s, BARGE_SHARD_SOFT_TIME_LIMIT); "
            "submit the job with a smaller shard_size",
        )
        return state.SHARD_FAILED
    except Exception as exc:
        log.exception("shard %s attempt %s failed", shard_id, work.attempt)
        retry_or_fail(ctx, work, f"{type(exc).__name__}: {exc}")
        return "error"
    with ctx.session() as session:
        done = repo.finish_shard(
            session,
            work.shard_id,
            work.attempt,
            outcome.status,
            succeeded=outcome.succeeded,
            failed=outcome.failed,
            output_key=outcome.output_key,
            errors_key=outcome.errors_key,
        )
    if not done:
        return "lease_lost"
    finalize_if_last(ctx, work.job_id)
    return outcome.status


def _prefetch(it: Iterator[Record], size: int) -> Iterator[Record]:
    """Read records on a background thread so S3 I/O overlaps with compute."""
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=pump, daemon=True, name="barge-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()


def execute(ctx: WorkerContext, work: ShardWork) -> Outcome:
    """Run the shard's records through the model; return what was written."""
    spec = work.spec
    assert isinstance(spec, InferenceSpec)
    loaded = ctx.models.get(work.model_ref, spec.task)
    params = spec.task_params()
    loaded.input_tokens(params)  # refuses max_new_tokens that leave a prompt no room
    control = Control(ctx, work)
    store = ctx.store
    source = S3Uri.parse(work.source)
    info = store.head(source)
    if info is None:
        raise PermanentJobError(f"input object {work.source} disappeared")
    out_prefix = S3Uri.parse(spec.output).as_prefix()
    tmp_root = ctx.settings.resolved_cache_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    window_size = spec.batch_size * WINDOW_BATCHES
    max_text = ctx.settings.max_text_chars
    stopped: Stop | None = None
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        part = make_part(spec.output_format, Path(tmp) / "part")
        errors = JsonlPart(Path(tmp) / "errors")
        records = _prefetch(iter_range(store, info, work.fmt, work.rng), window_size * 2)
        window: list[tuple[int, Record]] = []
        try:
            for i, record in enumerate(records):
                window.append((work.record_offset + i, record))
                if len(window) >= window_size:
                    _process_window(
                        window, loaded, params, spec, work, part, errors, control, max_text
                    )
                    window = []
            if window:
                _process_window(window, loaded, params, spec, work, part, errors, control, max_text)
        except Stop as exc:
            stopped = exc
        finally:
            part.close()
            errors.close()
        control.beat()  # fencing: still ours right before we write?
        output_key = out_prefix.join(part_name(work.index, part.ext))
        store.put_file(output_key, part.path)
        errors_key: S3Uri | None = out_prefix.join(errors_name(work.index))
        assert errors_key is not None
        if errors.count:
            store.put_file(errors_key, errors.path)
        else:
            store.delete(errors_key)
            errors_key = None
    return Outcome(
        status=state.SHARD_CANCELLED if stopped else state.SHARD_SUCCEEDED,
        succeeded=part.count,
        failed=errors.count,
        output_key=output_key.key,
        errors_key=errors_key.key if errors_key else None,
    )


def _process_window(
    window: list[tuple[int, Record]],
    loaded: LoadedModel,
    params: Any,
    spec: InferenceSpec,
    work: ShardWork,
    part: Any,
    errors: JsonlPart,
    control: Control,
    max_text_chars: int,
) -> None:
    results: list[dict[str, Any] | None] = [None] * len(window)
    error_rows: list[dict[str, Any]] = []
    todo: list[tuple[int, Any, str]] = []  # (index in window, id, text)
    for i, (position, rec) in enumerate(window):
        rec_id, text, problem = _extract(rec, position, spec, max_text_chars)
        if problem is not None:
            error_rows.append(
                {"id": rec_id, "source": work.source, "line": rec.line, "error": problem}
            )
        else:
            todo.append((i, rec_id, text))
    if error_rows:
        metrics.RECORDS.labels(loaded.ref, loaded.task, "failed").inc(len(error_rows))
    todo.sort(key=lambda item: len(item[2]))
    failed_in_model: dict[int, dict[str, Any]] = {}
    try:
        for start in range(0, len(todo), spec.batch_size):
            control.between_batches()
            batch = todo[start : start + spec.batch_size]
            seed = params.seed + window[batch[0][0]][0] if spec.task == "generate" else 0
            started = time.monotonic()
            predictions = _predict_isolating(loaded, [t for _, _, t in batch], params, seed)
            metrics.observe_batch(
                loaded.ref, loaded.task, time.monotonic() - started, predictions, loaded.device
            )
            for (i, rec_id, _text), (ok, value) in zip(batch, predictions, strict=True):
                if ok:
                    results[i] = {"id": rec_id, **value}
                else:
                    position, rec = window[i]
                    failed_in_model[i] = {
                        "id": rec_id,
                        "source": work.source,
                        "line": rec.line,
                        "error": value,
                    }
            control.succeeded = part.count + sum(r is not None for r in results)
            control.failed = errors.count + len(error_rows) + len(failed_in_model)
    finally:
        # Whatever finished is written, in input order, even when stopping mid-window.
        part.write_rows([r for r in results if r is not None])
        merged = sorted(error_rows + list(failed_in_model.values()), key=lambda row: row["line"])
        errors.write_rows(merged)
        control.succeeded = part.count
        control.failed = errors.count


def _extract(
    rec: Record, position: int, spec: InferenceSpec, max_text_chars: int
) -> tuple[RecordId | None, str, str | None]:
    """The record's id (coerced, see ``coerce_id``), its text, and why it cannot be run (a
    per-record error) or None."""
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
    loaded: LoadedModel, texts: list[str], params: Any, seed: int
) -> list[tuple[bool, Any]]:
    """Predict a batch; if it fails, retry record by record so one bad record fails alone."""
    try:
        return [(True, r) for r in predict(loaded, texts, params, seed)]
    except SoftTimeLimitExceeded:
        raise  # the shard's time is up; no record is to blame
    except Exception as exc:
        if len(texts) == 1:
            return [(False, f"model failed on this record: {type(exc).__name__}: {exc}")]
    out: list[tuple[bool, Any]] = []
    for i, text in enumerate(texts):
        out.extend(_predict_isolating(loaded, [text], params, seed + i))
    return out
