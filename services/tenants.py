"""Tenants, their API keys, and the principal a request acts as.

A key is shown once (when it is created or rotated) and stored hashed; lists, logs, errors and
the audit log show only its prefix (``bk_`` and 7 characters). A key has a role: ``member``
submits and reads its own tenant's work; ``admin`` also manages every tenant, scope, quota and
key, and reads the audit log (an operator's key). A key may expire; a revoked or expired key is
refused from the next request on. ``last_used_at`` is written at most once a minute per key.

Every change made here is audited (``services.audit``) in the caller's transaction, naming the
context's principal: an admin's key, or the local operator through the ``barge`` command.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.orm import Session

from barge.errors import Conflict, Forbidden, InvalidSpec, NotFound, Unauthorized, excerpt
from barge.jsonvalues import unstorable
from db import repositories as repo
from db.base import utcnow
from db.models import ApiKey, Tenant
from services import audit, quotas, scopes
from services.context import ADMIN, Operator, ServiceContext

# Named here too, where callers of the keys and the principal look for them.
from services.context import MEMBER as MEMBER
from services.context import Principal as Principal

ROLES = repo.ROLES
# A tenant name stands for a path segment in the scope templates (s3://barge-data/{tenant}/).
TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
KEY_NAME_CHARS = 200
# last_used_at is written at most this often per key (not once per request).
LAST_USED_EVERY = timedelta(minutes=1)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()  # "leave as it is", where None means "back to the default"


# --- authentication -------------------------------------------------------------------------------


def principal_for_authorization(
    session: Session, authorization: str | None, now: datetime | None = None
) -> Principal:
    """The principal an ``Authorization: Bearer <key>`` header names, or Unauthorized saying
    what is wrong (never echoing the key); notes the key's use (at most once a minute)."""
    if not authorization:
        raise Unauthorized()
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Authorization header must be `Bearer <key>`")
    found = repo.key_and_tenant(session, key) if _findable(key, 1000) else None
    if found is None:
        raise Unauthorized(
            "unknown API key: check that it was copied whole (`barge keys create` makes one)"
        )
    return _principal(session, *found, now or utcnow())


def principal_for_key_id(
    session: Session, key_id: uuid.UUID, now: datetime | None = None
) -> Principal:
    """The principal of the key with this id (the console's session names its key so), with
    the same checks as ``principal_for_authorization``: Unauthorized when it is gone,
    revoked or expired."""
    found = repo.key_by_id(session, key_id)
    if found is None:
        raise Unauthorized("the API key of this session no longer exists; sign in again")
    return _principal(session, *found, now or utcnow())


def _principal(session: Session, row: ApiKey, tenant: Tenant, now: datetime) -> Principal:
    """The key's principal, once it is neither revoked nor expired; notes its use."""
    if row.revoked_at is not None and row.revoked_at <= now:
        raise Unauthorized(
            f"API key {row.prefix}… was revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC; "
            "ask an admin for a new key"
        )
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized(
            f"API key {row.prefix}… expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
            "ask an admin for a new key"
        )
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        repo.touch_api_key(session, row.id, now, LAST_USED_EVERY)
    return Principal(
        tenant=tenant,
        key_id=row.id,
        key_prefix=row.prefix,
        role=ADMIN if row.role == ADMIN else MEMBER,
    )


def tenant_for_authorization(session: Session, authorization: str | None) -> Tenant:
    """The tenant an ``Authorization: Bearer <key>`` header names, or Unauthorized saying what
    to send."""
    return principal_for_authorization(session, authorization).tenant


def require_admin(principal: Principal | Operator) -> Principal | Operator:
    """The principal, if its key is an admin's (or it is the local operator); Forbidden saying
    so otherwise."""
    if not principal.is_admin:
        assert isinstance(principal, Principal)
        raise Forbidden(
            f"this call needs an admin API key; {principal.key_prefix}… is a member key "
            "(an operator makes admin keys: `barge keys create --tenant T --role admin`)"
        )
    return principal


