"""The fine-tune kind's steps (its run step is ``worker.runners.finetune.run``). Planning reads
and checks every training and validation record (``worker.kinds.finetune_data``, as the run
reads them again), writes the unusable ones to ``errors/`` and makes the whole fine-tune one
unit of work; finalizing writes the fine-tune manifest (the model it registered, its epoch
models, its steps) and, for a fine-tune of the OpenAI surface that succeeded, its results file.
Its data was checked against ``max_failed_ratio`` at planning: nothing fails it at the end.

No torch, nothing of the runners. Imports: ``barge``, ``db``, ``services``, ``worker.context``,
``worker.kinds``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from barge.modeldirs import check_model_files, list_model_files
from barge.specs import FinetuneSpec
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from db.models import Job, Model, Shard
from services import openai_fine_tuning, scopes
from worker.context import WorkerContext
from worker.kinds.finetune_data import (
    Dataset,
    check_datasets,
    load_dataset,
    steps_per_epoch,
    write_errors,
)
from worker.kinds.steps import Finalizing, Finished, Plan, timings


def plan(
    ctx: WorkerContext, spec: FinetuneSpec, job_id: uuid.UUID, model_ref: str, output: str
) -> Plan:
    """Check every training and validation record; the whole fine-tune is one unit of work."""
    check_model_files(model_ref, list_model_files(ctx.settings, ctx.store, model_ref))
    train, validation = _datasets(ctx, spec, job_id, S3Uri.parse(output).as_prefix())
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
    return Plan([shard], train.records, message, data, steps_total=steps)


def _datasets(
    ctx: WorkerContext, spec: FinetuneSpec, job_id: uuid.UUID, out: S3Uri
) -> tuple[Dataset, Dataset | None]:
    """The training and validation sets, read and checked, their unusable records written to
    ``errors/`` under ``out``."""
    limit = ctx.settings.max_text_chars
    may_read = _tenant_reads(ctx, job_id)  # an image record's s3:// URI is read only inside them
    train = load_dataset(ctx.store, spec, "train", limit, may_read=may_read)
    validation = (
        load_dataset(ctx.store, spec, "validation", limit, may_read=may_read)
        if spec.validation
        else None
    )
    for dataset in (train, validation):
        if dataset is not None:
            write_errors(ctx.store, out, dataset)
    check_datasets(spec, train, validation)
    return train, validation


def _tenant_reads(ctx: WorkerContext, job_id: uuid.UUID) -> Callable[[str], bool]:
    """The job's tenant's ``may_read`` as its scopes are now (nothing, if the job is gone)."""
    with ctx.session() as session:
        job = repo.get_job(session, job_id)
        if job is None:
            return lambda uri: False
        return scopes.scopes_for(session, ctx.settings, job.tenant_id).may_read


def verdict(spec: FinetuneSpec, shards: list[Shard]) -> str | None:
    """Nothing fails a fine-tune whose unit succeeded: its data was checked at planning."""
    return None


def finalize(done: Finalizing) -> Finished:
    """The fine-tune manifest, and the OpenAI surface's results file once it succeeded; the
    summary names the model it registered."""
    registered = repo.models_for_job(done.session, done.job.id)
    written = manifest(done.job, done.shards, done.status, done.error, registered)
    if done.writes and done.status == state.SUCCEEDED:
        _openai_results(done.ctx, done.session, done.job)
    model = written["model"]
    summary = (
        f"registered {model['name']} version {model['version']}"
        if model
        else f"stopped at step {written['steps']['done']}; nothing registered"
    )
    return Finished(written, summary)


def manifest(
    job: Job, shards: list[Shard], status: str, error: str | None, registered: list[Model]
) -> dict[str, Any]:
    """The manifest of a fine-tune: ``model`` is what it registered as its ``model_name``,
    ``epoch_models`` the epoch models it kept (``epoch_models``), oldest first."""
    spec = job.spec

    def shown(model: Model) -> dict[str, Any]:
        return {
            "name": model.name,
            "version": model.version,
            "uri": model.uri,
            "metrics": model.metrics,
        }

    own = [m for m in registered if not repo.is_epoch_model(m)]
    epochs = [m for m in registered if repo.is_epoch_model(m)]
    unit = shards[0] if shards else None
    out = S3Uri.parse(job.output_uri).as_prefix()
    return {
        "job_id": str(job.id),
        "type": "finetune",
        "status": status,
        "error": error,
        "task": spec.get("task"),
        "base_model": spec.get("base_model"),
        "base_model_uri": job.model_uri,
        "train": spec.get("train"),
        "validation": spec.get("validation"),
        "hyperparameters": spec.get("hyperparameters"),
        "steps": {"done": unit.steps_done if unit else 0, "total": job.steps_total or 0},
        "records": {
            "train_total": job.records_total or 0,
            "train_used": unit.records_succeeded if unit else 0,
            "train_skipped": unit.records_failed if unit else 0,
        },
        "model": shown(own[0]) if own else None,
        "epoch_models": [shown(m) for m in epochs],
        "checkpoints": str(out.join("checkpoints/")),
        "errors": str(out.join("errors/")) if unit and unit.records_failed else None,
        "timings": timings(job),
    }


def _openai_results(ctx: WorkerContext, session: Session, job: Job) -> None:
    """A fine-tune run for the OpenAI surface: its results file (metrics by step, CSV)."""
    row = openai_fine_tuning.for_job(session, job.id)
    if row is None:
        return
    events, _ = repo.events_newest_first(
        session, job.id, 1_000_000, kinds=openai_fine_tuning.RESULT_EVENT_KINDS
    )
    body = openai_fine_tuning.results_csv(events)
    uri = S3Uri.parse(job.output_uri).as_prefix().join("results.csv")
    ctx.store.put_bytes(uri, body)
    openai_fine_tuning.attach_results(session, row, job, uri, len(body))
