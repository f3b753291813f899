"""Running a fine-tune: one unit of work under a lease for the whole job.

A claim resumes from the newest complete checkpoint (or starts at step 0), trains in slices of at
most ``BARGE_FINETUNE_SLICE_SECONDS`` (then checkpoints, hands the unit back and re-queues it),
checks the job's status between steps, and on the last step writes a model directory and
registers it in the same transaction that marks the unit done (fencing: once, by the holder).

Checkpoint layout under the job's prefix::

    checkpoints/step-00000120/{model.safetensors, optimizer.safetensors, trainer_state.json}
    checkpoints/latest.json    # moved only after the step's files are all written
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError

from barge.errors import PermanentJobError
from barge.queue import RUN_SHARD
from barge.specs import FinetuneSpec
from barge.storage import ObjectStore, S3Uri, local_path
from db import repositories as repo
from db import state
from worker.context import WorkerContext
from worker.finetune_data import check_datasets, load_dataset
from worker.models import fetch_model, pick_device
from worker.training import CHECKPOINT_FILES, Trainer
from worker.units import (
    Control,
    LeaseLost,
    ShardWork,
    Stop,
    fail,
    finalize_if_last,
    retry_or_fail,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints/"
LATEST = "checkpoints/latest.json"
MODEL_PREFIX = "model/"
SUMMARY_FILE = "training_summary.json"
STATUS_CHECK_SECONDS = 1.0  # how often the job's status is read between steps


def run_claimed(ctx: WorkerContext, work: ShardWork) -> str:
    """Train a claimed fine-tune until done, cancelled or its slice ends; how it ended."""
    assert isinstance(work.spec, FinetuneSpec)
    try:
        return _run(ctx, work, work.spec)
    except LeaseLost:
        log.warning("fine-tune %s attempt %s lost its lease", work.job_id, work.attempt)
        return "lease_lost"
    except PermanentJobError as exc:
        fail(ctx, work, exc.message)
        return state.SHARD_FAILED
    except SoftTimeLimitExceeded:
        fail(
            ctx,
            work,
            f"a training slice ran past BARGE_SHARD_SOFT_TIME_LIMIT "
            f"({ctx.settings.shard_soft_time_limit:.0f}s); lower BARGE_FINETUNE_SLICE_SECONDS "
            "or use fewer steps per checkpoint so a slice and its checkpoint fit",
        )
        return state.SHARD_FAILED
    except Exception as exc:
        log.exception("fine-tune %s attempt %s failed", work.job_id, work.attempt)
        retry_or_fail(ctx, work, f"{type(exc).__name__}: {exc}")
        return "error"


@dataclass
class Timing:
    """Seconds of this claim: training steps only, checkpoint stalls, evaluation."""

    started: float
    checkpoint_stall_seconds: float = 0.0
    checkpoints: int = 0
    eval_seconds: float = 0.0
    steps: int = 0
    load_seconds: float = 0.0

    def train_seconds(self) -> float:
        loop = time.monotonic() - self.started
        return max(0.0, loop - self.checkpoint_stall_seconds - self.eval_seconds)


def _event(ctx: WorkerContext, work: ShardWork, kind: str, message: str, **data: Any) -> None:
    with ctx.session() as session:
        repo.add_event(session, work.job_id, kind, message, **data)


def _run(ctx: WorkerContext, work: ShardWork, spec: FinetuneSpec) -> str:
    settings = ctx.settings
    out = S3Uri.parse(work.output_uri).as_prefix()
    control = Control(ctx, work, check_seconds=STATUS_CHECK_SECONDS)
    loading = time.monotonic()
    train = load_dataset(ctx.store, spec, "train")
    validation = load_dataset(ctx.store, spec, "validation") if spec.validation else None
    check_datasets(spec, train, validation)
    model_dir, _ = fetch_model(settings, ctx.store, work.model_ref)
    labels = train.labels() if spec.task == "classify" else []
    trainer = Trainer(spec, model_dir, pick_device(settings), train.examples, labels)
    tmp_root = settings.resolved_cache_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        checkpoints = Checkpoints(ctx, work, out, spec.keep_checkpoints, Path(tmp))
        try:
            resumed = checkpoints.restore(trainer)
            history: list[dict[str, Any]] = list(resumed.get("history", [])) if resumed else []
            timing = Timing(started=time.monotonic(), load_seconds=time.monotonic() - loading)
            if resumed:
                _event(
                    ctx,
                    work,
                    "resumed",
                    f"resumed from the checkpoint at step {trainer.step} of "
                    f"{trainer.total_steps} (attempt {work.attempt})",
                    step=trainer.step,
                    attempt=work.attempt,
                    checkpoint=resumed["uri"],
                )
            else:
                _event(
                    ctx,
                    work,
                    "training_started",
                    f"training {trainer.total_steps} steps on {trainer.device.type} "
                    f"(attempt {work.attempt})",
                    steps=trainer.total_steps,
                    device=trainer.device.type,
                    attempt=work.attempt,
                )
            control.steps_done = trainer.step
            control.beat()
            ended = _loop(
                ctx, work, spec, trainer, checkpoints, control, history, timing, validation
            )
            if ended != "done":
                return ended
            checkpoints.wait()
            return _finish(
                ctx, work, spec, trainer, train, control, history, timing, out, Path(tmp)
            )
        finally:
            checkpoints.close()


def _loop(
    ctx: WorkerContext,
    work: ShardWork,
    spec: FinetuneSpec,
    trainer: Trainer,
    checkpoints: Checkpoints,
    control: Control,
    history: list[dict[str, Any]],
    timing: Timing,
    validation: Any,
) -> str:
    """Train until the last step ("done"), a cancel ("cancelled") or the slice's end."""
    slice_started = time.monotonic()
    last_checkpoint = (trainer.step, time.monotonic())
    window: Any = None
    window_steps = 0
    window_started = time.monotonic()
    epoch_loss: Any = None
    epoch_steps = 0
    every_steps, every_seconds = spec.checkpoint_every_steps, spec.checkpoint_seconds
    examples_per_step = (
        spec.hyperparameters.batch_size * spec.hyperparameters.gradient_accumulation_steps
    )
    try:
        while not trainer.done:
            control.between_batches()
            loss = trainer.train_step()
            timing.steps += 1
            window = loss if window is None else window + loss
            epoch_loss = loss if epoch_loss is None else epoch_loss + loss
            window_steps += 1
            epoch_steps += 1
            control.steps_done = trainer.step
            if trainer.step % spec.log_every_steps == 0 or trainer.done:
                now = time.monotonic()
                mean = float(window) / window_steps
                _event(
                    ctx,
                    work,
                    "train",
                    f"step {trainer.step}/{trainer.total_steps}: loss {mean:.4f}, "
                    f"lr {trainer.learning_rate:.3g}",
                    step=trainer.step,
                    steps_total=trainer.total_steps,
                    epoch=round(trainer.step / trainer.steps_per_epoch, 3),
                    loss=round(mean, 6),
                    learning_rate=trainer.learning_rate,
                    examples_per_second=round(
                        window_steps * examples_per_step / max(1e-9, now - window_started), 2
                    ),
                )
                window, window_steps, window_started = None, 0, now
            if trainer.epoch_ends:
                record = {
                    "epoch": trainer.step // trainer.steps_per_epoch,
                    "step": trainer.step,
                    "train_loss": round(float(epoch_loss) / max(1, epoch_steps), 6),
                }
                epoch_loss, epoch_steps = None, 0
                if validation is not None:
                    started = time.monotonic()
                    record.update(trainer.evaluate(validation.examples))
                    timing.eval_seconds += time.monotonic() - started
                history.append(record)
                shown = ", ".join(
                    f"{k} {v}" for k, v in record.items() if k not in ("epoch", "step")
                )
                _event(ctx, work, "eval", f"epoch {record['epoch']}: {shown}", **record)
            if trainer.done:
                break
            now = time.monotonic()
            slice_over = now - slice_started >= ctx.settings.slice_seconds
            due = (
                every_steps is not None and trainer.step - last_checkpoint[0] >= every_steps
            ) or (every_seconds is not None and now - last_checkpoint[1] >= every_seconds)
            if due or slice_over:
                timing.checkpoint_stall_seconds += checkpoints.save(trainer, control, history)
                timing.checkpoints += 1
                last_checkpoint = (trainer.step, time.monotonic())
            if slice_over:
                checkpoints.wait()
                return _hand_off(ctx, work, trainer)
    except Stop as stop:
        checkpoints.wait()  # an upload already under way completes; nothing new is written
        with ctx.session() as session:
            done = repo.finish_shard(
                session,
                work.shard_id,
                work.attempt,
                state.SHARD_CANCELLED,
                succeeded=0,
                failed=0,
                output_key=None,
                errors_key=None,
                error=f"stopped at step {trainer.step}: job is {stop.job_status}",
                steps_done=trainer.step,
            )
        if done:
            finalize_if_last(ctx, work.job_id)
        return state.SHARD_CANCELLED if done else "lease_lost"
    return "done"


