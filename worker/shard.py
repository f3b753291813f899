"""What the inference shard runners (text ``worker.runners.records``, images
``worker.runners.images``, ONNX columns ``worker.runners.onnx``, OpenAI batches
``worker.runners.openai_batch``) share: the spooled part and errors files (in ``ctx.scratch()``), the walk over the shard's work that stops at a ``Stop`` and closes both files
however it ends, and the fenced upload. Each runner keeps its own window loop.

Imports: ``barge``, ``worker.context``, ``worker.lease``, ``worker.lifecycle``,
``worker.outputs``; never ``api`` or ``cli``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

from barge.errors import NotFound, PermanentJobError
from barge.specs import InferenceSpec
from worker.context import WorkerContext
from worker.lease import Lease, ShardWork, Stop
from worker.lifecycle import Result, part_result
from worker.outputs import JsonlPart, ParquetPart, make_part

M = TypeVar("M")  # the loaded model: a LoadedModel, or a VisionModel for image tasks
T = TypeVar("T")


class ShardRun(Generic[M]):
    """One inference shard's run: its job's spec and parameters, its model, its lease (which
    carries the progress the heartbeat records) and its part and errors files in ``tmp``
    (``part``: a writer of the runner's own, else one of the job's output format)."""

    def __init__(
        self,
        ctx: WorkerContext,
        work: ShardWork,
        lease: Lease,
        loaded: M,
        tmp: Path,
        part: JsonlPart | ParquetPart | None = None,
    ):
        spec = work.spec
        assert isinstance(spec, InferenceSpec)
        self.ctx = ctx
        self.work = work
        self.spec = spec
        self.params = spec.task_params()
        self.lease = lease
        self.loaded = loaded
        self.part = part if part is not None else make_part(spec.output_format, tmp / "part")
        self.errors = JsonlPart(tmp / "errors")
        self.batches = 0  # batches started

    def next_batch(self) -> None:
        """Before each batch: the lease's checks (job status, time limit, heartbeat), except
        before the first, where the claim's check, moments old, stands (a small shard of one
        batch reads the job's status once, at its claim)."""
        if self.batches:
            self.lease.between_batches()
        self.batches += 1

    def walk(self, steps: Iterable[T], step: Callable[[T], None]) -> Stop | None:
        """``step`` over ``steps``; the ``Stop`` that cut the shard short, if any. The input
        object vanishing midway fails the job (no retry can read it); both files are closed
        however the walk ends."""
        try:
            for item in steps:
                step(item)
        except Stop as exc:
            return exc
        except NotFound:
            raise PermanentJobError(f"input object {self.work.source} disappeared") from None
        finally:
            self.part.close()
            self.errors.close()
        return None

    def upload(self, stopped: Stop | None, usage: dict[str, int] | None = None) -> Result:
        """Check this attempt still holds the shard (fencing), then PUT the part and the
        errors file (``worker.lifecycle.part_result``)."""
        self.lease.fence()
        return part_result(
            self.ctx,
            self.work,
            self.spec.output,
            self.part,
            self.errors,
            stopped is not None,
            usage=usage,
        )
