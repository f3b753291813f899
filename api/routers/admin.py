"""/v1/admin (tenants, their scopes and quotas, API keys) and /v1/audit: for admin keys only
(a member's key gets a 403). Thin handlers; the rules live in services.tenants and
services.audit, and every change is audited in the request's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.deps import AdminPrincipal, SettingsDep, UoW
from api.schemas import errors
from barge.errors import InvalidSpec
from barge.jsonvalues import check_json_value
from db.models import ApiKey
from services import audit
from services import tenants as service
from services.durations import parse_duration
from services.tenants import TENANT_NAME_PATTERN, UNSET

router = APIRouter(prefix="/v1/admin", tags=["admin"])
audit_router = APIRouter(prefix="/v1/audit", tags=["admin"])

# A response that carries a key is not to be kept by any cache.
NO_STORE = {"Cache-Control": "no-store"}

Scope = Annotated[str, Field(max_length=2048)]
ScopeList = Annotated[list[Scope], Field(max_length=50)]
Duration = Annotated[str, Field(max_length=64, description="e.g. 30d, 12h, 90m or 1h30m")]


def _storable(value: Any) -> Any:
    check_json_value(value)
    return value


# --- tenants ------------------------------------------------------------------------------------


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=TENANT_NAME_PATTERN)
    read_scopes: ScopeList | None = Field(
        default=None, description="s3:// prefixes (or *) it may read; null: the settings' template"
    )
    write_scopes: ScopeList | None = Field(
        default=None, description="s3:// prefixes (or *) it may write; null: the settings' template"
    )
    quotas: dict[str, Any] = Field(
        default_factory=dict, description="Quota overrides; the rest are the defaults."
    )

    _check = field_validator("read_scopes", "write_scopes", "quotas")(_storable)


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    read_scopes: ScopeList | None = Field(
        default=None, description="Replaces the read scopes; null: back to the settings' template"
    )
    write_scopes: ScopeList | None = Field(
        default=None, description="Replaces the write scopes; null: back to the settings' template"
    )
    quotas: dict[str, Any] | None = Field(
        default=None, description="Quota overrides to set; a null value removes one (the default)"
    )

    _check = field_validator("read_scopes", "write_scopes", "quotas")(_storable)


TENANT_EXAMPLES = {
    "scoped": {
        "summary": "A tenant with its own scopes and a higher job quota",
        "value": {
            "name": "acme",
            "read_scopes": ["s3://barge/acme/", "s3://barge/shared/"],
            "write_scopes": ["s3://barge/acme/"],
            "quotas": {"max_active_jobs": 20},
        },
    },
    "defaults": {"summary": "The settings' scope templates", "value": {"name": "acme"}},
}
TENANT_PATCH_EXAMPLES = {
    "quota": {
        "summary": "Raise one quota, drop another override",
        "value": {"quotas": {"max_active_jobs": 50, "max_shards_per_job": None}},
    },
    "scopes": {
        "summary": "Back to the template read scopes",
        "value": {"read_scopes": None},
    },
}
KEY_EXAMPLES = {
    "member": {
        "summary": "A member key that expires",
        "value": {"tenant": "acme", "name": "ci", "expires_in": "30d"},
    },
    "admin": {"summary": "An operator's key", "value": {"tenant": "ops", "role": "admin"}},
}
ROTATE_EXAMPLES = {
    "grace": {"summary": "Both keys work for an hour", "value": {"grace": "1h"}},
    "now": {"summary": "The old key stops now", "value": {}},
}


class TenantOut(BaseModel):
    name: str
    created_at: datetime
    updated_at: datetime | None
    read_scopes: list[str]
    read_scopes_default: bool = Field(description="True: the settings' template")
    write_scopes: list[str]
    write_scopes_default: bool = Field(description="True: the settings' template")
    quotas: dict[str, Any] = Field(description="The effective quotas")
    quota_overrides: dict[str, Any] = Field(description="Those set for this tenant")
    active_keys: int


class TenantList(BaseModel):
    tenants: list[TenantOut]


@router.post(
    "/tenants", status_code=201, response_model=TenantOut, responses=errors(403, 409, body=True)
)
def create_tenant(
    body: Annotated[TenantIn, Body(openapi_examples=TENANT_EXAMPLES)],
    uow: UoW,
    principal: AdminPrincipal,
    settings: SettingsDep,
) -> TenantOut:
    """A new tenant, with its own storage scopes or the settings' templates."""
    tenant = service.create_tenant(
        uow.session,
        principal,
        body.name,
        read_scopes=body.read_scopes,
        write_scopes=body.write_scopes,
        quota_overrides=body.quotas,
    )
    return TenantOut(**service.describe_tenant(uow.session, settings, tenant))


@router.get("/tenants", response_model=TenantList, responses=errors(403))
def list_tenants(uow: UoW, _: AdminPrincipal, settings: SettingsDep) -> TenantList:
    """Every tenant with its effective scopes and quotas, by name."""
    return TenantList(
        tenants=[TenantOut(**t) for t in service.describe_tenants(uow.session, settings)]
    )


@router.get("/tenants/{name}", response_model=TenantOut, responses=errors(403, 404))
def show_tenant(name: str, uow: UoW, _: AdminPrincipal, settings: SettingsDep) -> TenantOut:
    """The tenant's effective scopes and quotas, saying which come from the defaults."""
    tenant = service.get_tenant(uow.session, name)
    return TenantOut(**service.describe_tenant(uow.session, settings, tenant))


