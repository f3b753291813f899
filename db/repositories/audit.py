"""The audit log: append-only. Rows are added and read here, never updated or deleted.
Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import AuditEntry


def add_audit_entry(
    session: Session,
    *,
    tenant_id: uuid.UUID | None,
    tenant_name: str,
    key_prefix: str | None,
    action: str,
    target: str,
    data: dict[str, Any],
) -> AuditEntry:
    entry = AuditEntry(
        at=utcnow(),
        tenant_id=tenant_id,
        tenant_name=tenant_name,
        key_prefix=key_prefix,
        action=action,
        target=target,
        data=data,
    )
    session.add(entry)
    session.flush()
    return entry


def audit_entries(
    session: Session,
    *,
    tenant_name: str | None = None,
    action: str | None = None,
    key_prefix: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first (by id, the order they were written in); ``before_id`` is the id of the
    last entry of the previous page. ``action`` ending in ``.`` (``key.``) matches a family."""
    query = select(AuditEntry)
    if tenant_name is not None:
        query = query.where(AuditEntry.tenant_name == tenant_name)
    if action is not None:
        if action.endswith("."):
            query = query.where(AuditEntry.action.startswith(action, autoescape=True))
        else:
            query = query.where(AuditEntry.action == action)
    if key_prefix is not None:
        query = query.where(AuditEntry.key_prefix == key_prefix)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))
