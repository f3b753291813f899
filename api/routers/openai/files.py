"""/openai/v1/files: thin handlers; the rules live in services.openai_files."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import Context, CurrentTenant, StoreDep, UoW
from api.routers.openai.upload import TooLarge, read_upload
from api.schemas.openai_common import page_of
from api.schemas.openai_files import UPLOAD_BODY, deleted_file, file_object
from barge.storage import ObjectStore, S3Uri
from services import openai_files as service

router = APIRouter(prefix="/files", tags=["openai files"])

CHUNK = 1 << 20


@router.post("", summary="Upload a file (multipart: file, purpose)", openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request, ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    spool_dir = settings.resolved_cache_dir / "uploads"
    try:
        upload = await read_upload(request, spool_dir, settings.openai_max_file_bytes)
    except TooLarge:
        raise service.too_large(settings) from None
    if upload.path is None:
        raise service.BadRequest("the upload has no 'file' part", field="file")
    try:
        purpose = service.check_purpose(upload.fields.get("purpose"))
        command = service.UploadFile(upload.filename, purpose, upload.path)
        row = await anyio.to_thread.run_sync(partial(service.store_upload, ctx, command))
    finally:
        upload.path.unlink(missing_ok=True)
    return file_object(row)


@router.get("", summary="List files, newest first")
def list_files(
    tenant: CurrentTenant,
    uow: UoW,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return page_of(service.page(uow.session, tenant.id, limit, after, purpose), file_object)


@router.get("/{file_id}", summary="A file")
def get_file(file_id: str, tenant: CurrentTenant, uow: UoW) -> dict[str, Any]:
    return file_object(service.get(uow.session, tenant.id, file_id))


def _chunks(store: ObjectStore, uri: S3Uri) -> Iterator[bytes]:
    with store.open(uri) as f:
        while chunk := f.read(CHUNK):
            yield chunk


@router.get("/{file_id}/content", summary="A file's content (streamed)")
def file_content(
    file_id: str, tenant: CurrentTenant, uow: UoW, store: StoreDep
) -> StreamingResponse:
    row = service.get(uow.session, tenant.id, file_id)
    return StreamingResponse(
        _chunks(store, service.location(row)),
        media_type="application/octet-stream",
        headers={"Content-Length": str(row.bytes)},
    )


@router.delete("/{file_id}", summary="Delete a file and its object")
def delete_file(file_id: str, ctx: Context) -> dict[str, Any]:
    return deleted_file(service.delete(ctx, file_id))
