"""The images kind's plan step: a job whose records are image objects (an image task without
``image_field``) is planned as the listing of its images (``barge.records.images``), one JSONL
record per image, under its output; a job whose records name their images is planned like any
job over records (``worker.kinds.records``).

No torch, nothing of the runners. Imports: ``barge``, ``worker.context``, ``worker.kinds``;
never ``api`` or ``cli``.
"""

from __future__ import annotations

import uuid

from barge.errors import PermanentJobError
from barge.records import images
from barge.specs import InferenceSpec
from worker.context import WorkerContext
from worker.kinds import records
from worker.kinds.steps import Plan


def plan(
    ctx: WorkerContext, spec: InferenceSpec, job_id: uuid.UUID, model_ref: str, output: str
) -> Plan:
    if not spec.reads_image_objects:
        return records.plan(ctx, spec, job_id, model_ref, output)
    records.check_model(ctx, model_ref or spec.model)
    listing, count = images.write_listing(ctx.store, spec.input, output or spec.output)
    if not count:
        raise PermanentJobError(f"no image objects at {spec.input}")
    return records.plan_objects(ctx, spec, job_id, [listing], "jsonl", count)
