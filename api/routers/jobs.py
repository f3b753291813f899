"""/v1/jobs: thin handlers; the rules live in services.submission and services.jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import Context, CurrentTenant, SettingsDep, UoW
from api.schemas.errors import errors
from api.schemas.jobs import (
    JOB_EXAMPLES,
    RETRY_EXAMPLES,
    DryRunOut,
    EventList,
    EventOut,
    JobBody,
    JobFileList,
    JobFileOut,
    JobList,
    JobOut,
    RetryBody,
    ShardList,
    ShardOut,
    job_out,
)
from api.waits import MAX_WAIT_SECONDS, JobWaits
from barge.errors import InvalidSpec, NotFound, excerpt
from barge.specs import JOB_TYPES
from barge.status import FINAL, JOB_STATUSES
from barge.storage import ObjectInfo, ObjectStore
from db import repositories as repo
from db.models import Job, Tenant
from services import estimates, job_files, retries, submission
from services import jobs as service
from services.context import ServiceContext

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

BIGINT_MAX = 2**63 - 1  # event ids are Postgres bigints
CHUNK = 1 << 20  # bytes per read of a streamed file
# What a file is served as, by its name's ending.
MEDIA_TYPES = {".jsonl": "application/x-ndjson", ".json": "application/json"}


def _job(session: Session, tenant: Tenant, job_id: str) -> Job:
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {excerpt(job_id)}") from None
    job = repo.get_job(session, parsed, tenant.id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {
            "model": JobOut | DryRunOut,
            "description": "The job an `Idempotency-Key` made before; or, with `dry_run`, "
            "what the job would be (no job is created)",
        },
        **errors(403, 409, 429, 502, body=True),
    },
)
def create_job(
    spec: Annotated[JobBody, Body(openapi_examples=JOB_EXAMPLES)],
    ctx: Context,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    dry_run: Annotated[bool, Query(description="Check and estimate; create nothing")] = False,
) -> Any:
    """Submit an inference job or (`"type": "finetune"`) a fine-tune. The same `Idempotency-Key`
    from the same tenant returns the same job. With `dry_run=true` nothing is created: the
    spec passes every check a submission does, and the answer says its records, tokens,
    shards and an estimated duration and device-hours (null for a model never run here)."""
    if dry_run:
        answer = DryRunOut.model_validate(estimates.dry_run(ctx, spec))
        return JSONResponse(answer.model_dump(mode="json"), status_code=200)
    job, created = submission.submit(ctx, submission.SubmitJob(spec, idempotency_key))
    if not created:
        response.status_code = 200
    return job_out(service.present_many(ctx.session, [job], ctx.settings)[0])


@router.get("", response_model=JobList, responses=errors(422))
def list_jobs(
    uow: UoW,
    tenant: CurrentTenant,
    settings: SettingsDep,
    status: Annotated[
        str | None, Query(json_schema_extra={"enum": list(JOB_STATUSES)}, max_length=64)
    ] = None,
    type: Annotated[
        str | None, Query(json_schema_extra={"enum": list(JOB_TYPES)}, max_length=64)
    ] = None,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    """The tenant's jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    if status is not None and status not in JOB_STATUSES:
        raise InvalidSpec(f"status must be one of {', '.join(JOB_STATUSES)}", field="status")
    if type is not None and type not in JOB_TYPES:
        raise InvalidSpec(f"type must be one of {', '.join(JOB_TYPES)}", field="type")
    try:
        decoded = repo.decode_cursor(cursor) if cursor else None
    except ValueError:
        raise InvalidSpec("cursor is not one this API returned", field="cursor") from None
    jobs = repo.list_jobs(
        uow.session, tenant.id, status=status, type_=type, cursor=decoded, limit=limit + 1
    )
    page = jobs[:limit]
    return JobList(
        jobs=[job_out(j) for j in service.present_many(uow.session, page, settings)],
        next_cursor=repo.encode_cursor(page[-1]) if len(jobs) > limit else None,
    )


@router.get("/{job_id}", response_model=JobOut, responses=errors(404, 422))
async def get_job(
    job_id: str,
    ctx: Context,
    request: Request,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            allow_inf_nan=False,
            description="Hold the answer until the job is final, at most this many seconds "
            f"(0 to {MAX_WAIT_SECONDS:g}; 0, the default, answers at once). The answer is the "
            "job as it is then: final, or still running when the wait ran out.",
        ),
    ] = 0,
) -> JobOut:
    """The job: status, progress with rate and ETA, outputs, what it waits for, and what its
    attempts used (`resources`: device seconds, tokens, energy, cost). With `wait`, the answer
    comes as soon as the job ends (on Postgres, as its final state commits), instead of polling."""
    job = await run_in_threadpool(_job, ctx.session, ctx.tenant, job_id)
    if wait > 0 and job.status not in FINAL:
        waited = job.id  # read before the rollback expires the row: touching it would load it
        await run_in_threadpool(ctx.session.rollback)  # no connection held while it waits
        waits: JobWaits = request.app.state.job_waits
        await waits.until_final(waited, wait)
    return await run_in_threadpool(_present, ctx, job)  # the row read again, as it is now


