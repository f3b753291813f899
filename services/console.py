"""What the console's pages show, for one tenant (a job of another tenant is never found):
jobs found by status, id or metadata; a job's throughput over time (from its progress
samples), shard timeline (from its attempts), first errors, events, usage and a fine-tune's
curves; retrying a job; the workers and the model registry.

Workers (``workers_view``) are shared by every tenant: a member sees its own shards on them,
an admin sees everything (the models they hold warm are tenants' locations).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from barge.errors import Conflict, PermanentJobError
from barge.settings import Settings
from barge.specs import JobSpec, parse_spec
from barge.status import CANCELLED, FAILED, FINAL, RUNNING, SUCCEEDED
from barge.storage import ObjectStore, S3Uri
from db import repositories as repo
from db.base import utcnow
from db.models import Job, JobEvent, JobSample, Model, ShardAttempt
from db.repositories import openai as openai_repo
from services import job_files, retries, submission, usage
from services import jobs as jobs_service
from services.context import ServiceContext
from services.tenants import Principal

# How much the job page shows: events, errors, attempts on the timeline, samples.
EVENTS_SHOWN = 30
ERRORS_SHOWN = 10
ERROR_BYTES_READ = 64 * 1024  # of each errors file, for its first lines
ERROR_FILES_READ = 3
ATTEMPTS_SHOWN = 2000
SAMPLES_SHOWN = 5000
TRAIN_EVENTS_SHOWN = 5000
UTILISATION_WINDOW = timedelta(hours=1)
RATE_WINDOW = 10.0  # seconds: a sample's rate is over the window before it


def percent(view: dict[str, Any]) -> float | None:
    """How far the job is, 0 to 100, from its public view (records, or a fine-tune's steps)."""
    progress = view["progress"]
    if progress.get("steps_total"):
        return round(100.0 * (progress["steps_done"] or 0) / progress["steps_total"], 1)
    total = progress.get("records_total")
    if total:
        done = progress["records_succeeded"] + progress["records_failed"]
        return round(min(100.0, 100.0 * done / total), 1)
    return 100.0 if view["status"] == SUCCEEDED else None


def views(session: Session, settings: Settings, jobs: list[Job]) -> list[dict[str, Any]]:
    """Each job's public view (``services.jobs``) with its percent and OpenAI id, if any."""
    ids = openai_repo.openai_ids(session, [j.id for j in jobs])
    shown = []
    for job, view in zip(jobs, jobs_service.present_many(session, jobs, settings), strict=True):
        public = view.as_dict()
        shown.append(
            {
                **public,
                "percent": percent(public),
                "openai_id": ids.get(job.id),
                "final": job.status in FINAL,
            }
        )
    return shown


def find_jobs(
    session: Session,
    settings: Settings,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    text: str | None,
    cursor: str | None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the tenant's jobs, newest first, and the cursor of the next page."""
    try:
        after = repo.decode_cursor(cursor) if cursor else None
    except ValueError:
        after = None  # a cursor the console did not make: the first page
    found = repo.list_jobs(
        session, tenant_id, status=status, cursor=after, limit=limit + 1, matching=text or None
    )
    page = found[:limit]
    more = repo.encode_cursor(page[-1]) if len(found) > limit else None
    return views(session, settings, page), more


# --- a job's page ---------------------------------------------------------------------------------


def _ts(at: datetime | None) -> float | None:
    return round(at.timestamp(), 3) if at is not None else None


def _rates(times: list[float], counts: list[int], first: float | None) -> list[float | None]:
    """Work per second at each sample over the ``RATE_WINDOW`` seconds before it (from the
    newest sample at least that old, else from ``first``, the job's start, at 0): progress is
    noted batch by batch, so a rate between two close samples swings with the batches. None
    where the count went down (a shard started again) or no time passed."""
    out: list[float | None] = []
    for i, (t, n) in enumerate(zip(times, counts, strict=True)):
        j = next((k for k in range(i - 1, -1, -1) if t - times[k] >= RATE_WINDOW), None)
        t0, n0 = (times[j], counts[j]) if j is not None else (first, 0)
        if t0 is None or t <= t0 or n < n0:
            out.append(None)
        else:
            out.append(round((n - n0) / (t - t0), 3))
    return out


def throughput(job: Job, samples: list[JobSample], steady: dict[str, Any] | None) -> dict[str, Any]:
    """Series for the throughput chart, one point per sample: records (or a fine-tune's steps)
    per second, tokens per second where the job generates, and the reference: the model's
    steady rate times the shards running then."""
    times = [s.at.timestamp() for s in samples]
    finetune = job.type == "finetune"
    done = [s.steps_done if finetune else s.records_succeeded + s.records_failed for s in samples]
    started = _ts(job.started_at)
    series: dict[str, Any] = {
        "t": [round(t, 3) for t in times],
        "done": done,
        "rate": _rates(times, done, started),
        "unit": "steps/s" if finetune else "records/s",
        "running": [s.shards_running for s in samples],
    }
    if any(s.tokens_out for s in samples):
        series["tokens_rate"] = _rates(times, [s.tokens_out for s in samples], started)
    if steady is not None:
        series["reference"] = [
            round(steady["records_per_second"] * s.shards_running, 3) for s in samples
        ]
        series["steady"] = steady
    return series


def _bar_outcome(row: repo.AttemptRow, now: datetime, alive_for: timedelta) -> str:
    """An attempt's outcome, or ``running``, or ``lost`` (its worker stopped being seen)."""
    attempt = row.attempt
    if attempt.outcome is not None:
        return attempt.outcome
    current = row.current_attempt == attempt.attempt and row.shard_status == RUNNING
    return "running" if current and now - attempt.seen_at <= alive_for else "lost"


def timeline(settings: Settings, rows: list[repo.AttemptRow], now: datetime) -> dict[str, Any]:
    """One row per worker, one bar per attempt (start to end; a running one to now, a lost
    one to when its worker was last seen)."""
    alive_for = timedelta(seconds=settings.lease_seconds + 2 * settings.sample_seconds)
    bars = []
    for row in rows:
        a: ShardAttempt = row.attempt
        outcome = _bar_outcome(row, now, alive_for)
        end = a.finished_at or (now if outcome == "running" else a.seen_at)
        bars.append(
            {
                "worker": usage.worker_label(settings, a.worker),
                "shard": row.index,
                "attempt": a.attempt,
                "start": _ts(a.started_at),
                "end": _ts(end),
                "outcome": outcome,
                "records": a.records_succeeded + a.records_failed,
                "failed": a.records_failed,
                "error": (a.error or "")[:300] or None,
            }
        )
    return {"workers": sorted({b["worker"] for b in bars}), "bars": bars}


def event_view(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": _ts(event.at),
        "kind": event.kind,
        "message": event.message,
        "to_status": event.to_status,
    }


def job_data(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """Everything the job page draws and updates while the job runs (its JSON)."""
    view = views(session, settings, [job])[0]
    steady = usage.steady_rate(session, job)
    samples = repo.job_samples(session, job.id, SAMPLES_SHOWN)
    events, _ = repo.events_newest_first(session, job.id, EVENTS_SHOWN)
    data = {
        "job": view,
        "throughput": throughput(job, samples, steady),
        "timeline": timeline(settings, repo.attempts_of(session, job.id, ATTEMPTS_SHOWN), utcnow()),
        "events": [event_view(e) for e in events],
        "now": _ts(utcnow()),
        "retry_failed": job.type == "inference" and retries.offers_retry(session, job),
    }
    if job.type == "finetune":
        data["finetune"] = finetune_data(session, job)
    return data


# --- a fine-tune -----------------------------------------------------------------------------------


def _numbers(data: dict[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "step")
    }


def finetune_data(session: Session, job: Job) -> dict[str, Any]:
    """Loss curves (one point per logged step), learning rate, per-epoch metrics, the newest
    confusion matrix, checkpoints and the models the fine-tune registered."""
    train, _ = repo.events_newest_first(session, job.id, TRAIN_EVENTS_SHOWN, kinds=("train",))
    evals, _ = repo.events_newest_first(session, job.id, 1000, kinds=("eval",))
    checkpoints, _ = repo.events_newest_first(session, job.id, 200, kinds=("checkpoint",))
    train, evals = train[::-1], evals[::-1]
    confusion = next(
        (
            e.data["validation_confusion_matrix"]
            for e in reversed(evals)
            if isinstance(e.data.get("validation_confusion_matrix"), dict)
        ),
        None,
    )
    return {
        "loss": {
            "step": [e.data.get("step") for e in train],
            "train_loss": [e.data.get("loss") for e in train],
            "learning_rate": [e.data.get("learning_rate") for e in train],
        },
        "epochs": [
            {"epoch": e.data.get("epoch"), "step": e.data.get("step"), **_numbers(e.data)}
            for e in evals
        ],
        "confusion": confusion,
        "checkpoints": [
            {"step": e.data.get("step"), "uri": e.data.get("uri"), "at": _ts(e.at)}
            for e in checkpoints
        ],
        "models": [model_view(m) for m in repo.models_for_job(session, job.id)],
    }


def model_view(model: Model) -> dict[str, Any]:
    return {
        "name": model.name,
        "version": model.version,
        "ref": f"{model.name}@{model.version}",
        "task": model.task,
        "uri": model.uri,
        "base_model": model.base_model,
        "adapter_base_uri": model.adapter_base_uri,
        "metrics": _numbers(model.metrics or {}),
        "job_id": str(model.job_id) if model.job_id else None,
        "created_at": model.created_at,
    }


# --- errors --------------------------------------------------------------------------------------


def _lines(store: ObjectStore, uri: S3Uri, limit: int) -> list[dict[str, Any]]:
    """The first whole JSON lines of an errors file (at most ``ERROR_BYTES_READ`` read)."""
    with store.open(uri, 0, ERROR_BYTES_READ - 1) as f:
        head = f.read(ERROR_BYTES_READ)
    out = []
    for line in head.split(b"\n")[:-1][:limit]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def first_errors(ctx: ServiceContext, job: Job) -> list[dict[str, Any]]:
    """The job's first failed records (id, source, line, error) from its errors files, then
    the errors of its failed shards; bounded reads."""
    found: list[dict[str, Any]] = []
    try:
        files = [f for f in job_files.list_files(ctx, job) if f.kind == "errors"]
        prefix = job_files.output_prefix(ctx, job)
        for f in files[:ERROR_FILES_READ]:
            found += _lines(ctx.store, prefix.join(f.name), ERRORS_SHOWN - len(found))
            if len(found) >= ERRORS_SHOWN:
                break
    except Exception as exc:  # the store away, or out of the tenant's scopes now
        found.append({"error": f"errors files not read: {exc}"[:300]})
    shard_errors = [
        {"source": s.source_shown, "line": None, "id": None, "error": s.last_error}
        for s in repo.shards_of(ctx.session, job.id)
        if s.status == FAILED and s.last_error
    ]
    return (found + shard_errors)[:ERRORS_SHOWN]


# --- retry ----------------------------------------------------------------------------------------


def _retried_output(output: str, new_id: str) -> str:
    """A prefix beside the job's own (every job needs a prefix of its own)."""
    return f"{output.rstrip('/')}-retry-{new_id}/"


def retried_spec(job: Job) -> JobSpec:
    """The job's spec, its output moved beside the original's and its metadata naming it."""
    data = dict(job.spec)
    if data.get("openai_endpoint"):
        raise Conflict("this job runs an OpenAI batch: retry it through the OpenAI API")
    if job.status not in (FAILED, CANCELLED):
        raise Conflict(f"job {job.id} is {job.status}; only a failed or cancelled job is retried")
    suffix = uuid.uuid4().hex[:8]
    if data.get("output"):
        data["output"] = _retried_output(str(data["output"]), suffix)
    data["metadata"] = {**(data.get("metadata") or {}), "retry_of": str(job.id)}
    try:
        return parse_spec(data)
    except (ValueError, PermanentJobError) as exc:
        raise Conflict(f"the job's spec cannot be submitted again: {exc}") from None


def retry(ctx: ServiceContext, job: Job) -> Job:
    """Submit the failed or cancelled ``job`` again, as a new job writing beside it (audited
    as a submit naming the job it retries)."""
    if openai_repo.fine_tuning_job_for(ctx.session, job.id) is not None:
        raise Conflict("this job runs an OpenAI fine-tuning job: retry it through the OpenAI API")
    spec = retried_spec(job)
    new, _ = submission.submit(
        ctx, submission.SubmitJob(spec, audit_data={"retry_of": str(job.id)})
    )
    return new


# --- workers and models --------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def overlap(self, start: datetime, end: datetime) -> float:
        return max(0.0, (min(end, self.end) - max(start, self.start)).total_seconds())


def _utilisation(attempts: list[ShardAttempt], window: Window) -> dict[str, float | None]:
    """The share of the window the worker held work, and computed model batches."""
    seconds = (window.end - window.start).total_seconds()
    held = sum(window.overlap(a.started_at, a.finished_at or a.seen_at) for a in attempts)
    timed = [a for a in attempts if a.busy_seconds is not None and a.finished_at]
    busy = sum(a.busy_seconds or 0.0 for a in timed)
    return {
        "held": round(min(1.0, held / seconds), 4),
        "busy": round(min(1.0, busy / seconds), 4) if timed else None,
    }


def workers_view(
    session: Session, settings: Settings, principal: Principal
) -> list[dict[str, Any]]:
    """Each live worker: its queues, device, warm models (admins only), the shards it runs
    now (a member sees only its own) and its utilisation over the last hour. A member sees each
    worker by the label its jobs' pages give it, not its node name or host."""
    now = utcnow()
    live = repo.workers_seen_since(
        session, now - timedelta(seconds=3 * settings.worker_presence_seconds)
    )
    running: dict[str, list[repo.Running]] = {}
    for r in repo.running_shards(session, now):
        running.setdefault(r.worker, []).append(r)
    window = Window(now - UTILISATION_WINDOW, now)
    by_worker: dict[str, list[ShardAttempt]] = {}
    for a in repo.worker_attempts(session, [w.name for w in live], window.start):
        by_worker.setdefault(a.worker, []).append(a)
    mine = principal.tenant.id
    return [
        {
            "name": w.name if principal.is_admin else usage.worker_label(settings, w.name),
            "host": w.host if principal.is_admin else None,
            "queues": w.queues,
            "device": w.device,
            "device_name": w.device_name,
            "started_at": w.started_at,
            "seen_at": w.seen_at,
            "models": w.models if principal.is_admin else None,
            "models_count": len(w.models or []),
            "running": [
                {
                    "job_id": str(r.job_id),
                    "shard": r.index,
                    "attempt": r.attempt,
                    "records": r.records,
                }
                if principal.is_admin or r.tenant_id == mine
                else None
                for r in running.get(w.name, [])
            ],
            "utilisation": _utilisation(by_worker.get(w.name, []), window),
        }
        for w in live
    ]


def models_view(session: Session, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """The tenant's registry: each name with its versions, newest first."""
    names: dict[str, list[dict[str, Any]]] = {}
    for model in repo.tenant_models(session, tenant_id):
        names.setdefault(model.name, []).append(model_view(model))
    return [{"name": name, "versions": versions} for name, versions in names.items()]
