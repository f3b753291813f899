"""/openai/v1/fine_tuning/jobs: thin handlers; the rules live in services.openai_fine_tuning."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import Context, CurrentTenant, UoW
from api.schemas.openai_common import page_of
from api.schemas.openai_fine_tuning import (
    METADATA_FILTER,
    METADATA_KEY,
    FineTuningJobCreate,
    fine_tuning_checkpoint,
    fine_tuning_event,
    fine_tuning_job,
)
from services import openai_fine_tuning as service

router = APIRouter(prefix="/fine_tuning/jobs", tags=["openai fine-tuning"])


@router.post("", summary="Create a fine-tuning job over uploaded fine-tune files")
def create_job(body: FineTuningJobCreate, ctx: Context) -> dict[str, Any]:
    row = service.create(ctx, service.CreateFineTuningJob(**body.model_dump()))
    return fine_tuning_job(service.present(ctx.session, row))


@router.get(
    "",
    summary="List fine-tuning jobs, newest first (metadata[KEY]=VALUE filters)",
    openapi_extra=METADATA_FILTER,
)
def list_jobs(
    request: Request,
    tenant: CurrentTenant,
    uow: UoW,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    metadata = {}
    for key, value in request.query_params.multi_items():
        found = METADATA_KEY.match(key)
        if found:
            metadata[found.group(1)] = value
    jobs = service.page(uow.session, tenant.id, limit, after, metadata or None)
    return page_of(jobs, fine_tuning_job)


@router.get("/{job_id}", summary="A fine-tuning job")
def get_job(job_id: str, tenant: CurrentTenant, uow: UoW) -> dict[str, Any]:
    return fine_tuning_job(
        service.present(uow.session, service.get(uow.session, tenant.id, job_id))
    )


@router.post("/{job_id}/cancel", summary="Cancel a fine-tuning job")
def cancel_job(job_id: str, ctx: Context) -> dict[str, Any]:
    return fine_tuning_job(service.present(ctx.session, service.cancel(ctx, job_id)))


@router.post("/{job_id}/pause", summary="Pause a fine-tuning job")
def pause_job(job_id: str, ctx: Context) -> dict[str, Any]:
    """It checkpoints at its next step and frees its worker: `pausing`, then `paused`."""
    return fine_tuning_job(service.present(ctx.session, service.pause(ctx, job_id)))


@router.post("/{job_id}/resume", summary="Resume a paused fine-tuning job")
def resume_job(job_id: str, ctx: Context) -> dict[str, Any]:
    """It goes on from the checkpoint its pause took, to the weights it would have reached."""
    return fine_tuning_job(service.present(ctx.session, service.resume(ctx, job_id)))


@router.get("/{job_id}/events", summary="A fine-tuning job's events, newest first")
def list_events(
    job_id: str,
    tenant: CurrentTenant,
    uow: UoW,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return page_of(service.events(uow.session, tenant.id, job_id, limit, after), fine_tuning_event)


@router.get("/{job_id}/checkpoints", summary="A fine-tuning job's checkpoints, one per epoch")
def list_checkpoints(
    job_id: str,
    tenant: CurrentTenant,
    uow: UoW,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    found = service.checkpoints(uow.session, tenant.id, job_id, limit, after)
    return page_of(found, fine_tuning_checkpoint)
