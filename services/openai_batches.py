"""Batches of the OpenAI-compatible surface: an input file checked line by line before any
work, then run as a Barge inference job over its lines (``InferenceSpec.openai_endpoint``);
the batch's status, counts and files are read from that job.

A batch whose input fails a check is created ``failed`` with OpenAI's codes and the line
(``invalid_json_line``, ``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``,
``empty_file``, ``too_many_tasks``, ``unsupported_method``, ``invalid_request``), and no job.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from barge.errors import Conflict, InvalidSpec, NotFound, excerpt
from barge.jsonvalues import unstorable
from barge.settings import Settings
from barge.specs import InferenceSpec
from barge.status import CANCELLED, CANCELLING, FAILED, QUEUED, RUNNING, SUCCEEDED
from barge.storage import S3Uri
from db import outbox
from db import repositories as repo
from db.base import utcnow
from db.models import Job, OpenAIBatch
from db.repositories import openai as openai_repo
from services import audit, jobs, openai_files, submission, usage
from services.context import ServiceContext
from services.openai_files import BadRequest
from services.unit_of_work import UnitOfWork

# The endpoint a batch runs → the Barge task its model loads for.
ENDPOINTS = {
    "/v1/embeddings": "embed",
    "/v1/chat/completions": "generate",
    "/v1/completions": "generate",
}
COMPLETION_WINDOWS = ("24h",)  # lasts BARGE_OPENAI_BATCH_WINDOW_SECONDS
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed: the batch was cancelled before it ran."
MAX_ERRORS = 100  # validation errors listed per batch
BATCH_SIZE = 32  # requests per forward pass


@dataclass
class Checked:
    """What reading the input file found: its requests, the model, and the errors."""

    total: int = 0
    model: str | None = None
    model_line: int | None = None  # the first line that names it
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, code: str, line: int | None, message: str, param: str | None = None) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "line": line, "message": message, "param": param})


def bounded_lines(f: IO[bytes], limit: int) -> Any:
    """(line number, bytes or None when over ``limit``) for each physical line, bounded."""
    number = 0
    while True:
        line = f.readline(limit + 2)
        if not line:
            return
        number += 1
        if len(line) > limit + 1 and not line.endswith(b"\n"):
            while (chunk := f.readline(1 << 20)) and not chunk.endswith(b"\n"):
                pass
            yield number, None
            continue
        yield number, line


def check_lines(f: IO[bytes], endpoint: str, settings: Settings) -> Checked:
    """Every line of a batch input file against OpenAI's rules."""
    out = Checked()
    seen: set[str] = set()
    for number, raw in bounded_lines(f, settings.max_record_bytes):
        if raw is None:
            out.error(
                "invalid_json_line",
                number,
                f"line is longer than {settings.max_record_bytes} bytes (BARGE_MAX_RECORD_BYTES)",
            )
            continue
        if not raw.strip():
            continue
        out.total += 1
        if out.total > settings.openai_max_batch_tasks:
            out.errors = []
            out.error(
                "too_many_tasks",
                None,
                f"the file has more than {settings.openai_max_batch_tasks} requests "
                "(BARGE_OPENAI_MAX_BATCH_TASKS); split it into several batches",
            )
            return out
        try:
            data = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            out.error("invalid_json_line", number, f"line is not valid JSON: {exc}"[:300])
            continue
        if not isinstance(data, dict):
            out.error("invalid_json_line", number, "line is not a JSON object")
            continue
        _check_request(out, number, data, endpoint, seen)
    if out.total == 0 and not out.errors:
        out.error("empty_file", None, "the input file has no requests")
    return out


def _check_request(
    out: Checked, number: int, data: dict[str, Any], endpoint: str, seen: set[str]
) -> None:
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        out.error(
            "invalid_request",
            number,
            "custom_id must be a string of 1 to 512 characters",
            "custom_id",
        )
        return
    if custom_id in seen:
        out.error(
            "duplicate_custom_id",
            number,
            f"custom_id {excerpt(custom_id)} appears more than once in the file",
            "custom_id",
        )
        return
    seen.add(custom_id)
    if data.get("method") != "POST":
        out.error(
            "unsupported_method",
            number,
            f"method must be POST, got {excerpt(data.get('method'))}",
            "method",
        )
        return
    url = data.get("url")
    if url != endpoint:
        out.error(
            "url_mismatch",
            number,
            f"url {excerpt(url)} does not match the batch's endpoint {endpoint}",
            "url",
        )
        return
    body = data.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model or len(model) > 2048 or unstorable(model):
        out.error(
            "invalid_request",
            number,
            "body must be an object with a model (a name of at most 2048 characters, no NUL)",
            "body.model",
        )
        return
    if out.model is None:
        out.model, out.model_line = model, number
    elif model != out.model:
        out.error(
            "model_mismatch",
            number,
            f"every request of a batch must name the same model: {excerpt(model)} is not "
            f"{excerpt(out.model)}",
            "body.model",
        )


