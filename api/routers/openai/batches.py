"""/openai/v1/batches: thin handlers; the rules live in services.openai_batches."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import Context, CurrentTenant, UoW
from api.schemas.openai_batches import BatchCreate, batch_object
from api.schemas.openai_common import page_of
from services import openai_batches as service

router = APIRouter(prefix="/batches", tags=["openai batches"])


@router.post("", summary="Create a batch over an uploaded file")
def create_batch(body: BatchCreate, ctx: Context) -> dict[str, Any]:
    command = service.CreateBatch(
        body.input_file_id, body.endpoint, body.completion_window, body.metadata
    )
    return batch_object(service.present(ctx.session, service.create(ctx, command)))


@router.get("", summary="List batches, newest first")
def list_batches(
    tenant: CurrentTenant,
    uow: UoW,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return page_of(service.page(uow.session, tenant.id, limit, after), batch_object)


@router.get("/{batch_id}", summary="A batch")
def get_batch(batch_id: str, tenant: CurrentTenant, uow: UoW) -> dict[str, Any]:
    return batch_object(service.present(uow.session, service.get(uow.session, tenant.id, batch_id)))


@router.post("/{batch_id}/cancel", summary="Cancel a batch (what finished is kept)")
def cancel_batch(batch_id: str, ctx: Context) -> dict[str, Any]:
    return batch_object(service.present(ctx.session, service.cancel(ctx, batch_id)))


@router.post(
    "/{batch_id}/retry",
    summary="Barge's extension: a new batch over a finished batch's failed requests",
)
def retry_batch(batch_id: str, ctx: Context) -> dict[str, Any]:
    """The requests with a line in the batch's error file (failed, expired or cancelled) run
    again as a new batch; its `barge.retry_of` names this one, and this one's
    `barge.retries` names it."""
    return batch_object(service.present(ctx.session, service.retry(ctx, batch_id)))
