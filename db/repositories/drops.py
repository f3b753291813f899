"""Drop-folder rules and the objects they picked up. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import DropObject, DropRule, Job, Tenant
from db.state import (
    FINAL,
)

# --- drop folders -----------------------------------------------------------------------------

REMOVED_MARK = "~removed~"  # a removed rule's name: NAME~removed~<id>, never a valid rule name
DROP_NAME_CHARS = 200  # drop_rules.name is a String(200)


def drop_rules(session: Session, tenant_id: uuid.UUID) -> list[DropRule]:
    """The tenant's rules, removed ones (disabled and renamed) included, by name."""
    return list(
        session.scalars(
            select(DropRule).where(DropRule.tenant_id == tenant_id).order_by(DropRule.name)
        )
    )


def live_drop_rule(session: Session, tenant_id: uuid.UUID, name: str) -> DropRule | None:
    """The tenant's enabled rule named ``name``; a removed rule is never found again."""
    return session.scalar(
        select(DropRule).where(
            DropRule.tenant_id == tenant_id,
            DropRule.name == name,
            DropRule.enabled.is_(True),
        )
    )


def add_drop_rule(
    session: Session, tenant_id: uuid.UUID, name: str, prefix: str, template: dict[str, Any]
) -> DropRule | None:
    """The new rule, or None when the tenant has a rule of that name (checked, and enforced by
    the unique (tenant, name) constraint when two adds race)."""
    if session.scalar(
        select(DropRule.id).where(DropRule.tenant_id == tenant_id, DropRule.name == name)
    ):
        return None
    rule = DropRule(tenant_id=tenant_id, name=name, prefix=prefix, template=template)
    try:
        with session.begin_nested():
            session.add(rule)
    except IntegrityError:
        return None
    return rule


def tenants_except(session: Session, tenant_id: uuid.UUID) -> list[Tenant]:
    """Every other tenant (whose scopes a new drop prefix must not overlap)."""
    return list(session.scalars(select(Tenant).where(Tenant.id != tenant_id)))


def remove_drop_rule(session: Session, rule: DropRule) -> None:
    """Disable the rule and free its name: it becomes NAME~removed~<id>, cut to fit the column
    (jobs it created keep pointing at it)."""
    suffix = f"{REMOVED_MARK}{rule.id.hex}"
    rule.enabled = False
    rule.name = rule.name[: DROP_NAME_CHARS - len(suffix)] + suffix
    session.flush()


def enabled_drop_rules(session: Session) -> list[DropRule]:
    """Every tenant's enabled rules (the scheduler's scan)."""
    return list(session.scalars(select(DropRule).where(DropRule.enabled.is_(True))))


def add_drop_object(session: Session, drop: DropObject) -> bool:
    """Claim an object for one job: False when its (rule, key, ETag) was seen before."""
    try:
        with session.begin_nested():
            session.add(drop)
            session.flush()
    except IntegrityError:
        return False
    return True


def finished_drops(session: Session, rule_id: uuid.UUID) -> list[tuple[DropObject, Job]]:
    """Submitted drop objects whose job is final and has its manifest."""
    return [
        (row[0], row[1])
        for row in session.execute(
            select(DropObject, Job)
            .join(Job, Job.id == DropObject.job_id)
            .where(
                DropObject.rule_id == rule_id,
                DropObject.status == "submitted",
                Job.status.in_(FINAL),
                Job.manifest.is_not(None),
            )
        )
    ]


def settle_drop(session: Session, drop_id: uuid.UUID, status: str) -> int:
    """Move a submitted drop object to ``status`` (done/failed); 1 if this call did."""
    result = session.execute(
        update(DropObject)
        .where(DropObject.id == drop_id, DropObject.status == "submitted")
        .values(status=status, updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