def model_ref(settings: Settings, name: str) -> str:
    """The Barge model a name in a request body stands for: an alias from
    ``BARGE_OPENAI_MODEL_ALIASES``, else the name itself (a registry name, a directory)."""
    return settings.openai_model_aliases.get(name, name)


@dataclass(frozen=True)
class CreateBatch:
    """A batch to create, as the request asks it."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None


def _check_request_fields(command: CreateBatch) -> None:
    if command.endpoint not in ENDPOINTS:
        raise BadRequest(
            f"endpoint must be one of {', '.join(ENDPOINTS)}, got {excerpt(command.endpoint)}",
            field="endpoint",
            code="unsupported_endpoint",
        )
    if command.completion_window not in COMPLETION_WINDOWS:
        raise BadRequest(
            f"completion_window must be 24h, got {excerpt(command.completion_window)}",
            field="completion_window",
        )
    openai_files.check_metadata(command.metadata)


def create(ctx: ServiceContext, command: CreateBatch) -> OpenAIBatch:
    """Check the input file and start its job; a file that fails the checks makes a failed
    batch (no job)."""
    _check_request_fields(command)
    settings, endpoint = ctx.settings, command.endpoint
    source = openai_files.get(ctx.session, ctx.tenant.id, command.input_file_id)
    if source.purpose != "batch":
        raise BadRequest(
            f"file {source.id} has purpose {source.purpose!r}; a batch reads a file uploaded "
            "with purpose 'batch'",
            field="input_file_id",
        )
    with ctx.store.open(openai_files.location(source)) as f:
        checked = check_lines(f, endpoint, settings)
    now = utcnow()
    batch = OpenAIBatch(
        id=openai_files.new_id("batch_"),
        tenant_id=ctx.tenant.id,
        endpoint=endpoint,
        input_file_id=source.id,
        completion_window=command.completion_window,
        model=checked.model,
        meta=command.metadata,
        total=checked.total,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.openai_batch_window_seconds),
    )
    if not checked.errors:
        assert checked.model is not None
        try:
            batch.job_id = _start_job(ctx, batch, source.uri, endpoint)
        except InvalidSpec as exc:  # the model named (or the task it runs) refused
            if exc.field not in ("model", "task"):
                raise
            default = "model_not_found" if exc.field == "model" else "invalid_request"
            code = exc.detail.get("code", default)
            checked.error(code, checked.model_line, exc.message, "body.model")
    if checked.errors:
        batch.status = "failed"
        batch.errors = checked.errors
    row = openai_repo.add_openai_batch(ctx.session, batch)
    if row.status == "failed":  # ended at once: its webhooks, in this transaction
        outbox.enqueue(ctx.session, ctx.tenant.id, "batch.failed", row.id, now)
    audit.record(
        ctx,
        "batch.create",
        f"batch:{row.id}",
        endpoint=row.endpoint,
        input_file_id=row.input_file_id,
        job=row.job_id,
        status=row.status,  # "failed" when the input failed its checks; no job then
    )
    return row


def _start_job(ctx: ServiceContext, batch: OpenAIBatch, input_uri: str, endpoint: str) -> uuid.UUID:
    assert batch.model is not None
    settings = ctx.settings
    output = openai_files.files_prefix(settings, ctx.tenant).join(f"batches/{batch.id}/")
    spec = _spec(
        model=model_ref(settings, batch.model),
        task=ENDPOINTS[endpoint],  # type: ignore[arg-type]
        input=input_uri,
        output=str(output),
        text_field="body",
        id_field="custom_id",
        messages_field=None,  # the request lines are read by the OpenAI runner
        params_field=None,
        input_format="jsonl",
        batch_size=BATCH_SIZE,
        shard_size=None,
        max_failed_ratio=1.0,  # a request that fails alone never fails its batch
        openai_endpoint=endpoint,  # type: ignore[arg-type]
        metadata={"openai_batch_id": batch.id},
    )
    job, _ = submission.submit(ctx, submission.SubmitJob(spec))
    return job.id


def _spec(**fields: Any) -> InferenceSpec:
    """The batch's job spec, checked by the very rules of a native job's: a model the spec
    refuses (``S3://...``, ``name@0``, a built-in model of another task) is an InvalidSpec
    naming ``model`` (``invalid_request``), as is any other refusal naming its field."""
    try:
        return InferenceSpec(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        name = "model" if not loc else loc[0]  # a check of the whole spec: the model's
        problem = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        where = f"body.model {excerpt(fields['model'])}" if name == "model" else name
        raise InvalidSpec(f"{where}: {problem}", field=name, code="invalid_request") from None


def get(session: Session, tenant_id: uuid.UUID, batch_id: str) -> OpenAIBatch:
    row = (
        openai_repo.get_openai_batch(session, tenant_id, batch_id)
        if openai_files.is_id(batch_id)
        else None
    )
    if row is None:
        raise NotFound(f"no such batch: {excerpt(batch_id)}", field="batch_id")
    return row


def cancel(ctx: ServiceContext, batch_id: str) -> OpenAIBatch:
    """Cancel the batch's job (what finished is kept); 409 when it already ended."""
    session = ctx.session
    batch = get(session, ctx.tenant.id, batch_id)
    job = repo.get_job(session, batch.job_id) if batch.job_id else None
    if job is None or job.status in (SUCCEEDED, FAILED, CANCELLED):
        status = present(session, batch).status
        raise Conflict(f"batch {batch.id} is already {status}; there is nothing to cancel")
    jobs.cancel(ctx, job)
    if batch.cancelling_at is None:
        batch.cancelling_at = utcnow()
        audit.record(ctx, "batch.cancel", f"batch:{batch.id}", job=job.id)
    session.flush()
    return batch


FINISHED = ("completed", "failed", "expired", "cancelled")


def retry(ctx: ServiceContext, batch_id: str) -> OpenAIBatch:
    """Barge's extension: a new batch over the requests of a finished batch that have a line
    in its error file (failed, expired or cancelled), read again from its input file and
    written as a new input file; the new batch names the one it retries (``retry_of``)."""
    session = ctx.session
    batch = get(session, ctx.tenant.id, batch_id)
    status = present(session, batch).status
    if batch.job_id is None or status not in FINISHED:
        raise Conflict(f"batch {batch.id} is {status}; a finished batch that ran is retried")
    if batch.error_file_id is None:
        raise Conflict(f"batch {batch.id} has no failed requests to retry")
    errors = openai_files.get(session, ctx.tenant.id, batch.error_file_id)
    with ctx.store.open(openai_files.location(errors)) as f:
        failed = {json.loads(line).get("custom_id") for line in f if line.strip()}
    source = openai_files.get(session, ctx.tenant.id, batch.input_file_id)
    target = openai_files.files_prefix(ctx.settings, ctx.tenant).join(
        f"batches/{batch.id}/retry-{openai_files.new_id('')}.jsonl"
    )
    kept = size = 0
    with tempfile.TemporaryDirectory(prefix="barge-retry-") as tmp:
        path = Path(tmp) / "retry.jsonl"
        with ctx.store.open(openai_files.location(source)) as src, path.open("wb") as out:
            for _, raw in bounded_lines(src, ctx.settings.max_record_bytes):
                if raw is None or not raw.strip():
                    continue
                if json.loads(raw).get("custom_id") in failed:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    kept += 1
        size = path.stat().st_size
        ctx.store.put_file(target, path)
    name = f"{batch.id}_retry.jsonl"
    made = openai_files.add_output_file(session, ctx.tenant.id, target, name, size, "batch")
    command = CreateBatch(made.id, batch.endpoint, batch.completion_window, batch.meta)
    new = create(ctx, command)
    new.retry_of = batch.id
    audit.record(ctx, "batch.retry", f"batch:{batch.id}", batch=new.id, requests=kept)
    session.flush()
    return new


def expire_due(uow: UnitOfWork, now: datetime, limit: int = 100) -> int:
    """Expire the batches whose completion window has ended unfinished: their jobs are
    cancelled (what finished is kept; finalize lists the rest as batch_expired)."""
    due = openai_repo.take_due_openai_batches(uow.session, now, limit)
    for batch, job in due:
        batch.expired_at = now
        jobs.request_cancel(
            uow, job, reason=f"batch {batch.id} expired: its completion window ended"
        )
    uow.session.flush()
    return len(due)


def batch_for_job(session: Session, job_id: uuid.UUID) -> OpenAIBatch | None:
    return openai_repo.openai_batch_for_job(session, job_id)


def attach_outputs(
    session: Session,
    job: Job,
    output: tuple[S3Uri, int, int] | None,
    errors: tuple[S3Uri, int, int] | None,
    usage: dict[str, int],
    unrun: int = 0,
) -> None:
    """At finalize: the batch's joined output and error files (uri, bytes, lines) become files
    of its tenant; its token totals (and, if it expired or was cancelled, how many requests it
    left unrun) are kept. Idempotent (a second run changes nothing)."""
    batch = openai_repo.openai_batch_for_job(session, job.id)
    if batch is None or batch.usage is not None:
        return
    if batch.expired_at is not None:
        batch.expired_requests = unrun
    elif unrun:
        batch.cancelled_requests = unrun
    if output is not None and output[2]:
        batch.output_file_id = openai_files.add_output_file(
            session, job.tenant_id, output[0], f"{batch.id}_output.jsonl", output[1]
        ).id
    if errors is not None and errors[2]:
        batch.error_file_id = openai_files.add_output_file(
            session, job.tenant_id, errors[0], f"{batch.id}_error.jsonl", errors[1]
        ).id
    batch.usage = usage
    session.flush()


_STATUS = {
    QUEUED: "validating",
    RUNNING: "in_progress",
    SUCCEEDED: "completed",
    FAILED: "failed",
    CANCELLING: "cancelling",
    CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class BatchView:
    """A batch as OpenAI's client reads it: the row, its job (None when its input failed the
    checks), the job's progress, and what they tell: its OpenAI status and errors."""

    batch: OpenAIBatch
    job: Job | None
    progress: repo.Progress | None
    status: str
    errors: list[dict[str, Any]] | None
    barge: dict[str, Any] | None = None  # the Barge job it runs as and what that used


def present(session: Session, batch: OpenAIBatch) -> BatchView:
    """The batch as OpenAI's client reads it."""
    return present_many(session, [batch])[0]


def present_many(session: Session, batches: list[OpenAIBatch]) -> list[BatchView]:
    job_ids = [b.job_id for b in batches if b.job_id is not None]
    found = {j.id: j for j in (repo.get_job(session, i) for i in job_ids) if j is not None}
    progress = repo.progress_for(session, list(found))
    used = usage.usage_for(session, None, list(found))
    retried = openai_repo.openai_batch_retries(session, [b.id for b in batches])
    out = []
    for b in batches:
        job = found.get(b.job_id) if b.job_id else None
        done = progress.get(b.job_id) if b.job_id else None
        barge = usage.extension(job, used)
        if b.retry_of is not None or b.id in retried:
            barge = {**(barge or {}), "retry_of": b.retry_of, "retries": retried.get(b.id, [])}
        out.append(replace(_view(b, job, done), barge=barge))
    return out


def _view(batch: OpenAIBatch, job: Job | None, progress: repo.Progress | None) -> BatchView:
    status = batch.status or (_STATUS.get(job.status, "in_progress") if job else "failed")
    if (
        job is not None
        and job.status == RUNNING
        and progress is not None
        and job.shards_total
        and progress.shards_done >= job.shards_total
    ):
        status = "finalizing"
    if batch.expired_at is not None and job is not None:
        # Its job was cancelled when the window ended: finalizing until the files are joined;
        # then expired, unless no request was left unrun (the last ones finished meanwhile).
        status = "finalizing"
        if job.status in (CANCELLED, SUCCEEDED, FAILED):
            status = "completed" if batch.expired_requests == 0 else "expired"
    errors = batch.errors
    if errors is None and job is not None and job.status == FAILED:
        errors = [{"code": "batch_failed", "line": None, "message": job.error, "param": None}]
    return BatchView(batch, job, progress, status, errors)


def page(
    session: Session, tenant_id: uuid.UUID, limit: int, after: str | None
) -> openai_files.Page[BatchView]:
    after_row = None
    if after is not None:
        after_row = (
            openai_repo.get_openai_batch(session, tenant_id, after)
            if openai_files.is_id(after)
            else None
        )
        if after_row is None:
            raise BadRequest(f"after: no such batch {excerpt(after)}", field="after")
    rows, more = openai_repo.list_openai_batches(session, tenant_id, limit, after_row)
    return openai_files.Page(present_many(session, rows), more)
