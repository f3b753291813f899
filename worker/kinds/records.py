"""The steps of the kinds over records (text, text2text, ONNX, images, OpenAI batches):
planning splits the job's input objects into shards of ``shard_size`` records
(``BARGE_SHARD_RECORDS``), finalizing fails a job whose failed records are over its
``max_failed_ratio`` and writes the records manifest (counts, parts, errors files, tokens).

No torch, nothing of the runners. Imports: ``barge``, ``db``, ``worker.context``,
``worker.kinds.steps``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import uuid
from typing import Any

from barge.errors import PermanentJobError
from barge.modeldirs import check_model_files, list_model_files
from barge.records import format_of, plan_objects_ranges, resolve_inputs
from barge.specs import BUILTIN_MODELS, InferenceSpec
from barge.storage import ObjectInfo
from db import state
from db.models import Job, Shard
from worker.context import WorkerContext
from worker.kinds.steps import Finalizing, Finished, Plan, timings


def plan(
    ctx: WorkerContext, spec: InferenceSpec, job_id: uuid.UUID, model_ref: str, output: str
) -> Plan:
    """Check the model directory, then split the input objects into shards."""
    check_model(ctx, model_ref or spec.model)
    objects = resolve_inputs(ctx.store, spec.input)
    return plan_objects(ctx, spec, job_id, objects, spec.input_format, len(objects))


def check_model(ctx: WorkerContext, model_ref: str) -> None:
    """Refuse a model directory that cannot run (a built-in model has none)."""
    if model_ref not in BUILTIN_MODELS:
        check_model_files(model_ref, list_model_files(ctx.settings, ctx.store, model_ref))


def plan_objects(
    ctx: WorkerContext,
    spec: InferenceSpec,
    job_id: uuid.UUID,
    objects: list[ObjectInfo],
    declared: str,
    n_objects: int,
) -> Plan:
    """The shards of ``objects`` (read as ``declared``, or as each one's suffix says), in
    order; ``n_objects`` is what the planning message counts as the job's objects."""
    if not objects:
        raise PermanentJobError(f"no input objects at {spec.input}")
    shard_records = spec.shard_size or ctx.settings.shard_records
    shards: list[Shard] = []
    offset = 0
    formats = [format_of(info.uri, declared) for info in objects]
    planned = plan_objects_ranges(
        ctx.store,
        list(zip(objects, formats, strict=True)),
        shard_records,
        threads=ctx.settings.input_fetch_threads,
    )
    for info, fmt, (ranges, count) in zip(objects, formats, planned, strict=True):
        for rng in ranges:
            shards.append(
                Shard(
                    id=uuid.uuid4(),
                    job_id=job_id,
                    index=len(shards),
                    source_uri=str(info.uri),
                    source_etag=info.etag,
                    input_format=fmt.name,
                    compressed=fmt.gzip,
                    start_record=rng.start_record,
                    record_count=rng.record_count,
                    record_offset=offset + rng.start_record,
                    first_line=rng.first_line,
                    byte_start=rng.byte_start,
                    byte_end=rng.byte_end,
                )
            )
        offset += count
    message = f"planned {len(shards)} shards over {n_objects} objects, {offset} records"
    data = {"shards": len(shards), "objects": n_objects, "records": offset}
    return Plan(shards, offset, message, data)


def verdict(spec: InferenceSpec, shards: list[Shard]) -> str | None:
    """Why a job whose shards all settled without failing fails: more failed records than its
    ``max_failed_ratio``; None when it succeeded."""
    ok = sum(s.records_succeeded for s in shards)
    bad = sum(s.records_failed for s in shards)
    limit = spec.max_failed_ratio
    if ok + bad and bad / (ok + bad) > limit:
        return (
            f"{bad} of {ok + bad} records failed ({bad / (ok + bad):.1%}), more than "
            f"max_failed_ratio {limit:.1%}; see the errors/ files"
        )
    return None


def finalize(done: Finalizing) -> Finished:
    """The records manifest; the summary counts the records."""
    written = manifest(done.job, done.shards, done.status, done.error)
    counts = written["records"]
    return Finished(written, f"{counts['succeeded']} records succeeded, {counts['failed']} failed")


def manifest(job: Job, shards: list[Shard], status: str, error: str | None) -> dict[str, Any]:
    """The manifest of a job over records: its counts, its parts and errors files, its token
    usage (when it counted tokens)."""
    ok = sum(s.records_succeeded for s in shards)
    bad = sum(s.records_failed for s in shards)
    spec = job.spec
    return {
        "job_id": str(job.id),
        "status": status,
        "error": error,
        "task": spec.get("task"),
        "model": spec.get("model"),
        "model_uri": job.model_uri,
        "input": spec.get("input"),
        "output": job.output_uri,
        "output_format": spec.get("output_format", "jsonl"),
        "records": {
            "total": job.records_total or 0,
            "succeeded": ok,
            "failed": bad,
            "not_processed": max(0, (job.records_total or 0) - ok - bad),
        },
        "parts": [
            {
                "key": s.output_key,
                "shard": s.index,
                "source": s.source_uri,
                "records": s.records_succeeded,
                "complete": s.status == state.SHARD_SUCCEEDED,
            }
            for s in shards
            if s.output_key
        ],
        "errors": [
            {"key": s.errors_key, "shard": s.index, "records": s.records_failed}
            for s in shards
            if s.errors_key
        ],
        "timings": timings(job),
        **_usage(shards),
    }


def _usage(shards: list[Shard]) -> dict[str, Any]:
    """``{"usage": token totals}`` over the shards that counted tokens (generate), else {}."""
    counted = [s.usage for s in shards if s.usage]
    if not counted:
        return {}
    totals: dict[str, int] = {}
    for usage in counted:
        for k, n in usage.items():
            totals[k] = totals.get(k, 0) + int(n)
    return {"usage": totals}