# --- tenants ------------------------------------------------------------------------------------


def _findable(text: str, limit: int = 200) -> bool:
    """Whether ``text`` can be looked up at all (a NUL or lone surrogate never can)."""
    return len(text) <= limit and unstorable(text) is None


def check_tenant_name(name: str, field: str = "name") -> str:
    if not re.fullmatch(TENANT_NAME_PATTERN, name):
        raise InvalidSpec(
            f"{field}: a tenant name is 1 to 128 letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit (it names a folder in storage scopes); got {excerpt(name)}",
            field=field,
        )
    return name


def get_tenant(session: Session, name: str, *, lock: bool = False) -> Tenant:
    tenant = repo.tenant_by_name(session, name, lock=lock) if _findable(name) else None
    if tenant is None:
        raise NotFound(f"no tenant named {excerpt(name)}")
    return tenant


def _checked_overrides(overrides: Mapping[str, object]) -> dict[str, Any]:
    """Quota overrides validated by ``services.quotas`` (a None value: no override)."""
    checked = quotas.check_overrides(dict(overrides))
    return {name: value for name, value in checked.items() if value is not None}


def create_tenant(
    ctx: ServiceContext,
    name: str,
    *,
    read_scopes: list[str] | None = None,
    write_scopes: list[str] | None = None,
    quota_overrides: Mapping[str, object] | None = None,
) -> Tenant:
    """A new tenant; scopes None mean the settings' templates, quotas the settings' defaults."""
    check_tenant_name(name)
    read = None if read_scopes is None else scopes.check_scopes(read_scopes, "read_scopes")
    write = None if write_scopes is None else scopes.check_scopes(write_scopes, "write_scopes")
    overrides = _checked_overrides(quota_overrides or {})
    tenant = repo.add_tenant(
        ctx.session, name, read_scopes=read, write_scopes=write, quotas=overrides
    )
    if tenant is None:
        raise Conflict(f"a tenant named {name!r} exists; change it with `tenants update`")
    audit.record(
        ctx,
        "tenant.create",
        f"tenant:{name}",
        tenant=tenant,
        read_scopes=read,
        write_scopes=write,
        quotas=overrides or None,
    )
    return tenant


def update_tenant(
    ctx: ServiceContext,
    name: str,
    *,
    read_scopes: list[str] | _Unset | None = UNSET,
    write_scopes: list[str] | _Unset | None = UNSET,
    quota_changes: Mapping[str, object | None] | None = None,
) -> Tenant:
    """Change a tenant's scopes (a list replaces them; None goes back to the settings'
    template) and quota overrides (a value sets one, None removes it: back to the default).
    Audited with what changed, from what to what; a change to nothing is no change."""
    tenant = get_tenant(ctx.session, name, lock=True)
    values: dict[str, object] = {}
    changes: dict[str, dict[str, object]] = {}
    for column, given in (("read_scopes", read_scopes), ("write_scopes", write_scopes)):
        if isinstance(given, _Unset):
            continue
        new = None if given is None else scopes.check_scopes(given, column)
        old = getattr(tenant, column)
        if new != old:
            values[column] = new
            changes[column] = {"from": old, "to": new}
    if quota_changes:
        asked = quotas.check_overrides(dict(quota_changes))  # names known, values sound
        old_quotas = dict(tenant.quotas or {})
        merged = {k: v for k, v in old_quotas.items() if asked.get(k, v) is not None}
        merged.update({k: v for k, v in asked.items() if v is not None})
        checked = _checked_overrides(merged)
        if checked != old_quotas:
            values["quotas"] = checked
            changes["quotas"] = {"from": old_quotas, "to": checked}
    if values:
        repo.update_tenant(ctx.session, tenant, **values)
        audit.record(ctx, "tenant.update", f"tenant:{name}", tenant=tenant, **changes)
    return tenant


