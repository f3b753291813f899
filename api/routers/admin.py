"""/v1/admin (tenants, their scopes and quotas, API keys) and /v1/audit: for admin keys only
(a member's key gets a 403). Thin handlers; the rules live in services.tenants and
services.audit, and every change is audited by the service that makes it, in the request's
transaction."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from api.deps import AdminContext
from api.schemas.admin import (
    KEY_EXAMPLES,
    ROTATE_EXAMPLES,
    TENANT_EXAMPLES,
    TENANT_PATCH_EXAMPLES,
    AuditList,
    KeyIn,
    KeyList,
    KeyOut,
    NewKeyOut,
    RotatedKeyOut,
    RotateIn,
    TenantIn,
    TenantList,
    TenantOut,
    TenantPatch,
    audit_out,
    key_out,
    new_key_out,
    tenant_out,
)
from api.schemas.errors import errors
from barge.errors import InvalidSpec
from services import audit
from services import tenants as service
from services.durations import parse_duration
from services.tenants import UNSET

router = APIRouter(prefix="/v1/admin", tags=["admin"])
audit_router = APIRouter(prefix="/v1/audit", tags=["admin"])

# A response that carries a key is not to be kept by any cache.
NO_STORE = {"Cache-Control": "no-store"}


# --- tenants ------------------------------------------------------------------------------------


@router.post(
    "/tenants", status_code=201, response_model=TenantOut, responses=errors(403, 409, body=True)
)
def create_tenant(
    body: Annotated[TenantIn, Body(openapi_examples=TENANT_EXAMPLES)], ctx: AdminContext
) -> TenantOut:
    """A new tenant, with its own storage scopes or the settings' templates."""
    tenant = service.create_tenant(
        ctx,
        body.name,
        read_scopes=body.read_scopes,
        write_scopes=body.write_scopes,
        quota_overrides=body.quotas,
    )
    return tenant_out(service.describe_tenant(ctx, tenant))


@router.get("/tenants", response_model=TenantList, responses=errors(403))
def list_tenants(ctx: AdminContext) -> TenantList:
    """Every tenant with its effective scopes and quotas, by name."""
    return TenantList(tenants=[tenant_out(t) for t in service.describe_tenants(ctx)])


@router.get("/tenants/{name}", response_model=TenantOut, responses=errors(403, 404))
def show_tenant(name: str, ctx: AdminContext) -> TenantOut:
    """The tenant's effective scopes and quotas, saying which come from the defaults."""
    return tenant_out(service.describe_tenant(ctx, service.get_tenant(ctx.session, name)))


@router.patch("/tenants/{name}", response_model=TenantOut, responses=errors(403, 404, body=True))
def update_tenant(
    name: str,
    body: Annotated[TenantPatch, Body(openapi_examples=TENANT_PATCH_EXAMPLES)],
    ctx: AdminContext,
) -> TenantOut:
    """Change scopes (a list replaces them, null goes back to the template) and quota overrides
    (merged; a null value removes one). Fields left out stay as they are."""
    given = body.model_fields_set
    tenant = service.update_tenant(
        ctx,
        name,
        read_scopes=body.read_scopes if "read_scopes" in given else UNSET,
        write_scopes=body.write_scopes if "write_scopes" in given else UNSET,
        quota_changes=body.quotas,
    )
    return tenant_out(service.describe_tenant(ctx, tenant))


# --- keys ---------------------------------------------------------------------------------------


@router.post(
    "/keys", status_code=201, response_model=NewKeyOut, responses=errors(403, 404, body=True)
)
def create_key(
    body: Annotated[KeyIn, Body(openapi_examples=KEY_EXAMPLES)],
    ctx: AdminContext,
    response: Response,
) -> NewKeyOut:
    """A new key of an existing tenant; the response is the only time the key is seen."""
    expires_in = parse_duration(body.expires_in, "expires_in") if body.expires_in else None
    row, key = service.issue_key(
        ctx, body.tenant, role=body.role, name=body.name, expires_in=expires_in
    )
    response.headers.update(NO_STORE)
    return new_key_out(service.describe_key(row, body.tenant), key)


@router.get("/keys", response_model=KeyList, responses=errors(403, 422))
def list_keys(
    ctx: AdminContext, tenant: Annotated[str | None, Query(max_length=200)] = None
) -> KeyList:
    """Every key (or one tenant's): prefix, name, role, state and times; never the key."""
    return KeyList(keys=[key_out(k) for k in service.list_keys(ctx.session, tenant)])


@router.post("/keys/{key_ref}/revoke", response_model=KeyOut, responses=errors(403, 404))
def revoke_key(key_ref: str, ctx: AdminContext) -> KeyOut:
    """Revoke a key (by prefix or id): refused from the next request on."""
    row, tenant = service.revoke_key(ctx, key_ref)
    return key_out(service.describe_key(row, tenant.name))


@router.post(
    "/keys/{key_ref}/rotate",
    status_code=201,
    response_model=RotatedKeyOut,
    responses=errors(403, 404, 409, body=True),
)
def rotate_key(
    key_ref: str,
    ctx: AdminContext,
    response: Response,
    body: Annotated[RotateIn | None, Body(openapi_examples=ROTATE_EXAMPLES)] = None,
) -> RotatedKeyOut:
    """A new key with the old one's tenant, role and name; the old one is revoked now, or
    expires after `grace`."""
    body = body or RotateIn()
    grace = parse_duration(body.grace, "grace", allow_zero=True) if body.grace else None
    expires_in = parse_duration(body.expires_in, "expires_in") if body.expires_in else UNSET
    old, new, key, tenant = service.rotate_key(
        ctx,
        key_ref,
        **({"grace": grace} if grace is not None else {}),
        expires_in=expires_in,
    )
    response.headers.update(NO_STORE)
    return RotatedKeyOut(
        key=key,
        new=key_out(service.describe_key(new, tenant.name)),
        old=key_out(service.describe_key(old, tenant.name)),
    )


# --- the audit log --------------------------------------------------------------------------------


BIGINT_MAX = 2**63 - 1


@audit_router.get("", response_model=AuditList, responses=errors(403, 422))
def list_audit(
    ctx: AdminContext,
    tenant: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="e.g. key.revoke, or key. for all key.*")
    ] = None,
    key_prefix: Annotated[str | None, Query(max_length=16)] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="an ISO 8601 time, or a duration ago (1h)")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditList:
    """The audit log, newest first; pass `next_cursor` back as `cursor` for the next page."""
    try:
        before_id = int(cursor) if cursor is not None else None
    except ValueError:
        before_id = None
    if cursor is not None and (before_id is None or not 0 < before_id <= BIGINT_MAX):
        raise InvalidSpec("cursor is not one this API returned", field="cursor")
    found = audit.entries(
        ctx.session,
        tenant=audit.check_filter(tenant, "tenant"),
        action=audit.check_filter(action, "action"),
        key_prefix=audit.check_filter(key_prefix, "key_prefix"),
        since=audit.parse_since(since) if since is not None else None,
        before_id=before_id,
        limit=limit + 1,
    )
    page = found[:limit]
    return AuditList(
        entries=[audit_out(audit.present(e)) for e in page],
        next_cursor=str(page[-1].id) if len(found) > limit else None,
    )
