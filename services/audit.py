"""The audit log: who changed what, written in the same transaction as the change (so an entry
exists exactly when its change was committed). Append-only: Barge never updates or deletes an
entry.

The service that makes a change writes its entry (``record``, given the context's principal),
so every way in is audited alike: the /v1 API, the OpenAI-compatible surface, the admin CLI, and
a worker doing a tenant's work (a dropped file's job, a fine-tune's registered model).

An entry names the tenant concerned (the one whose jobs, models, drop folders, files, batches,
fine-tuning jobs, keys, scopes or quotas changed), the API key that acted (its prefix, never
the key), the action (``ACTIONS``: ``job.submit``, ``job.cancel``, ``job.retry``,
``job.pause``, ``job.resume``, ``model.register``, ``drop.create``, ``drop.delete``,
``key.create``, ``key.revoke``, ``key.rotate``, ``tenant.create``, ``tenant.update``,
``file.upload``, ``file.delete``, ``batch.create``, ``batch.cancel``, ``batch.retry``,
``fine_tuning.create``, ``fine_tuning.cancel``, ``fine_tuning.pause``, ``fine_tuning.resume``,
``webhook.create``, ``webhook.delete``, ``webhook.rotate``), the target (``job:<id>``,
``key:<prefix>``, ``tenant:<name>``, ``file:<id>``, ...) and a little data. An admin acting on
another tenant is named in ``data["by"]``; the local operator, using the ``barge`` command on
the database itself, has no key prefix and ``data["via"] == "cli"``; a worker doing a tenant's
work has none either and ``data["via"] == "worker"``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from barge.errors import InvalidSpec
from barge.jsonvalues import unstorable
from db import repositories as repo
from db.base import utcnow
from db.models import AuditEntry, Tenant
from services.context import WORKER, Operator, ServiceContext
from services.durations import parse_time

ACTIONS = (
    "job.submit",
    "job.cancel",
    "job.retry",
    "job.pause",
    "job.resume",
    "model.register",
    "drop.create",
    "drop.delete",
    "key.create",
    "key.revoke",
    "key.rotate",
    "tenant.create",
    "tenant.update",
    "file.upload",
    "file.delete",
    "batch.create",
    "batch.cancel",
    "batch.retry",
    "fine_tuning.create",
    "fine_tuning.cancel",
    "webhook.create",
    "webhook.delete",
    "webhook.rotate",
    "fine_tuning.pause",
    "fine_tuning.resume",
)
# What the local operator's entries carry: they come from the `barge` command, not a key.
VIA_CLI = "cli"
VIA_WORKER = "worker"  # and a worker's, doing a tenant's work

# A whole API key anywhere in an entry is cut to its prefix: a safety net, keys are never
# passed here.
_KEY = re.compile(r"bk_[A-Za-z0-9_-]{20,}")
_MAX_TEXT = 2048


def _redacted(text: str) -> str:
    text = _KEY.sub(lambda m: m.group()[: repo.KEY_PREFIX_CHARS] + "…", text)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _storable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON the log can hold: times as ISO 8601, ids as text, keys redacted."""
    if isinstance(value, str):
        return _redacted(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if depth > 5:
        return "…"
    if isinstance(value, dict):
        return {_redacted(str(k)): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_storable(v, depth + 1) for v in value]
    return _redacted(str(value))


def record(
    ctx: ServiceContext, action: str, target: str, *, tenant: Tenant | None = None, **data: Any
) -> AuditEntry:
    """Append an entry in the context's transaction: ``action`` on ``target``, concerning
    ``tenant`` (the principal's own when not given), naming the principal: its key's prefix
    (and ``data["by"]``, the key's tenant, when an admin acts on another tenant), or
    ``data["via"]``: ``cli`` for the local operator, ``worker`` for a worker doing a tenant's
    work."""
    if action not in ACTIONS:
        raise ValueError(f"{action!r} is no audit action (ACTIONS lists them)")
    concerned = tenant or ctx.tenant
    principal = ctx.principal
    key_prefix = None
    if isinstance(principal, Operator):
        data = {"via": VIA_CLI, **data}
    elif principal.role == WORKER:
        data = {"via": VIA_WORKER, **data}
    else:
        key_prefix = principal.key_prefix
        by = principal.tenant.name if principal.tenant.id != concerned.id else None
        data = {"by": by, **data}
    return repo.add_audit_entry(
        ctx.session,
        tenant_id=concerned.id,
        tenant_name=concerned.name,
        key_prefix=key_prefix,
        action=action,
        target=_redacted(target),
        data=_storable({k: v for k, v in data.items() if v is not None}),
    )


def check_filter(value: str | None, field: str) -> str | None:
    """A filter's text, if it could match anything that was stored (InvalidSpec if not)."""
    found = unstorable(value) if value is not None else None
    if found is not None:
        raise InvalidSpec(f"{field}: {found[1]}", field=field)
    return value


def parse_since(text: str, field: str = "since") -> datetime:
    """``since``: an ISO 8601 time, or a duration ago (``1h``, ``7d``)."""
    return parse_time(text, field, utcnow())


def entries(
    session: Session,
    *,
    tenant: str | None = None,
    action: str | None = None,
    key_prefix: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries newest first, filtered; ``before_id`` continues from the last page's last id."""
    return repo.audit_entries(
        session,
        tenant_name=tenant,
        action=action,
        key_prefix=key_prefix,
        since=since,
        before_id=before_id,
        limit=limit,
    )


@dataclass(frozen=True)
class AuditView:
    """An entry as the log is read: the tenant concerned by name, the acting key's prefix (None:
    the local operator or a worker, ``data["via"]`` says which)."""

    id: int
    at: datetime
    tenant: str
    key_prefix: str | None
    action: str
    target: str
    data: dict[str, Any]


def present(entry: AuditEntry) -> AuditView:
    return AuditView(
        id=entry.id,
        at=entry.at,
        tenant=entry.tenant_name,
        key_prefix=entry.key_prefix,
        action=entry.action,
        target=entry.target,
        data=entry.data or {},
    )