@dataclass(frozen=True)
class TenantView:
    """A tenant with its effective scopes and quotas, saying which come from the defaults."""

    name: str
    created_at: datetime
    updated_at: datetime | None
    read_scopes: list[str]
    read_scopes_default: bool  # the settings' template
    write_scopes: list[str]
    write_scopes_default: bool
    quotas: dict[str, Any]  # the effective quotas
    quota_overrides: dict[str, Any]  # those set for this tenant
    active_keys: int


def describe_tenant(
    ctx: ServiceContext, tenant: Tenant, active_keys: int | None = None
) -> TenantView:
    """The tenant with its effective scopes and quotas, saying which come from the defaults."""
    if active_keys is None:
        active_keys = repo.active_key_counts(ctx.session, utcnow()).get(tenant.id, 0)
    effective = scopes.scopes_of(tenant, ctx.settings)
    return TenantView(
        name=tenant.name,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
        read_scopes=list(effective.read),
        read_scopes_default=effective.read_from_template,
        write_scopes=list(effective.write),
        write_scopes_default=effective.write_from_template,
        quotas=quotas.effective(tenant, ctx.settings).model_dump(),
        quota_overrides=dict(tenant.quotas or {}),
        active_keys=active_keys,
    )


def describe_tenants(ctx: ServiceContext) -> list[TenantView]:
    counts = repo.active_key_counts(ctx.session, utcnow())
    return [describe_tenant(ctx, t, counts.get(t.id, 0)) for t in repo.list_tenants(ctx.session)]


# --- keys ---------------------------------------------------------------------------------------


