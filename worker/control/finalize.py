"""Finalizing a job: once every shard is settled, write ``_manifest.json`` (and ``_SUCCESS`` on
success) last, then move the job to its final state. Idempotent: safe to run twice. It sends
nothing, so it opens a plain ``ctx.session()`` scope.

Imports: ``barge``, ``db``, ``services.scopes``, ``worker.context``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session

from barge.specs import FinetuneSpec, parse_spec
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job, Model, Shard
from services import openai_fine_tuning, scopes
from worker.context import WorkerContext
from worker.runners import openai_batch

log = logging.getLogger(__name__)


def finalize_job(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    with ctx.session() as session:
        job = repo.lock_job(session, job_id)
        if job is None or job.manifest is not None:
            return  # gone, or already finalized
        if job.status == state.QUEUED:
            return  # not planned yet
        if repo.unfinished_shard_count(session, job_id):
            return  # the last shard to settle sends us again
        shards = repo.shards_of(session, job_id)
        target, error = _outcome(job, shards)
        denied = scopes.denial(session, ctx.settings, job)  # nothing written outside them
        if denied:
            target, error = state.FAILED, denied
        if job.type == "finetune":
            registered = repo.models_for_job(session, job.id)
            manifest = finetune_manifest(job, shards, target, error, registered)
        else:
            manifest = build_manifest(job, shards, target, error)
        out = S3Uri.parse(job.output_uri).as_prefix()
        if not denied and job.spec.get("openai_endpoint"):  # an OpenAI batch: its two files
            manifest["usage"] = openai_batch.assemble(ctx, session, job, shards)
        if not denied:  # nothing is written where the tenant may not write
            ctx.store.put_bytes(
                out.join("_manifest.json"), json.dumps(manifest, indent=2).encode() + b"\n"
            )
        if not denied and target == state.SUCCEEDED and job.type == "finetune":
            _openai_results(ctx, session, job, out)
        if target == state.SUCCEEDED:
            ctx.store.put_bytes(out.join("_SUCCESS"), b"")
        job.manifest = manifest
        if job.status != target:
            counts = manifest["records"]
            if job.type == "finetune":
                model = manifest["model"]
                summary = (
                    f"registered {model['name']} version {model['version']}"
                    if model
                    else f"stopped at step {manifest['steps']['done']}; nothing registered"
                )
            else:
                summary = f"{counts['succeeded']} records succeeded, {counts['failed']} failed"
            state.transition(
                session,
                job,
                target,
                error=error,
                message=error or summary,
                data={"records": counts},
            )


def _openai_results(ctx: WorkerContext, session: Session, job: Job, out: S3Uri) -> None:
    """A fine-tune run for the OpenAI surface: its results file (metrics by step, CSV)."""
    row = openai_fine_tuning.for_job(session, job.id)
    if row is None:
        return
    events, _ = repo.events_newest_first(
        session, job.id, 1_000_000, kinds=openai_fine_tuning.RESULT_EVENT_KINDS
    )
    body = openai_fine_tuning.results_csv(events)
    uri = out.join("results.csv")
    ctx.store.put_bytes(uri, body)
    openai_fine_tuning.attach_results(session, row, job, uri, len(body))


def _outcome(job: Job, shards: list[Shard]) -> tuple[str, str | None]:
    if job.status == state.CANCELLING:
        return state.CANCELLED, None
    if job.status == state.FAILED:
        return state.FAILED, job.error
    failed_shards = [s for s in shards if s.status == state.SHARD_FAILED]
    if failed_shards:
        return state.FAILED, failed_shards[0].last_error or f"shard {failed_shards[0].index} failed"
    spec = parse_spec(job.spec)
    if isinstance(spec, FinetuneSpec):
        return state.SUCCEEDED, None  # its data was checked against max_failed_ratio at planning
    ok = sum(s.records_succeeded for s in shards)
    bad = sum(s.records_failed for s in shards)
    limit = spec.max_failed_ratio
    if ok + bad and bad / (ok + bad) > limit:
        return (
            state.FAILED,
            f"{bad} of {ok + bad} records failed ({bad / (ok + bad):.1%}), more than "
            f"max_failed_ratio {limit:.1%}; see the errors/ files",
        )
    return state.SUCCEEDED, None


def build_manifest(job: Job, shards: list[Shard], status: str, error: str | None) -> dict[str, Any]:
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
        "timings": _timings(job),
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


def finetune_manifest(
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
        "timings": _timings(job),
    }


def _timings(job: Job) -> dict[str, Any]:
    finished = utcnow()
    return {
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": finished.isoformat(),
        "seconds": round((finished - (job.started_at or job.created_at)).total_seconds(), 3),
    }
