"""Running one shard: claim it, stream its records through the model in length-sorted batches,
write its part in one PUT, and mark it done only while holding its lease (fencing)."""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from barge.errors import PermanentJobError
from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.records import Format, Range, Record, iter_range
from barge.specs import InferenceSpec
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from db.models import Job, Shard
from worker import metrics
from worker.context import WorkerContext
from worker.models import LoadedModel, predict
from worker.outputs import JsonlPart, errors_name, make_part, part_name

log = logging.getLogger(__name__)

WINDOW_BATCHES = 16  # records are length-sorted within windows of this many batches


class Stop(Exception):
    """Stop working on the shard: the job is no longer running."""

    def __init__(self, job_status: str):
        self.job_status = job_status
        super().__init__(f"job is {job_status}")


class LeaseLost(Exception):
    """Another attempt holds the shard now; this one must not write anything."""


@dataclass(frozen=True)
class ShardWork:
    shard_id: uuid.UUID
    job_id: uuid.UUID
    index: int
    attempt: int
    source: str
    fmt: Format
    rng: Range
    record_offset: int
    spec: InferenceSpec
    model_ref: str


@dataclass
class Outcome:
    status: str
    succeeded: int
    failed: int
    output_key: str
    errors_key: str | None


def run_shard(ctx: WorkerContext, shard_id: uuid.UUID) -> None:
    work = _claim(ctx, shard_id)
    if work is None:
        return
    started = time.monotonic()
    status = _run_claimed(ctx, work)
    metrics.SHARD_SECONDS.labels(work.spec.task, status).observe(time.monotonic() - started)


def _run_claimed(ctx: WorkerContext, work: ShardWork) -> str:
    """Run a claimed shard to its end; returns how it ended (the shard metric's status)."""
    shard_id = work.shard_id
    try:
        outcome = execute(ctx, work)
    except LeaseLost:
        log.warning("shard %s attempt %s lost its lease; dropping its work", shard_id, work.attempt)
        return "lease_lost"
    except PermanentJobError as exc:
        _fail(ctx, work, exc.message)
        return state.SHARD_FAILED
    except SoftTimeLimitExceeded:
        limit = ctx.settings.shard_soft_time_limit
        _fail(
            ctx,
            work,
            f"ran longer than the shard time limit ({limit:.0f}s, BARGE_SHARD_SOFT_TIME_LIMIT); "
            "submit the job with a smaller shard_size",
        )
        return state.SHARD_FAILED
    except Exception as exc:
        log.exception("shard %s attempt %s failed", shard_id, work.attempt)
        _retry_or_fail(ctx, work, f"{type(exc).__name__}: {exc}")
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
    _finalize_if_last(ctx, work.job_id)
    return outcome.status


def _claim(ctx: WorkerContext, shard_id: uuid.UUID) -> ShardWork | None:
    settings = ctx.settings
    with ctx.session() as session:
        shard = session.get(Shard, shard_id)
        if shard is None or shard.status in state.SHARD_FINAL:
            return None  # unknown, or a duplicate delivery of finished work
        job = repo.get_job(session, shard.job_id)
        assert job is not None
        if job.status != state.RUNNING:
            settled = repo.settle_unstarted_shard(
                session, shard.id, state.SHARD_CANCELLED, f"not run: job is {job.status}"
            )
        elif shard.attempt >= settings.max_attempts:
            error = (
                f"shard {shard.index} ({shard.source_uri}, records {shard.start_record}-"
                f"{shard.start_record + shard.record_count - 1}) gave up after {shard.attempt} "
                f"attempts; last error: {shard.last_error or 'the worker running it died or stalled'}"
            )
            settled = repo.settle_unstarted_shard(session, shard.id, state.SHARD_FAILED, error)
            if settled:
                state.transition(session, job, state.FAILED, error=error)
        else:
            attempt = repo.claim_shard(
                session, shard.id, ctx.name, timedelta(seconds=settings.lease_seconds)
            )
            if attempt is None:
                return None  # someone else holds a live lease
            if attempt > 1:
                repo.add_event(
                    session,
                    job.id,
                    "shard_retry",
                    f"shard {shard.index} attempt {attempt} on {ctx.name}",
                    shard=shard.index,
                    attempt=attempt,
                    previous_error=shard.last_error,
                )
            return ShardWork(
                shard_id=shard.id,
                job_id=job.id,
                index=shard.index,
                attempt=attempt,
                source=shard.source_uri,
                fmt=Format(shard.input_format, shard.compressed),
                rng=Range(
                    shard.start_record,
                    shard.record_count,
                    shard.first_line,
                    shard.byte_start,
                    shard.byte_end,
                ),
                record_offset=shard.record_offset,
                spec=InferenceSpec.model_validate(job.spec),
                model_ref=job.model_uri or job.spec["model"],
            )
    if settled:
        _finalize_if_last(ctx, shard.job_id)
    return None


