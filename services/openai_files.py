"""Files of the OpenAI-compatible surface: where a tenant's uploads go, their rows, pages of
the surface's lists (``Page``), and batch outputs registered as files.

An upload lands under the tenant's ``BARGE_OPENAI_FILES_PREFIX`` (``{tenant}`` is its name),
which must lie inside its write scopes. Another tenant's file is a 404, never a 403.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from barge.errors import BargeError, Forbidden, NotFound, excerpt
from barge.jsonvalues import unstorable
from barge.settings import Settings
from barge.storage import S3Uri
from db.base import utcnow
from db.models import OpenAIFile, Tenant
from db.repositories import openai as openai_repo
from services import audit, quotas, scopes
from services.context import ServiceContext

PURPOSES = ("batch", "fine-tune")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the ids this surface hands out
OUTPUT_PURPOSE = "batch_output"
RESULTS_PURPOSE = "fine-tune-results"
MAX_FILENAME_CHARS = 512
MAX_METADATA_KEYS = 16
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of one of the surface's lists: its items, and whether more follow."""

    items: list[T]
    has_more: bool


class BadRequest(BargeError):
    """The request is invalid."""

    status_code = 400
    code = "invalid_request"


class FileTooLarge(BargeError):
    """The file is too large."""

    status_code = 413
    code = "file_too_large"


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def files_prefix(settings: Settings, tenant: Tenant) -> S3Uri:
    """The tenant's files prefix, which must lie inside its write scopes (Forbidden if not)."""
    rendered = scopes.render([settings.openai_files_prefix], tenant.name)
    if not rendered or rendered[0] == scopes.ANY:
        raise Forbidden(
            "this tenant has no usable files location (BARGE_OPENAI_FILES_PREFIX)", field="file"
        )
    prefix = rendered[0]
    scopes.require_write(scopes.scopes_of(tenant, settings), prefix, "file")
    return S3Uri.parse(prefix).as_prefix()


def check_purpose(purpose: str | None) -> str:
    if purpose not in PURPOSES:
        raise BadRequest(
            f"purpose must be one of {', '.join(PURPOSES)}, got {excerpt(purpose)}",
            field="purpose",
        )
    return purpose


def too_large(settings: Settings) -> FileTooLarge:
    return FileTooLarge(
        f"the file is larger than {settings.openai_max_file_bytes} bytes "
        "(BARGE_OPENAI_MAX_FILE_BYTES); split it into smaller files",
        field="file",
    )


@dataclass(frozen=True)
class UploadFile:
    """An uploaded file, spooled at ``path``: the name it was sent with and its purpose."""

    filename: str
    purpose: str
    path: Path


def store_upload(ctx: ServiceContext, upload: UploadFile) -> OpenAIFile:
    """Put the uploaded file under the tenant's prefix and add (and audit) its row."""
    settings, tenant = ctx.settings, ctx.tenant
    purpose = check_purpose(upload.purpose)
    size = upload.path.stat().st_size
    if size > settings.openai_max_file_bytes:
        raise too_large(settings)
    quotas.check_openai_upload(ctx.session, settings, tenant, size)  # 429 naming the quota
    file_id = new_id("file-")
    uri = files_prefix(settings, tenant).join(f"{file_id}.jsonl")
    ctx.store.put_file(uri, upload.path)
    row = openai_repo.add_openai_file(
        ctx.session,
        OpenAIFile(
            id=file_id,
            tenant_id=tenant.id,
            purpose=purpose,
            filename=clean_filename(upload.filename),
            bytes=size,
            uri=str(uri),
            created_at=utcnow(),
        ),
    )
    audit.record(ctx, "file.upload", f"file:{file_id}", purpose=purpose, bytes=size)
    return row


def add_output_file(
    session: Session,
    tenant_id: uuid.UUID,
    uri: S3Uri,
    filename: str,
    size: int,
    purpose: str = OUTPUT_PURPOSE,
) -> OpenAIFile:
    """A file Barge wrote at ``uri`` (a batch's output or error file, a fine-tuning job's
    results) as a file of the tenant."""
    return openai_repo.add_openai_file(
        session,
        OpenAIFile(
            id=new_id("file-"),
            tenant_id=tenant_id,
            purpose=purpose,
            filename=filename,
            bytes=size,
            uri=str(uri),
            created_at=utcnow(),
        ),
    )


def is_id(value: str) -> bool:
    """Whether ``value`` could be an id of ours (anything else is never looked up)."""
    return bool(_ID.match(value))


def clean_filename(name: str) -> str:
    """The name as given, without control characters, cut to MAX_FILENAME_CHARS."""
    kept = "".join(c for c in name if c.isprintable())
    return kept[:MAX_FILENAME_CHARS] or "upload.jsonl"


def get(session: Session, tenant_id: uuid.UUID, file_id: str) -> OpenAIFile:
    row = openai_repo.get_openai_file(session, tenant_id, file_id) if is_id(file_id) else None
    if row is None:
        raise NotFound(f"no such file: {excerpt(file_id)}", field="file_id")
    return row


def location(row: OpenAIFile) -> S3Uri:
    """Where the file's object lies (its row holds the URI Barge wrote it at)."""
    return S3Uri.parse(row.uri)


def delete(ctx: ServiceContext, file_id: str) -> str:
    """Delete the tenant's file and its object."""
    row = get(ctx.session, ctx.tenant.id, file_id)
    ctx.store.delete(location(row))
    openai_repo.delete_openai_file(ctx.session, row)
    audit.record(ctx, "file.delete", f"file:{file_id}", purpose=row.purpose)
    return file_id


def page(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    after: str | None,
    purpose: str | None = None,
) -> Page[OpenAIFile]:
    """A page of the tenant's files, newest first (``after``: the last of the previous page)."""
    after_row = None
    if after is not None:
        after_row = openai_repo.get_openai_file(session, tenant_id, after) if is_id(after) else None
        if after_row is None:
            raise BadRequest(f"after: no such file {excerpt(after)}", field="after")
    rows, more = openai_repo.list_openai_files(session, tenant_id, limit, after_row, purpose)
    return Page(rows, more)


def check_text(name: str, value: str) -> str:
    """A query parameter's or a form field's ``value``, refused (naming ``name``) when
    Postgres could not store it or its name: a NUL or a lone surrogate. Every query parameter
    and form field of the surface passes here; what a JSON body holds is checked where it is
    read (``check_metadata``, a batch line's model)."""
    for text in (name, value):
        found = unstorable(text)
        if found is not None:
            raise BadRequest(f"{excerpt(name)}: {found[1]}", field=name)
    return value


def check_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's ``metadata``: at most 16 string keys (64 characters) to strings (512)."""
    if value is not None and (
        not isinstance(value, dict)
        or unstorable(value) is not None
        or len(value) > MAX_METADATA_KEYS
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in value.items()
        )
    ):
        raise BadRequest(
            "metadata must map at most 16 keys (64 characters) to strings (512 characters)",
            field="metadata",
        )
    return value
