"""Job kinds: what each kind of job does, registered in one place (``KINDS``). A kind is one
``JobKind``: which specs it takes (``matches``), how its job is planned into units (``plan``),
how a unit runs (``run``, and the error its time limit ends it with), and how its job is
finalized (``verdict``, ``finalize``: the manifest and the kind's own files). The planner, the
shard task and finalize ask ``kind_for(spec)``; none of them branches on a spec's type or task.

- ``TEXT``: ``embed``, ``classify``, ``generate``; run by ``worker.runners.text``;
- ``TEXT2TEXT``: ``text2text`` (seq2seq); run by ``worker.runners.text2text``;
- ``ONNX``: ``regress``; run by ``worker.runners.onnx``;
- ``IMAGES``: ``image_classify``, ``image_embed``, ``detect``; planned by ``images`` (image
  objects as a listing), run by ``worker.runners.images``;
- ``OPENAI_BATCH``: any task with ``openai_endpoint``; run by ``worker.runners.openai_batch``,
  finalized by ``openai_batch`` (the batch's files);
- ``FINETUNE``: a ``FinetuneSpec``; planned and finalized by ``finetune`` (datasets; its
  manifest), run by ``worker.runners.finetune.run``.

The others are planned and finalized by ``records`` (shards of the input objects; the records
manifest).

An ONNX model may also serve ``embed`` and ``classify``: which family a model is can only be told
from its directory, which the run step is the first to fetch; the text kind's run step hands
such a shard to the ONNX kind's (its plan and manifest are the records' either way).

The two halves of a kind live in two rooms: its plan and finalize steps here (no torch, nothing
of the models: the control worker runs them), its run step in ``worker.runners``, named by
module (``Runs``) and imported only when a unit of the kind first runs. An import contract keeps
this package, and the control room, off ``worker.models`` and torch. Adding a kind: its run
step's module in ``worker.runners``, its ``JobKind`` below (and, when it plans or finalizes
differently, its steps' module here).

- ``steps``: what the steps take and give (``Plan``, ``Finalizing``, ``Finished``);
- ``records``: the plan and finalize steps of the kinds over records;
- ``images``: the images kind's plan (the listing of image objects);
- ``openai_batch``: the OpenAI batch kind's finalize (the batch's output and error files);
- ``finetune``: the fine-tune kind's plan and finalize; ``finetune_data``: reading and checking
  its datasets (also read by its run step).

Imports: ``barge``, ``db``, ``services``, ``worker.context``, ``worker.lease``,
``worker.coldstart`` (the first import of a run step is noted as cold start); never
``worker.models``, ``worker.runners`` (named, not imported), ``api`` or ``cli``.
"""

from __future__ import annotations

import importlib
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from barge.specs import IMAGE_TASKS, FinetuneSpec, InferenceSpec, JobSpec
from db.models import Shard
from worker import coldstart
from worker.context import WorkerContext
from worker.kinds import finetune, images, openai_batch, records
from worker.kinds.steps import Finalizing, Finished, Plan
from worker.lease import Lease, Result, ShardWork

RunStep = Callable[[WorkerContext, ShardWork, Lease], Result]
# (context, spec, job id, the job's model as submission resolved it, its output URI)
PlanStep = Callable[[WorkerContext, Any, uuid.UUID, str, str], Plan]
VerdictStep = Callable[[Any, list[Shard]], str | None]
FinalizeStep = Callable[[Finalizing], Finished]

# How often a shard reads its job's status between batches: a cancel stops it within one batch
# or this long, whichever is longer. Reading it before every batch cost a database round trip
# per batch (a quarter of an ONNX shard's time with fast batches).
SHARD_STATUS_CHECK_SECONDS = 0.25
SHARD_TIME_LIMIT_ERROR = (
    "ran longer than the shard time limit ({limit:.0f}s, BARGE_SHARD_SOFT_TIME_LIMIT); "
    "submit the job with a smaller shard_size"
)


@dataclass(frozen=True)
class JobKind:
    """One kind of job. ``run`` works under the lease and returns its ``Result``;
    ``time_limit_error`` is the failure when ``BARGE_SHARD_SOFT_TIME_LIMIT`` hits (formatted
    with ``limit``, in seconds); ``status_check_seconds`` throttles the lease's status check;
    ``verdict`` says why a job whose units all succeeded fails after all (None: it succeeded);
    ``unit_name`` is how messages name a unit that is the whole job (None: a shard, named by its
    index and input)."""

    name: str
    matches: Callable[[JobSpec], bool]
    run: RunStep
    time_limit_error: str = SHARD_TIME_LIMIT_ERROR
    plan: PlanStep = records.plan
    verdict: VerdictStep = records.verdict
    finalize: FinalizeStep = records.finalize
    status_check_seconds: float = SHARD_STATUS_CHECK_SECONDS
    unit_name: str | None = None


@dataclass(frozen=True)
class Runs:
    """A kind's run step: ``run`` of ``module`` (in ``worker.runners``), imported when a unit
    first runs. The control worker, which plans and finalizes through this registry, never
    imports a runner, the models or torch."""

    module: str

    def __call__(self, ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
        fresh = self.module not in sys.modules
        started = time.monotonic()
        step: RunStep = importlib.import_module(self.module).run
        if fresh:  # the process's first unit of the kind: its imports are its cold start
            coldstart.note(time.monotonic() - started)
        return step(ctx, work, lease)


def _records(*tasks: str) -> Callable[[JobSpec], bool]:
    """Inference specs of one of ``tasks`` whose records are not OpenAI batch requests."""
    return lambda spec: (
        isinstance(spec, InferenceSpec) and spec.openai_endpoint is None and spec.task in tasks
    )


TEXT = JobKind("text", _records("embed", "classify", "generate"), Runs("worker.runners.text"))
TEXT2TEXT = JobKind("text2text", _records("text2text"), Runs("worker.runners.text2text"))
ONNX = JobKind("onnx", _records("regress"), Runs("worker.runners.onnx"))
IMAGES = JobKind(
    "images", _records(*sorted(IMAGE_TASKS)), Runs("worker.runners.images"), plan=images.plan
)
OPENAI_BATCH = JobKind(
    "openai_batch",
    lambda spec: isinstance(spec, InferenceSpec) and spec.openai_endpoint is not None,
    Runs("worker.runners.openai_batch"),
    time_limit_error=(
        "ran longer than the shard time limit ({limit:.0f}s, BARGE_SHARD_SOFT_TIME_LIMIT); "
        "split the batch into smaller input files"
    ),
    finalize=openai_batch.finalize,
)
FINETUNE = JobKind(
    "finetune",
    lambda spec: isinstance(spec, FinetuneSpec),
    Runs("worker.runners.finetune.run"),
    time_limit_error=(
        "a training slice ran past BARGE_SHARD_SOFT_TIME_LIMIT ({limit:.0f}s); lower "
        "BARGE_FINETUNE_SLICE_SECONDS or use fewer steps per checkpoint so a slice and its "
        "checkpoint fit"
    ),
    plan=finetune.plan,
    verdict=finetune.verdict,
    finalize=finetune.finalize,
    status_check_seconds=1.0,  # a fine-tune's steps can be milliseconds
    unit_name="fine-tune",
)

KINDS = (TEXT, TEXT2TEXT, ONNX, IMAGES, OPENAI_BATCH, FINETUNE)


def kind_for(spec: JobSpec) -> JobKind:
    """The one kind that takes ``spec``."""
    for kind in KINDS:
        if kind.matches(spec):
            return kind
    raise LookupError(f"no job kind takes a {type(spec).__name__} of task {spec.task!r}")