def create_key(
    ctx: ServiceContext,
    tenant_name: str,
    *,
    role: str = MEMBER,
    name: str | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """The local operator's ``barge keys create``: a new key for ``tenant_name`` (the tenant is
    created if new); the only time the key is seen."""
    return issue_key(
        ctx,
        tenant_name,
        role=role,
        name=name,
        expires_in=expires_in,
        new_tenant_ok=True,
    )[1]


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidSpec(f"role must be one of {', '.join(ROLES)}", field="role")
    return role


def _check_key_name(name: str | None) -> str | None:
    if name is None:
        return None
    found = unstorable(name)
    if found or len(name) > KEY_NAME_CHARS or not name.strip():
        raise InvalidSpec(
            f"name: a key's name is 1 to {KEY_NAME_CHARS} characters"
            + (f" ({found[1]})" if found else ""),
            field="name",
        )
    return name


def issue_key(
    ctx: ServiceContext,
    tenant_name: str,
    *,
    role: str = MEMBER,
    name: str | None = None,
    expires_in: timedelta | None = None,
    new_tenant_ok: bool = False,
) -> tuple[ApiKey, str]:
    """A new key of ``tenant_name``: its row and the key itself (shown only this once). With
    ``new_tenant_ok`` a tenant not seen before is created (with the default scopes and quotas)."""
    _check_role(role)
    _check_key_name(name)
    tenant = repo.tenant_by_name(ctx.session, tenant_name) if _findable(tenant_name) else None
    if tenant is None and new_tenant_ok:
        tenant = create_tenant(ctx, tenant_name)
    elif tenant is None:
        raise NotFound(f"no tenant named {excerpt(tenant_name)}")
    expires_at = utcnow() + expires_in if expires_in is not None else None
    row, key = repo.add_api_key(ctx.session, tenant, role=role, name=name, expires_at=expires_at)
    audit.record(
        ctx,
        "key.create",
        f"key:{row.prefix}",
        tenant=tenant,
        role=role,
        name=name,
        expires_at=expires_at,
    )
    return row, key


def find_key(session: Session, prefix_or_id: str) -> ApiKey:
    """The one key whose id is ``prefix_or_id`` or whose prefix starts with it."""
    text = prefix_or_id.strip()
    matches = repo.api_keys_matching(session, text) if _findable(text, 64) else []
    if not matches:
        raise NotFound(
            f"no API key {excerpt(prefix_or_id)}: give its prefix (bk_ and 7 characters, as "
            "`keys list` shows) or its id"
        )
    if len(matches) > 1:
        raise Conflict(
            f"{excerpt(prefix_or_id)} matches several keys "
            f"({', '.join(k.prefix for k in matches)}); give the whole prefix or the id"
        )
    return matches[0]


def key_state(key: ApiKey, now: datetime | None = None) -> str:
    """``active``, ``revoked`` or ``expired`` (a key rotated with a grace stays active until
    its ``revoked_at``)."""
    now = now or utcnow()
    if key.revoked_at is not None and key.revoked_at <= now:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


@dataclass(frozen=True)
class KeyView:
    """A key as lists show it: never the key itself, nor its hash."""

    id: str
    prefix: str
    tenant: str
    name: str | None
    role: str
    state: str  # active, revoked or expired
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None  # to the minute
    revoked_at: datetime | None  # when it was revoked, or will be: a rotation's grace


def describe_key(key: ApiKey, tenant_name: str, now: datetime | None = None) -> KeyView:
    """A key as lists show it: never the key itself, nor its hash."""
    return KeyView(
        id=str(key.id),
        prefix=key.prefix,
        tenant=tenant_name,
        name=key.name,
        role=key.role,
        state=key_state(key, now),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


def list_keys(session: Session, tenant_name: str | None = None) -> list[KeyView]:
    """Every tenant's keys (or one tenant's), by tenant, oldest first."""
    tenant_id = get_tenant(session, tenant_name).id if tenant_name is not None else None
    now = utcnow()
    return [describe_key(k, name, now) for k, name in repo.api_keys(session, tenant_id)]


def _tenant_of(session: Session, key: ApiKey) -> Tenant:
    tenant = repo.tenant_by_id(session, key.tenant_id)
    assert tenant is not None  # a key goes with its tenant (ON DELETE CASCADE)
    return tenant


def revoke_key(ctx: ServiceContext, prefix_or_id: str) -> tuple[ApiKey, Tenant]:
    """Revoke the key now: refused from the next request on (a key in a rotation's grace too:
    the grace ends now). Revoking a revoked key changes nothing (its ``revoked_at`` stays)."""
    key = find_key(ctx.session, prefix_or_id)
    tenant = _tenant_of(ctx.session, key)
    if key_state(key) != "revoked":
        repo.revoke_api_key(ctx.session, key, utcnow())
        audit.record(ctx, "key.revoke", f"key:{key.prefix}", tenant=tenant)
    return key, tenant


def rotate_key(
    ctx: ServiceContext,
    prefix_or_id: str,
    *,
    grace: timedelta = timedelta(0),
    expires_in: timedelta | _Unset | None = UNSET,
) -> tuple[ApiKey, ApiKey, str, Tenant]:
    """A new key with the old one's tenant, role, name and lifetime (or ``expires_in``); the
    old key is revoked now, or at the end of the ``grace`` (its ``revoked_at``, a time to come:
    it works until then). Returns (old, new, the new key itself, tenant)."""
    session = ctx.session
    old = find_key(session, prefix_or_id)
    tenant = _tenant_of(session, old)
    now = utcnow()
    state = key_state(old, now)
    if state != "active":
        raise Conflict(
            f"API key {old.prefix} is {state}; only an active key can be rotated (create a new "
            "one with `keys create`)"
        )
    if old.revoked_at is not None:
        raise Conflict(
            f"API key {old.prefix} was rotated already and stops working at "
            f"{old.revoked_at:%Y-%m-%d %H:%M:%S} UTC; rotate the key that replaced it"
        )
    if isinstance(expires_in, _Unset):
        expires_in = old.expires_at - old.created_at if old.expires_at is not None else None
    new, key = repo.add_api_key(
        session,
        tenant,
        role=old.role,
        name=old.name,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    repo.revoke_api_key(session, old, now + grace)
    audit.record(
        ctx,
        "key.rotate",
        f"key:{old.prefix}",
        tenant=tenant,
        new_key=new.prefix,
        role=new.role,
        grace_seconds=grace.total_seconds(),
        old_key_until=min(t for t in (old.revoked_at, old.expires_at) if t is not None),
        expires_at=new.expires_at,
    )
    return old, new, key, tenant