def _fail(ctx: WorkerContext, work: ShardWork, message: str) -> None:
    error = f"shard {work.index} ({work.source}): {message}"
    with ctx.session() as session:
        if repo.finish_shard(
            session,
            work.shard_id,
            work.attempt,
            state.SHARD_FAILED,
            succeeded=0,
            failed=0,
            output_key=None,
            errors_key=None,
            error=error,
        ):
            job = repo.lock_job(session, work.job_id)
            if job is not None and job.status == state.RUNNING:
                state.transition(session, job, state.FAILED, error=error)
    _finalize_if_last(ctx, work.job_id)


def _retry_or_fail(ctx: WorkerContext, work: ShardWork, message: str) -> None:
    if work.attempt >= ctx.settings.max_attempts:
        _fail(ctx, work, f"failed after {work.attempt} attempts; last error: {message}")
        return
    with ctx.session() as session:
        released = repo.release_shard(session, work.shard_id, work.attempt, message)
        if released:
            repo.add_event(
                session,
                work.job_id,
                "shard_error",
                f"shard {work.index} attempt {work.attempt} failed, will retry: {message}",
                shard=work.index,
                attempt=work.attempt,
            )
    if released:
        ctx.send(
            RUN_SHARD,
            str(work.shard_id),
            str(work.job_id),
            work.index,
            countdown=min(60, 2**work.attempt),
        )


def _finalize_if_last(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    with ctx.session() as session:
        remaining = repo.unfinished_shard_count(session, job_id)
    if remaining == 0:
        ctx.send(FINALIZE_JOB, str(job_id))


class Control:
    """Between batches: is the job still running? Every few seconds: heartbeat and progress."""

    def __init__(self, ctx: WorkerContext, work: ShardWork):
        self.ctx = ctx
        self.work = work
        self.succeeded = 0
        self.failed = 0
        self._last_beat = time.monotonic()

    def between_batches(self) -> None:
        with self.ctx.session() as session:
            status = session.scalar(select(Job.status).where(Job.id == self.work.job_id))
        if status != state.RUNNING:
            raise Stop(status or "gone")
        if time.monotonic() - self._last_beat >= self.ctx.settings.heartbeat_seconds:
            self.beat()

    def beat(self) -> None:
        with self.ctx.session() as session:
            held = repo.heartbeat_shard(
                session,
                self.work.shard_id,
                self.work.attempt,
                timedelta(seconds=self.ctx.settings.lease_seconds),
                self.succeeded,
                self.failed,
            )
        if not held:
            raise LeaseLost()
        self._last_beat = time.monotonic()


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
    loaded = ctx.models.get(work.model_ref, spec.task)
    params = spec.task_params()
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
                    _process_window(window, loaded, params, spec, work, part, errors, control)
                    window = []
            if window:
                _process_window(window, loaded, params, spec, work, part, errors, control)
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
) -> None:
    results: list[dict[str, Any] | None] = [None] * len(window)
    error_rows: list[dict[str, Any]] = []
    todo: list[tuple[int, Any, str]] = []  # (index in window, id, text)
    for i, (position, rec) in enumerate(window):
        rec_id, text, problem = _extract(rec, position, spec)
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


def _extract(rec: Record, position: int, spec: InferenceSpec) -> tuple[Any, str, str | None]:
    if rec.data is None:
        return (None if spec.id_field else position), "", rec.error
    data = rec.data
    if spec.id_field:
        if spec.id_field not in data or data[spec.id_field] is None:
            return None, "", f"record has no id field {spec.id_field!r}"
        rec_id = data[spec.id_field]
    else:
        rec_id = position
    if spec.text_field not in data:
        return rec_id, "", f"record has no field {spec.text_field!r} (the job's text_field)"
    text = data[spec.text_field]
    if not isinstance(text, str):
        return rec_id, "", f"field {spec.text_field!r} is {type(text).__name__}, expected a string"
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
