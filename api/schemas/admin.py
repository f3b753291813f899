"""/v1/admin and /v1/audit: the bodies of tenant and key changes with their examples, and
tenants, keys and audit entries as answered."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from barge.jsonvalues import check_json_value
from services.audit import AuditView
from services.tenants import TENANT_NAME_PATTERN, KeyView, TenantView

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


def tenant_out(tenant: TenantView) -> TenantOut:
    return TenantOut.model_validate(tenant, from_attributes=True)


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


def key_out(key: KeyView) -> KeyOut:
    return KeyOut.model_validate(key, from_attributes=True)


def new_key_out(key: KeyView, secret: str) -> NewKeyOut:
    """A key just made, with the key itself (shown this once)."""
    return NewKeyOut(**key_out(key).model_dump(), key=secret)


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


def audit_out(entry: AuditView) -> AuditOut:
    return AuditOut.model_validate(entry, from_attributes=True)
