"""Tenants and their API keys (stored hashed). Repositories flush; only boundaries commit."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ApiKey, Tenant

KEY_PREFIX_CHARS = 10  # "bk_" and 7 random characters: what lists and logs show of a key
ROLES = ("member", "admin")

# --- tenants and keys -------------------------------------------------------------------------


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, tenant_name: str, *, role: str = "member") -> str:
    """Create (or reuse) the tenant and a new key; returns the key, which is stored hashed."""
    tenant = tenant_by_name(session, tenant_name) or add_tenant(session, tenant_name)
    if tenant is None:  # created by someone else meanwhile
        tenant = tenant_by_name(session, tenant_name)
    assert tenant is not None
    return add_api_key(session, tenant, role=role)[1]


def add_api_key(
    session: Session,
    tenant: Tenant,
    *,
    role: str = "member",
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key of ``tenant``: its row and the key itself, which is stored only hashed."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    key = "bk_" + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant_id=tenant.id,
        key_hash=hash_key(key),
        prefix=key[:KEY_PREFIX_CHARS],
        role=role,
        name=name,
        expires_at=expires_at,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    """The tenant of a key that is neither revoked nor expired."""
    found = key_and_tenant(session, key)
    if found is None:
        return None
    row, tenant = found
    now = utcnow()
    if any(t is not None and t <= now for t in (row.revoked_at, row.expires_at)):
        return None
    return tenant


def key_and_tenant(session: Session, key: str) -> tuple[ApiKey, Tenant] | None:
    """The key's row (revoked and expired ones too: the caller says which) and its tenant."""
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key))
    ).first()
    return None if row is None else (row[0], row[1])


def key_by_id(session: Session, key_id: uuid.UUID) -> tuple[ApiKey, Tenant] | None:
    """The key's row by its id (revoked and expired ones too) and its tenant."""
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.id == key_id)
    ).first()
    return None if row is None else (row[0], row[1])


def touch_api_key(session: Session, key_id: uuid.UUID, now: datetime, every: timedelta) -> bool:
    """Set the key's ``last_used_at`` to ``now`` unless it was set less than ``every`` ago (so
    that many requests, in many API processes, write it once); whether it was written."""
    result = session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - every),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def api_keys(session: Session, tenant_id: uuid.UUID | None = None) -> list[tuple[ApiKey, str]]:
    """Keys (all tenants', or one tenant's) with their tenant's name, oldest first."""
    query = select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    query = query.order_by(Tenant.name, ApiKey.created_at, ApiKey.id)
    return [(row[0], row[1]) for row in session.execute(query)]


def api_keys_matching(session: Session, prefix_or_id: str) -> list[ApiKey]:
    """The keys whose id is ``prefix_or_id`` or whose prefix starts with it (locked until the
    transaction ends, so that two revocations or rotations of one key do not interleave)."""
    conditions = []
    with contextlib.suppress(ValueError):
        conditions.append(ApiKey.id == uuid.UUID(prefix_or_id))
    if prefix_or_id.startswith("bk_") and len(prefix_or_id) <= KEY_PREFIX_CHARS:
        escaped = prefix_or_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(ApiKey.prefix.like(escaped + "%", escape="\\"))
    if not conditions:
        return []
    query = select(ApiKey).where(or_(*conditions)).order_by(ApiKey.created_at).limit(10)
    return list(session.scalars(query.with_for_update()))


def revoke_api_key(session: Session, key: ApiKey, at: datetime) -> None:
    """Revoke the key as of ``at`` (a time to come: after a rotation's grace); never later than
    it already was."""
    if key.revoked_at is None or key.revoked_at > at:
        key.revoked_at = at
    session.flush()


def active_key_counts(session: Session, at: datetime) -> dict[uuid.UUID, int]:
    """Keys neither revoked nor expired at ``at``, per tenant."""
    query = (
        select(ApiKey.tenant_id, func.count())
        .where(
            or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > at),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > at),
        )
        .group_by(ApiKey.tenant_id)
    )
    return {row[0]: int(row[1]) for row in session.execute(query)}


# --- tenants ----------------------------------------------------------------------------------


def tenant_by_name(session: Session, name: str, *, lock: bool = False) -> Tenant | None:
    """The tenant named ``name``; with ``lock``, locked until the transaction ends and read
    afresh (not from what the session already held)."""
    query = select(Tenant).where(Tenant.name == name)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalar(query)


def tenant_by_id(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def add_tenant(
    session: Session,
    name: str,
    *,
    read_scopes: list[str] | None = None,
    write_scopes: list[str] | None = None,
    quotas: dict[str, object] | None = None,
) -> Tenant | None:
    """A new tenant, or None if the name is taken (a concurrent create included)."""
    tenant = Tenant(
        name=name,
        read_scopes=read_scopes,
        write_scopes=write_scopes,
        quotas=dict(quotas or {}),
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(tenant)
            session.flush()
    except IntegrityError:
        return None
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


def update_tenant(session: Session, tenant: Tenant, **values: object) -> None:
    """Set the given columns (``read_scopes``, ``write_scopes``, ``quotas``) and stamp
    ``updated_at``."""
    for column, value in values.items():
        setattr(tenant, column, value)
    tenant.updated_at = utcnow()
    session.flush()
