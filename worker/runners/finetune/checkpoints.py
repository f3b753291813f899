"""A fine-tune's checkpoints under its output prefix: serialized in the training thread (the
stall), uploaded in the background, pruned to the newest few, and restored only from files this
job wrote itself.

Layout under the job's prefix::

    checkpoints/step-00000120/{model.safetensors, optimizer.safetensors, trainer_state.json}
                              (+ best.safetensors with select best, once an epoch was best)
    checkpoints/latest.json    # moved only after the step's files are all written

Imports: ``barge``, ``worker.lease``, ``worker.runners.finetune.training``; never ``api`` or
``cli``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from barge.errors import PermanentJobError
from barge.paths import local_path
from barge.storage import ObjectStore, S3Uri
from worker.context import WorkerContext
from worker.lease import Lease, ShardWork, job_event
from worker.runners.finetune.training import BEST_FILE, CHECKPOINT_FILES, Trainer

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints/"
LATEST = "checkpoints/latest.json"
# The only file sets a checkpoint pointer may name.
TRUSTED_FILE_SETS = [sorted(CHECKPOINT_FILES), sorted((*CHECKPOINT_FILES, BEST_FILE))]


class Checkpoints:
    """Checkpoints of one fine-tune under ``<prefix>checkpoints/``: serialized in the training
    thread (the stall), uploaded in the background; ``latest.json`` moves only once every file
    of the step is written and the lease is still held."""

    def __init__(
        self, ctx: WorkerContext, work: ShardWork, lease: Lease, keep: int, tmp: Path
    ) -> None:
        self.ctx = ctx
        self.work = work
        self.lease = lease
        self.store: ObjectStore = ctx.store
        self.out = S3Uri.parse(work.output_uri).as_prefix()
        self.keep = keep
        self.tmp = tmp
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="barge-checkpoint")
        self._pending: Future[None] | None = None

    def step_prefix(self, step: int) -> S3Uri:
        return self.out.join(f"{CHECKPOINTS}step-{step:08d}/")

    def latest(self, total_steps: int) -> tuple[int, S3Uri, list[str]] | None:
        """The step, prefix and files of the newest complete checkpoint, if this job wrote one.

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
                and sorted(pointer["files"]) in TRUSTED_FILE_SETS
            )
        except (ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise PermanentJobError(
                f"{uri} was not written by this job; Barge resumes a fine-tune only from "
                "checkpoints it wrote itself (remove the object or use a new output prefix)"
            )
        return step, self.step_prefix(step), list(pointer["files"])

    def restore(self, trainer: Trainer) -> dict[str, Any] | None:
        """Load the newest complete checkpoint into ``trainer``; its state, or None."""
        found = self.latest(trainer.total_steps)
        if found is None:
            return None
        _, prefix, files = found
        local = self.tmp / "restore"
        local.mkdir(parents=True, exist_ok=True)
        for name in files:
            dest = local_path(local, name)
            with self.store.open(prefix.join(name)) as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        state_ = trainer.load_checkpoint(local)
        shutil.rmtree(local, ignore_errors=True)
        return {**state_, "uri": str(prefix)}

    def save(self, trainer: Trainer, history: list[dict[str, Any]]) -> float:
        """Serialize now, upload in the background; returns the seconds training stood still."""
        started = time.monotonic()
        self.wait()
        step = trainer.step
        directory = self.tmp / f"step-{step:08d}"
        files = trainer.save_checkpoint(directory, {"history": list(history)})
        stall = time.monotonic() - started
        self._pending = self._executor.submit(self._upload, step, directory, files, stall)
        return stall

    def _upload(self, step: int, directory: Path, files: list[Path], stall: float) -> None:
        started = time.monotonic()
        prefix = self.step_prefix(step)
        for path in files:
            self.store.put_file(prefix.join(path.name), path)
        self.lease.fence()  # fencing: a stale attempt never moves the pointer
        pointer = {
            "job_id": str(self.work.job_id),
            "step": step,
            "uri": str(prefix),
            "files": [p.name for p in files],
        }
        self.store.put_bytes(self.out.join(LATEST), json.dumps(pointer).encode())
        shutil.rmtree(directory, ignore_errors=True)
        self._prune(step)
        job_event(
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