def _present(ctx: ServiceContext, job: Job) -> JobOut:
    return job_out(service.present_many(ctx.session, [job], ctx.settings)[0])


@router.post("/{job_id}/cancel", response_model=JobOut, responses=errors(404, 409))
def cancel_job(job_id: str, ctx: Context) -> JobOut:
    """Cancel: running shards stop within one batch; what was written stays and is listed."""
    job = service.cancel(ctx, _job(ctx.session, ctx.tenant, job_id))
    return job_out(service.present_many(ctx.session, [job], ctx.settings)[0])


@router.post(
    "/{job_id}/retry", status_code=201, response_model=JobOut, responses=errors(404, 409, 422)
)
def retry_job(
    job_id: str,
    ctx: Context,
    body: Annotated[RetryBody | None, Body(openapi_examples=RETRY_EXAMPLES)] = None,
) -> JobOut:
    """Retry only what failed: a new job (a child of this one, writing under its output's
    `retry-N/`) over exactly the records this job (or its newest retry) did not finish: its
    errors files' records and those of shards that never succeeded. The body changes the spec
    (`batch_size`, `model`, ...); the rest stays."""
    overrides = body.model_dump(exclude_none=True) if body is not None else {}
    job = _job(ctx.session, ctx.tenant, job_id)
    child = retries.retry(ctx, retries.RetryJob(job, overrides))
    return job_out(service.present_many(ctx.session, [child], ctx.settings)[0])


@router.post("/{job_id}/pause", response_model=JobOut, responses=errors(404, 409))
def pause_job(job_id: str, ctx: Context) -> JobOut:
    """Pause a running job: no new shard is claimed, running shards finish (a fine-tune
    checkpoints and frees its worker); then it is `paused`. It stays active for quotas."""
    job = service.pause(ctx, _job(ctx.session, ctx.tenant, job_id))
    return job_out(service.present_many(ctx.session, [job], ctx.settings)[0])


@router.post("/{job_id}/resume", response_model=JobOut, responses=errors(404, 409))
def resume_job(job_id: str, ctx: Context) -> JobOut:
    """Resume a pausing or paused job: its pending shards are sent again (a fine-tune goes on
    from the checkpoint its pause took)."""
    job = service.resume(ctx, _job(ctx.session, ctx.tenant, job_id))
    return job_out(service.present_many(ctx.session, [job], ctx.settings)[0])


@router.get("/{job_id}/events", response_model=EventList, responses=errors(404, 422))
def job_events(
    job_id: str,
    uow: UoW,
    tenant: CurrentTenant,
    after: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> EventList:
    """The job's events in order; pass `next_after` back as `after` to follow along."""
    job = _job(uow.session, tenant, job_id)
    events = repo.list_events(uow.session, job.id, after, limit)
    return EventList(
        events=[EventOut.model_validate(e) for e in events],
        next_after=events[-1].id if events else after,
    )


@router.get("/{job_id}/shards", response_model=ShardList, responses=errors(404))
def job_shards(job_id: str, uow: UoW, tenant: CurrentTenant, settings: SettingsDep) -> ShardList:
    """Each shard's status, attempts, worker (by its label) and last error."""
    job = _job(uow.session, tenant, job_id)
    shards = service.shards_view(uow.session, settings, job)
    return ShardList(shards=[ShardOut.model_validate(s) for s in shards])


@router.get("/{job_id}/files", response_model=JobFileList, responses=errors(403, 404, 502))
def job_file_list(job_id: str, ctx: Context) -> JobFileList:
    """Every file under the job's output prefix: its parts (results, in input order), its
    errors files (failed records), its manifest and the rest. Read one with
    `GET /v1/jobs/{job_id}/files/{name}`."""
    job = _job(ctx.session, ctx.tenant, job_id)
    files = job_files.list_files(ctx, job)
    return JobFileList(output=job.output_uri, files=[JobFileOut.model_validate(f) for f in files])


def _chunks(store: ObjectStore, info: ObjectInfo) -> Iterator[bytes]:
    with store.open(info.uri) as f:
        while chunk := f.read(CHUNK):
            yield chunk


@router.get(
    "/{job_id}/files/{name:path}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file, streamed"},
        **errors(403, 404, 422, 502),
    },
)
def job_file(job_id: str, name: str, ctx: Context) -> StreamingResponse:
    """One file of the job (`name` as the list gives it, e.g. `errors/part-00000.jsonl`),
    streamed as it is stored."""
    job = _job(ctx.session, ctx.tenant, job_id)
    info = job_files.find_file(ctx, job, name)
    suffix = name[name.rfind(".") :] if "." in name else ""
    return StreamingResponse(
        _chunks(ctx.store, info),
        media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
        headers={"Content-Length": str(info.size)},
    )
