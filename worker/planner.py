"""Planning: resolve the inputs, split them into shards, start the job, dispatch the shards."""

from __future__ import annotations

import logging
import uuid

from barge.errors import BargeError, PermanentJobError
from barge.modeldirs import check_model_files, list_model_files
from barge.queue import FINALIZE_JOB, RUN_SHARD
from barge.records import detect_format, plan_ranges, resolve_inputs
from barge.specs import FinetuneSpec, InferenceSpec, parse_spec
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Shard
from worker.context import WorkerContext
from worker.finetune_data import check_datasets, load_dataset, steps_per_epoch, write_errors

log = logging.getLogger(__name__)


def plan_job(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    with ctx.session() as session:
        job = repo.get_job(session, job_id)
        if job is None:
            log.warning("plan: job %s does not exist", job_id)
            return
        if job.status != state.QUEUED:
            if job.status == state.CANCELLING:
                ctx.send(FINALIZE_JOB, str(job_id))
            return  # already planned (duplicate delivery) or final
        spec = parse_spec(job.spec)
        model_ref = job.model_uri or ""
        try:
            if isinstance(spec, FinetuneSpec):
                shards, total, message, data = _plan_finetune(
                    ctx, spec, model_ref, job_id, job.output_uri
                )
                job.steps_total = data["steps"]
            else:
                shards, total, n_objects = _plan(ctx, spec, model_ref or spec.model, job_id)
                message = f"planned {len(shards)} shards over {n_objects} objects, {total} records"
                data = {"shards": len(shards), "objects": n_objects, "records": total}
        except BargeError as exc:
            state.transition(session, job, state.FAILED, error=f"planning failed: {exc.message}")
            shards = []
        if job.status == state.FAILED:
            session.commit()
            ctx.send(FINALIZE_JOB, str(job_id))  # writes the failed job's manifest
            return
        now = utcnow()
        for shard in shards:
            shard.dispatched_at = now
            session.add(shard)
        job.records_total = total
        job.shards_total = len(shards)
        session.flush()
        state.transition(session, job, state.RUNNING, message=message, data=data)
        shard_refs = [(str(s.id), s.index) for s in shards]
    for shard_id, index in shard_refs:  # after commit
        ctx.send(RUN_SHARD, shard_id, str(job_id), index)
    if not shard_refs:
        ctx.send(FINALIZE_JOB, str(job_id))


def _plan(
    ctx: WorkerContext, spec: InferenceSpec, model_ref: str, job_id: uuid.UUID
) -> tuple[list[Shard], int, int]:
    check_model_files(model_ref, list_model_files(ctx.settings, ctx.store, model_ref))
    objects = resolve_inputs(ctx.store, spec.input)
    if not objects:
        raise PermanentJobError(f"no input objects at {spec.input}")
    shard_records = spec.shard_size or ctx.settings.shard_records
    shards: list[Shard] = []
    offset = 0
    for info in objects:
        fmt = detect_format(info.uri.key, spec.input_format)
        if fmt is None:
            raise PermanentJobError(
                f"cannot tell the format of {info.uri}: name it .jsonl, .csv or .parquet "
                "(optionally .gz) or set input_format"
            )
        ranges, count = plan_ranges(ctx.store, info, fmt, shard_records)
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
    return shards, offset, len(objects)


def _plan_finetune(
    ctx: WorkerContext, spec: FinetuneSpec, model_ref: str, job_id: uuid.UUID, output: str
) -> tuple[list[Shard], int, str, dict[str, int]]:
    """Check every training and validation record; the whole fine-tune is one unit of work."""
    check_model_files(model_ref, list_model_files(ctx.settings, ctx.store, model_ref))
    train = load_dataset(ctx.store, spec, "train")
    validation = load_dataset(ctx.store, spec, "validation") if spec.validation else None
    out = S3Uri.parse(output).as_prefix()
    for dataset in (train, validation):
        if dataset is not None:
            write_errors(ctx.store, out, dataset)
    check_datasets(spec, train, validation)
    hp = spec.hyperparameters
    steps = hp.epochs * steps_per_epoch(len(train.examples), hp)
    fmt = train.first_format
    assert fmt is not None  # check_datasets refused a train set without records
    shard = Shard(
        id=uuid.uuid4(),
        job_id=job_id,
        index=0,
        source_uri=spec.train,
        input_format=fmt.name,
        compressed=fmt.gzip,
        start_record=0,
        record_count=train.records,
        record_offset=0,
        first_line=1,
    )
    n_val = len(validation.examples) if validation else 0
    skipped = len(train.errors) + (len(validation.errors) if validation else 0)
    message = (
        f"planned fine-tune: {len(train.examples)} training and {n_val} validation examples, "
        f"{steps} steps over {hp.epochs} epochs"
        + (f"; {skipped} unusable records skipped (see errors/)" if skipped else "")
    )
    data = {
        "train_examples": len(train.examples),
        "validation_examples": n_val,
        "skipped_records": skipped,
        "steps": steps,
        "epochs": hp.epochs,
    }
    return [shard], train.records, message, data