@router.patch("/tenants/{name}", response_model=TenantOut, responses=errors(403, 404, body=True))
def update_tenant(
    name: str,
    body: Annotated[TenantPatch, Body(openapi_examples=TENANT_PATCH_EXAMPLES)],
    uow: UoW,
    principal: AdminPrincipal,
    settings: SettingsDep,
) -> TenantOut:
    """Change scopes (a list replaces them, null goes back to the template) and quota overrides
    (merged; a null value removes one). Fields left out stay as they are."""
    given = body.model_fields_set
    tenant = service.update_tenant(
        uow.session,
        principal,
        name,
        read_scopes=body.read_scopes if "read_scopes" in given else UNSET,
        write_scopes=body.write_scopes if "write_scopes" in given else UNSET,
        quota_changes=body.quotas,
    )
    return TenantOut(**service.describe_tenant(uow.session, settings, tenant))


# --- keys ---------------------------------------------------------------------------------------


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(..., max_length=200)
    role: Literal["member", "admin"] = "member"
    name: str | None = Field(default=None, min_length=1, max_length=200, description="A label")
    expires_in: Duration | None = Field(default=None, description="e.g. 30d; null: never expires")

    _check = field_validator("tenant", "name")(_storable)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: Duration | None = Field(
        default=None, description="The old key keeps working this long (default: revoked now)"
    )
    expires_in: Duration | None = Field(
        default=None, description="The new key's lifetime (default: the old key's lifetime)"
    )


class KeyOut(BaseModel):
    id: str
    prefix: str
    tenant: str
    name: str | None
    role: str
    state: Literal["active", "revoked", "expired"]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="To the minute")
    revoked_at: datetime | None = Field(
        description="When it was revoked, or will be: at the end of a rotation's grace"
    )


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown this once, stored only hashed")


class RotatedKeyOut(BaseModel):
    key: str = Field(description="The new key itself: shown this once, stored only hashed")
    new: KeyOut
    old: KeyOut


class KeyList(BaseModel):
    keys: list[KeyOut]


def _key(row: ApiKey, tenant_name: str) -> KeyOut:
    return KeyOut(**service.describe_key(row, tenant_name))


@router.post(
    "/keys", status_code=201, response_model=NewKeyOut, responses=errors(403, 404, body=True)
)
def create_key(
    body: Annotated[KeyIn, Body(openapi_examples=KEY_EXAMPLES)],
    uow: UoW,
    principal: AdminPrincipal,
    response: Response,
) -> NewKeyOut:
    """A new key of an existing tenant; the response is the only time the key is seen."""
    expires_in = parse_duration(body.expires_in, "expires_in") if body.expires_in else None
    row, key = service.issue_key(
        uow.session, principal, body.tenant, role=body.role, name=body.name, expires_in=expires_in
    )
    response.headers.update(NO_STORE)
    return NewKeyOut(**service.describe_key(row, body.tenant), key=key)


@router.get("/keys", response_model=KeyList, responses=errors(403, 422))
def list_keys(
    uow: UoW, _: AdminPrincipal, tenant: Annotated[str | None, Query(max_length=200)] = None
) -> KeyList:
    """Every key (or one tenant's): prefix, name, role, state and times; never the key."""
    return KeyList(keys=[KeyOut(**k) for k in service.list_keys(uow.session, tenant)])


@router.post("/keys/{key_ref}/revoke", response_model=KeyOut, responses=errors(403, 404))
def revoke_key(key_ref: str, uow: UoW, principal: AdminPrincipal) -> KeyOut:
    """Revoke a key (by prefix or id): refused from the next request on."""
    row, tenant = service.revoke_key(uow.session, principal, key_ref)
    return _key(row, tenant.name)


@router.post(
    "/keys/{key_ref}/rotate",
    status_code=201,
    response_model=RotatedKeyOut,
    responses=errors(403, 404, 409, body=True),
)
def rotate_key(
    key_ref: str,
    uow: UoW,
    principal: AdminPrincipal,
    response: Response,
    body: Annotated[RotateIn | None, Body(openapi_examples=ROTATE_EXAMPLES)] = None,
) -> RotatedKeyOut:
    """A new key with the old one's tenant, role and name; the old one is revoked now, or
    expires after `grace`."""
    body = body or RotateIn()
    grace = parse_duration(body.grace, "grace", allow_zero=True) if body.grace else None
    expires_in = parse_duration(body.expires_in, "expires_in") if body.expires_in else UNSET
    old, new, key, tenant = service.rotate_key(
        uow.session,
        principal,
        key_ref,
        **({"grace": grace} if grace is not None else {}),
        expires_in=expires_in,
    )
    response.headers.update(NO_STORE)
    return RotatedKeyOut(key=key, new=_key(new, tenant.name), old=_key(old, tenant.name))


# --- the audit log --------------------------------------------------------------------------------


class AuditOut(BaseModel):
    id: int
    at: datetime
    tenant: str = Field(description="The tenant concerned")
    key_prefix: str | None = Field(description="The acting key's prefix; null: the local CLI")
    action: str
    target: str
    data: dict[str, Any]


class AuditList(BaseModel):
    entries: list[AuditOut]
    next_cursor: str | None


BIGINT_MAX = 2**63 - 1


@audit_router.get("", response_model=AuditList, responses=errors(403, 422))
def list_audit(
    uow: UoW,
    _: AdminPrincipal,
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
        uow.session,
        tenant=audit.check_filter(tenant, "tenant"),
        action=audit.check_filter(action, "action"),
        key_prefix=audit.check_filter(key_prefix, "key_prefix"),
        since=audit.parse_since(since) if since is not None else None,
        before_id=before_id,
        limit=limit + 1,
    )
    page = found[:limit]
    return AuditList(
        entries=[AuditOut(**audit.present(e)) for e in page],
        next_cursor=str(page[-1].id) if len(found) > limit else None,
    )
