"""One claim of a fine-tune (the whole job is one unit of work under a lease).

A claim loads and checks the data and the base model, resumes from the newest complete
checkpoint (or starts at step 0), then trains in a slice of at most
``BARGE_FINETUNE_SLICE_SECONDS``: it checks the job's status between steps, records loss and
eval events, and checkpoints on the spec's schedule. At the slice's end it checkpoints and hands
the unit back (the lifecycle re-queues it); on the last step it writes the model directory and
returns a result whose ``publish`` registers the model in the same transaction that marks the
unit done (fencing: once, by the holder). A cancel raises ``Stop`` once a checkpoint upload
under way has finished; the lifecycle records it. A pause checkpoints and hands the unit off
as a slice's end does; the lifecycle sends it again once the job is resumed.

With ``select: best`` the epoch with the best validation metric is kept (its weights travel in
the checkpoints) and registered; ``early_stopping_epochs`` ends training after that many epochs
without a better one. A LoRA fine-tune registers its adapter over the base it trained on (the
registry records the base's location), or with ``merge`` the merged model.

Imports: ``barge``, ``db``, ``services``, ``worker.kinds.finetune_data``, ``worker.lease``,
``worker.models``, ``worker.runners.finetune``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from barge.records.images import read_image
from barge.specs import IMAGE_TASKS, SELECT_METRICS, FinetuneSpec
from barge.storage import S3Uri
from db import repositories as repo
from db.models import Job
from services import registry
from services.context import ServiceContext
from worker.context import WorkerContext
from worker.kinds.finetune_data import check_datasets, load_dataset
from worker.lease import Lease, Outcome, Result, ShardWork, Stop, job_event
from worker.models import hf
from worker.models.cache import fetch_model
from worker.models.loaded import pick_device
from worker.runners.finetune import lora
from worker.runners.finetune.checkpoints import Checkpoints
from worker.runners.finetune.epochs import EpochModel, EpochModels, checkpoint_name
from worker.runners.finetune.training import Trainer

MODEL_PREFIX = "model/"
SUMMARY_FILE = "training_summary.json"


def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """Train a claimed fine-tune until done, cancelled or its slice ends."""
    with ctx.scratch() as tmp:
        claimed = FinetuneRun(ctx, work, lease, tmp)
        try:
            return claimed.run()
        finally:
            claimed.checkpoints.close()
            claimed.epoch_models.close()


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


@dataclass
class _Losses:
    """Summed step losses (tensors: summing needs no device sync) since the last ``train``
    event and over the current epoch."""

    window: Any = None
    window_steps: int = 0
    window_started: float = field(default_factory=time.monotonic)
    epoch: Any = None
    epoch_steps: int = 0

    def add(self, loss: Any) -> None:
        self.window = loss if self.window is None else self.window + loss
        self.epoch = loss if self.epoch is None else self.epoch + loss
        self.window_steps += 1
        self.epoch_steps += 1


class FinetuneRun:
    """The state of one claim: spec, data, trainer, checkpoints, lease, history and timing."""

    def __init__(self, ctx: WorkerContext, work: ShardWork, lease: Lease, tmp: Path):
        spec = work.spec
        assert isinstance(spec, FinetuneSpec)
        self.ctx = ctx
        self.work = work
        self.spec = spec
        self.lease = lease
        self.tmp = tmp
        self.out = S3Uri.parse(work.output_uri).as_prefix()
        self.loading_started = time.monotonic()
        may_read = work.scopes.may_read if work.scopes is not None else None
        self.train = load_dataset(ctx.store, spec, "train", may_read=may_read, keep_images=True)
        self.validation = (
            load_dataset(ctx.store, spec, "validation", may_read=may_read, keep_images=True)
            if spec.validation
            else None
        )
        check_datasets(spec, self.train, self.validation)
        self.model_dir, _ = fetch_model(ctx.settings, ctx.store, work.model_ref)
        labels = self.train.labels() if spec.task in ("classify", "image_classify") else []
        device = pick_device(ctx.settings)
        self.trainer = Trainer(spec, self.model_dir, device, self.train.examples, labels)
        self.stopped_early = False
        if spec.task in IMAGE_TASKS:  # every image prepared once, before the first step
            examples = self.train.examples + (self.validation.examples if self.validation else [])
            decoded = {**self.train.decoded, **(self.validation.decoded if self.validation else {})}

            def read(value: str, mode: str) -> Any:
                image = decoded.pop(value, None)
                if image is not None:
                    return image.convert(mode)
                return read_image(
                    ctx.store,
                    value,
                    "image",
                    may_read=may_read,
                    max_bytes=ctx.settings.max_image_bytes,
                    max_pixels=ctx.settings.max_image_pixels,
                    mode=mode,
                )

            self.trainer.load_images(
                [image for image, _ in examples], read, ctx.settings.image_decode_threads
            )
            self.train.decoded.clear()
            if self.validation:
                self.validation.decoded.clear()
        self.history: list[dict[str, Any]] = []
        self.timing = Timing(started=time.monotonic())
        self.last_checkpoint = (0, time.monotonic())  # (step, when)
        self.checkpoints = Checkpoints(ctx, work, lease, spec.keep_checkpoints, tmp)
        self.epoch_models = EpochModels(ctx, work, lease, tmp)

    def run(self) -> Result:
        trainer = self.trainer
        resumed = self.checkpoints.restore(trainer)
        self.history = list(resumed.get("history", [])) if resumed else []
        self.timing = Timing(
            started=time.monotonic(), load_seconds=time.monotonic() - self.loading_started
        )
        self._announce(resumed)
        self.lease.steps_done = trainer.step
        self.lease.beat()
        try:
            handed_off = self._train()
        except Stop:
            self.checkpoints.wait()  # an upload already under way completes; nothing new is written
            raise
        if handed_off is not None:
            return handed_off
        self.checkpoints.wait()
        return self._finish()

    def _announce(self, resumed: dict[str, Any] | None) -> None:
        trainer, attempt = self.trainer, self.work.attempt
        if resumed:
            job_event(
                self.ctx,
                self.work,
                "resumed",
                f"resumed from the checkpoint at step {trainer.step} of "
                f"{trainer.total_steps} (attempt {attempt})",
                step=trainer.step,
                attempt=attempt,
                checkpoint=resumed["uri"],
            )
        else:
            trainable, total = lora.parameter_counts(trainer.model)
            job_event(
                self.ctx,
                self.work,
                "training_started",
                f"training {trainer.total_steps} steps on {trainer.device.type} "
                f"({self.spec.method.type}: {trainable:,} of {total:,} parameters train; "
                f"attempt {attempt})",
                steps=trainer.total_steps,
                device=trainer.device.type,
                attempt=attempt,
                method=self.spec.method.type,
                trainable_parameters=trainable,
                parameters=total,
            )

    # --- the slice ----------------------------------------------------------------------------

    def _train(self) -> Result | None:
        """Train until the last step (None) or the slice's end (a hand-off at a checkpoint);
        a cancel raises ``Stop`` from the lease."""
        trainer = self.trainer
        slice_started = time.monotonic()
        self.last_checkpoint = (trainer.step, time.monotonic())
        losses = _Losses()
        while not trainer.done:
            self.lease.between_batches()
            if self.lease.pause_requested:  # paused: a checkpoint, and the worker is free
                return self._pause()
            losses.add(trainer.train_step())
            self.timing.steps += 1
            self.lease.steps_done = trainer.step
            if trainer.step % self.spec.log_every_steps == 0 or trainer.done:
                self._log_steps(losses)
            if trainer.epoch_ends:
                self._end_epoch(losses)
            if trainer.done or self.stopped_early:
                break
            now = time.monotonic()
            slice_over = now - slice_started >= self.ctx.settings.slice_seconds
            if slice_over or self._checkpoint_due(now):
                self._checkpoint()
            if slice_over:
                self.checkpoints.wait()
                return Result(Outcome.HANDED_OFF, steps_done=trainer.step)
        return None

    def _pause(self) -> Result:
        """Checkpoint where training stands (unless the newest checkpoint is there) and hand
        the unit off; the lifecycle sends it again only once the job is resumed. At step 0
        there is nothing to keep: a resume starts afresh, as this claim did."""
        if 0 < self.trainer.step != self.last_checkpoint[0]:
            self._checkpoint()
        self.checkpoints.wait()
        return Result(Outcome.HANDED_OFF, steps_done=self.trainer.step)

    def _checkpoint_due(self, now: float) -> bool:
        every_steps, every_seconds = self.spec.checkpoint_every_steps, self.spec.checkpoint_seconds
        step, when = self.last_checkpoint
        return (every_steps is not None and self.trainer.step - step >= every_steps) or (
            every_seconds is not None and now - when >= every_seconds
        )

    def _checkpoint(self) -> None:
        # An epoch model is complete before a checkpoint past its epoch can be resumed from (a
        # failed upload fails the attempt, which resumes before that epoch and saves it again).
        self.epoch_models.wait()
        self.timing.checkpoint_stall_seconds += self.checkpoints.save(self.trainer, self.history)
        self.timing.checkpoints += 1
        self.last_checkpoint = (self.trainer.step, time.monotonic())

    def _log_steps(self, losses: _Losses) -> None:
        """A ``train`` event: the mean loss and throughput since the last one."""
        trainer, hp = self.trainer, self.spec.hyperparameters
        now = time.monotonic()
        mean = float(losses.window) / losses.window_steps
        examples = losses.window_steps * hp.batch_size * hp.gradient_accumulation_steps
        job_event(
            self.ctx,
            self.work,
            "train",
            f"step {trainer.step}/{trainer.total_steps}: loss {mean:.4f}, "
            f"lr {trainer.learning_rate:.3g}",
            step=trainer.step,
            steps_total=trainer.total_steps,
            epoch=round(trainer.step / trainer.steps_per_epoch, 3),
            loss=round(mean, 6),
            learning_rate=trainer.learning_rate,
            examples_per_second=round(examples / max(1e-9, now - losses.window_started), 2),
        )
        losses.window, losses.window_steps, losses.window_started = None, 0, now

    def _end_epoch(self, losses: _Losses) -> None:
        """The epoch's train loss and (with validation data) eval metrics: history and event."""
        trainer = self.trainer
        record: dict[str, Any] = {
            "epoch": trainer.step // trainer.steps_per_epoch,
            "step": trainer.step,
            "train_loss": round(float(losses.epoch) / max(1, losses.epoch_steps), 6),
        }
        losses.epoch, losses.epoch_steps = None, 0
        if self.validation is not None:
            started = time.monotonic()
            record.update(trainer.evaluate(self.validation.examples))
            self.timing.eval_seconds += time.monotonic() - started
        self.history.append(record)
        self._select(record)
        shown = ", ".join(
            f"{k} {v}" for k, v in record.items() if isinstance(v, int | float) and k != "step"
        )
        job_event(self.ctx, self.work, "eval", f"epoch {record['epoch']}: {shown}", **record)
        if self.epoch_models.due(record["epoch"], trainer.done or self.stopped_early):
            self.epoch_models.save(trainer, record)
        if self.stopped_early:
            job_event(
                self.ctx,
                self.work,
                "early_stopped",
                f"stopped after epoch {record['epoch']}: {self.spec.metric} has not improved "
                f"for {self.spec.early_stopping_epochs} epochs (best: epoch {record['best_epoch']})",
                epoch=record["epoch"],
                step=record["step"],
                best_epoch=record["best_epoch"],
                metric=self.spec.metric,
            )

    def _select(self, record: dict[str, Any]) -> None:
        """With select best or early stopping: mark the epoch's record with the best epoch so
        far, keep the best weights, and decide whether to stop."""
        spec = self.spec
        if spec.select != "best" and spec.early_stopping_epochs is None:
            return
        metric, higher = spec.metric, SELECT_METRICS[spec.metric]
        best = best_epoch(self.history, metric, higher)
        record["best_epoch"] = best
        if best == record["epoch"] and spec.select == "best":
            self.trainer.keep_best(best)
        patience = spec.early_stopping_epochs
        if patience is not None and record["epoch"] - best >= patience and not self.trainer.done:
            self.stopped_early = True

    # --- the end ------------------------------------------------------------------------------

    def _finish(self) -> Result:
        """Write the model directory; the result registers it as the unit is marked done."""
        model_uri = self.out.join(MODEL_PREFIX)
        metrics: dict[str, Any] = {
            "steps": self.trainer.step,
            "epochs": self.spec.hyperparameters.epochs,
        }
        chosen = self.history[-1] if self.history else None
        if self.spec.select == "best":
            selected = self.trainer.restore_best()
            chosen = next((h for h in self.history if h["epoch"] == selected), chosen)
            metrics["selected_epoch"] = selected
        if self.stopped_early:
            metrics["stopped_early_at_epoch"] = self.history[-1]["epoch"]
        if self.trainer.tokens is not None:
            metrics["trained_tokens"] = self.trainer.tokens
        if chosen:
            metrics.update({k: v for k, v in chosen.items() if k not in ("epoch", "step")})
        local = self.tmp / "model"
        files = self.trainer.save_model(local)
        if self.spec.lora is not None:
            metrics.update(self._sizes(local))
        (local / SUMMARY_FILE).write_text(json.dumps(self._summary(metrics), indent=2) + "\n")
        for path in [*files, local / SUMMARY_FILE]:
            self.ctx.store.put_file(model_uri.join(path.relative_to(local).as_posix()), path)
        registered_epoch = chosen["epoch"] if chosen else None
        epoch_models = self.epoch_models.kept(registered_epoch)
        self.lease.fence()  # fencing: still ours right before it counts
        train = self.train
        return Result(
            Outcome.SUCCEEDED,
            succeeded=len(train.examples),
            failed=len(train.errors),
            output_key=model_uri.key,
            errors_key=self.out.join("errors/train.jsonl").key if train.errors else None,
            steps_done=self.trainer.step,
            publish=self._registration(model_uri, metrics, epoch_models),
        )

    def _summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``training_summary.json`` of the model directory."""
        spec, work, timing = self.spec, self.work, self.timing
        timings = {**asdict(timing), "train_seconds": round(timing.train_seconds(), 3)}
        timings.pop("started")
        return {
            "job_id": str(work.job_id),
            "task": spec.task,
            "base_model": spec.base_model,
            "base_model_uri": work.model_ref,
            "train": spec.train,
            "validation": spec.validation,
            "hyperparameters": spec.hyperparameters.model_dump(),
            "train_examples": len(self.train.examples),
            "skipped_records": len(self.train.errors),
            "labels": self.trainer.labels or None,
            "metrics": metrics,
            "history": self.history,
            "timing": timings,
            "device": self.trainer.device.type,
            "method": self.spec.method.model_dump(),
            "select": self.spec.select,
            "select_metric": self.spec.metric if self.spec.select == "best" else None,
        }

    def _sizes(self, local: Path) -> dict[str, Any]:
        """What a LoRA fine-tune saved against its base: bytes and parameters."""
        trainable, total = lora.parameter_counts(self.trainer.model)
        saved = sum(p.stat().st_size for p in local.glob("*.safetensors"))
        base = hf.weight_bytes(self.model_dir)
        return {
            "trainable_parameters": trainable,
            "parameters": total,
            "adapter_bytes" if self.registers_adapter else "model_bytes": saved,
            "base_bytes": base,
        }

    @property
    def registers_adapter(self) -> bool:
        """Whether the registered version is an adapter over the base (LoRA, not merged)."""
        return self.spec.lora is not None and not self.spec.lora.merge

    def _registration(
        self, model_uri: S3Uri, metrics: dict[str, Any], epoch_models: list[EpochModel]
    ) -> Callable[[Session, Job], None]:
        """Register the model as the next version of ``model_name`` (and say so in an event),
        and the kept epoch models each under its own name, in the transaction that marks the
        unit done."""
        spec, ctx = self.spec, self.ctx
        adapter_base = self.work.model_ref if self.registers_adapter else None

        def add(session: Session, job: Job, name: str, uri: S3Uri, values: dict[str, Any]) -> None:
            model = registry.register_version(
                ServiceContext.for_worker(session, ctx.settings, ctx.store, job.tenant_id),
                registry.RegisterVersion(
                    name,
                    str(uri),
                    spec.task,
                    base_model=spec.base_model,
                    metrics=values,
                    job_id=job.id,
                    adapter_base_uri=adapter_base,
                ),
            )
            repo.add_event(
                session,
                job.id,
                "registered",
                f"registered {model.name} version {model.version} ({uri})",
                name=model.name,
                version=model.version,
                uri=str(uri),
                metrics=values,
            )

        def register(session: Session, job: Job) -> None:
            for kept in reversed(epoch_models):  # oldest first
                values = {**kept.record, repo.CHECKPOINT_OF: spec.model_name}
                add(session, job, checkpoint_name(spec.model_name, kept.step), kept.uri, values)
            add(session, job, spec.model_name, model_uri, metrics)

        return register


def best_epoch(history: list[dict[str, Any]], metric: str, higher: bool) -> int:
    """The epoch of ``history`` with the best ``metric`` (the earliest of equal ones)."""
    scored = [(h[metric], h["epoch"]) for h in history if metric in h]
    if higher:
        return min(scored, key=lambda se: (-se[0], se[1]))[1]
    return min(scored)[1]