def _hand_off(ctx: WorkerContext, work: ShardWork, trainer: Trainer) -> str:
    with ctx.session() as session:
        handed = repo.hand_off_shard(session, work.shard_id, work.attempt, trainer.step)
        if handed:
            repo.add_event(
                session,
                work.job_id,
                "handoff",
                f"slice ended at step {trainer.step}; continuing from its checkpoint",
                step=trainer.step,
                attempt=work.attempt,
            )
    if not handed:
        raise LeaseLost()
    ctx.send(RUN_SHARD, str(work.shard_id), str(work.job_id), work.index)
    return "handed_off"


def _finish(
    ctx: WorkerContext,
    work: ShardWork,
    spec: FinetuneSpec,
    trainer: Trainer,
    train: Any,
    control: Control,
    history: list[dict[str, Any]],
    timing: Timing,
    out: S3Uri,
    tmp: Path,
) -> str:
    """Write the model directory, then mark done and register it in one transaction."""
    model_uri = out.join(MODEL_PREFIX)
    metrics: dict[str, Any] = {"steps": trainer.step, "epochs": spec.hyperparameters.epochs}
    if history:
        metrics.update({k: v for k, v in history[-1].items() if k not in ("epoch", "step")})
    files = trainer.save_model(tmp / "model")
    summary = {
        "job_id": str(work.job_id),
        "task": spec.task,
        "base_model": spec.base_model,
        "base_model_uri": work.model_ref,
        "train": spec.train,
        "validation": spec.validation,
        "hyperparameters": spec.hyperparameters.model_dump(),
        "train_examples": len(train.examples),
        "skipped_records": len(train.errors),
        "labels": trainer.labels or None,
        "metrics": metrics,
        "history": history,
        "timing": {**asdict(timing), "train_seconds": round(timing.train_seconds(), 3)},
        "device": trainer.device.type,
    }
    summary["timing"].pop("started")
    (tmp / "model" / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    for path in [*files, tmp / "model" / SUMMARY_FILE]:
        ctx.store.put_file(model_uri.join(path.relative_to(tmp / "model").as_posix()), path)
    control.beat()  # fencing: still ours right before it counts
    for _ in range(5):  # two fine-tunes registering the same name at once: one retries
        try:
            with ctx.session() as session:
                job = repo.lock_job(session, work.job_id)
                running = job is not None and job.status == state.RUNNING
                done = repo.finish_shard(
                    session,
                    work.shard_id,
                    work.attempt,
                    state.SHARD_SUCCEEDED if running else state.SHARD_CANCELLED,
                    succeeded=len(train.examples),
                    failed=len(train.errors),
                    output_key=model_uri.key,
                    errors_key=out.join("errors/train.jsonl").key if train.errors else None,
                    steps_done=trainer.step,
                )
                if done and running:
                    assert job is not None
                    model = repo.register_model(
                        session,
                        job.tenant_id,
                        spec.model_name,
                        str(model_uri),
                        spec.task,
                        base_model=spec.base_model,
                        metrics=metrics,
                        job_id=job.id,
                    )
                    repo.add_event(
                        session,
                        job.id,
                        "registered",
                        f"registered {model.name} version {model.version} ({model_uri})",
                        name=model.name,
                        version=model.version,
                        uri=str(model_uri),
                        metrics=metrics,
                    )
            break
        except IntegrityError:
            continue
    else:
        raise RuntimeError(f"could not register a new version of {spec.model_name!r}")
    if not done:
        return "lease_lost"
    finalize_if_last(ctx, work.job_id)
    return state.SHARD_SUCCEEDED if running else state.SHARD_CANCELLED


class Checkpoints:
    """Checkpoints of one fine-tune under ``<prefix>checkpoints/``: serialized in the training
    thread (the stall), uploaded in the background; ``latest.json`` moves only once every file
    of the step is written and the lease is still held."""

    def __init__(
        self, ctx: WorkerContext, work: ShardWork, out: S3Uri, keep: int, tmp: Path
    ) -> None:
        self.ctx = ctx
        self.work = work
        self.store: ObjectStore = ctx.store
        self.out = out
        self.keep = keep
        self.tmp = tmp
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="barge-checkpoint")
        self._pending: Future[None] | None = None

    def step_prefix(self, step: int) -> S3Uri:
        return self.out.join(f"{CHECKPOINTS}step-{step:08d}/")

    def latest(self, total_steps: int) -> tuple[int, S3Uri] | None:
        """The step and prefix of the newest complete checkpoint, if this job wrote one.

        A pointer is trusted only when it names this job, a step of it, the checkpoint folder
        that step has under this job's own prefix and exactly the fixed checkpoint files: a
        pointer planted in the prefix can neither read elsewhere nor write files of its
        choosing."""
        uri = self.out.join(LATEST)
        if self.store.head(uri) is None:
            return None
        try:
            pointer = json.loads(self.store.get_bytes(uri))
            step = pointer["step"]
            ours = (
                pointer["job_id"] == str(self.work.job_id)
                and isinstance(step, int)
                and 0 < step <= total_steps
                and pointer["uri"] == str(self.step_prefix(step))
                and sorted(pointer["files"]) == sorted(CHECKPOINT_FILES)
            )
        except (ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise PermanentJobError(
                f"{uri} was not written by this job; Barge resumes a fine-tune only from "
                "checkpoints it wrote itself (remove the object or use a new output prefix)"
            )
        return step, self.step_prefix(step)

    def restore(self, trainer: Trainer) -> dict[str, Any] | None:
        """Load the newest complete checkpoint into ``trainer``; its state, or None."""
        found = self.latest(trainer.total_steps)
        if found is None:
            return None
        _, prefix = found
        local = self.tmp / "restore"
        local.mkdir(parents=True, exist_ok=True)
        for name in CHECKPOINT_FILES:
            dest = local_path(local, name)
            with self.store.open(prefix.join(name)) as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        state_ = trainer.load_checkpoint(local)
        shutil.rmtree(local, ignore_errors=True)
        return {**state_, "uri": str(prefix)}

    def save(self, trainer: Trainer, control: Control, history: list[dict[str, Any]]) -> float:
        """Serialize now, upload in the background; returns the seconds training stood still."""
        started = time.monotonic()
        self.wait()
        step = trainer.step
        directory = self.tmp / f"step-{step:08d}"
        files = trainer.save_checkpoint(directory, {"history": list(history)})
        stall = time.monotonic() - started
        self._pending = self._executor.submit(self._upload, step, directory, files, control, stall)
        return stall

    def _upload(
        self, step: int, directory: Path, files: list[Path], control: Control, stall: float
    ) -> None:
        started = time.monotonic()
        prefix = self.step_prefix(step)
        for path in files:
            self.store.put_file(prefix.join(path.name), path)
        control.beat()  # fencing: a stale attempt never moves the pointer
        pointer = {
            "job_id": str(self.work.job_id),
            "step": step,
            "uri": str(prefix),
            "files": [p.name for p in files],
        }
        self.store.put_bytes(self.out.join(LATEST), json.dumps(pointer).encode())
        shutil.rmtree(directory, ignore_errors=True)
        self._prune(step)
        _event(
            self.ctx,
            self.work,
            "checkpoint",
            f"checkpoint at step {step} written to {prefix}",
            step=step,
            uri=str(prefix),
            stall_seconds=round(stall, 3),
            upload_seconds=round(time.monotonic() - started, 3),
        )

    def _prune(self, newest: int) -> None:
        """Delete all but the ``keep`` newest checkpoints (never the one latest.json names)."""
        by_step: dict[int, list[S3Uri]] = {}
        for info in self.store.list(self.out.join(CHECKPOINTS)):
            name = info.uri.key[len(self.out.join(CHECKPOINTS).key) :]
            folder, _, _ = name.partition("/")
            if folder.startswith("step-") and folder[5:].isdigit():
                by_step.setdefault(int(folder[5:]), []).append(info.uri)
        for step in sorted(by_step, reverse=True)[self.keep :]:
            if step != newest:
                for uri in by_step[step]:
                    self.store.delete(uri)

    def wait(self) -> None:
        """Block until the upload under way (if any) is done; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Every path that returns waits first; here an upload is only left after an error,
        which is the one reported."""
        try:
            self.wait()
        except Exception:
            log.warning("checkpoint upload failed after an earlier error", exc_info=True)
        finally:
            self._executor.shutdown(wait=True)
