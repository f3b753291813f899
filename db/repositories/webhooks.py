"""Webhook endpoints and their deliveries (the outbox ``db.outbox`` writes). Repositories flush;
only boundaries commit."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import WebhookDelivery, WebhookEndpoint
from db.outbox import DELIVERED, PENDING

ATTEMPTS_KEPT = 20  # the newest attempts a delivery lists


def add_webhook_endpoint(session: Session, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    session.add(endpoint)
    session.flush()
    return endpoint


def webhook_endpoints(session: Session, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    """The tenant's endpoints, oldest first."""
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def webhook_endpoint_count(session: Session, tenant_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
        )
        or 0
    )


def webhook_endpoint(
    session: Session, tenant_id: uuid.UUID, endpoint_id: str, lock: bool = False
) -> WebhookEndpoint | None:
    """The tenant's endpoint ``endpoint_id`` (locked for update when ``lock``)."""
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
    )
    return session.scalar(query.with_for_update() if lock else query)


def remove_webhook_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """The endpoint and its deliveries go (its pending ones are never sent)."""
    session.delete(endpoint)
    session.flush()


def webhook_deliveries(
    session: Session, endpoint_id: str, limit: int, event_type: str | None = None
) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if event_type is not None:
        query = query.where(WebhookDelivery.event_type == event_type)
    return list(
        session.scalars(
            query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(
                limit
            )
        )
    )


def take_due_deliveries(
    session: Session, now: datetime, limit: int, hold: timedelta
) -> list[tuple[WebhookDelivery, WebhookEndpoint]]:
    """Claim up to ``limit`` pending deliveries due by ``now`` (skipping those another sender
    holds): each attempt is counted and the row is not due again before ``now + hold``, so a
    sender that dies mid-send leaves it to be tried again then. Oldest first."""
    rows = [
        (delivery, endpoint)
        for delivery, endpoint in session.execute(
            select(WebhookDelivery, WebhookEndpoint)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        )
    ]
    for delivery, _ in rows:
        delivery.attempts += 1
        delivery.next_attempt_at = now + hold
    session.flush()
    return rows


def record_delivery_attempt(
    session: Session,
    delivery_id: str,
    attempt: int,
    outcome: dict[str, Any],
    status: str,
    at: datetime,
    next_attempt_at: datetime,
) -> bool:
    """Note how attempt ``attempt`` went (``outcome``: when, status code, an excerpt of the
    answer or the error) and the delivery's new status (delivered at ``at``, or due again at
    ``next_attempt_at``); only while it is still pending at that attempt (a later claim
    wins). Whether it was noted."""
    row = session.scalar(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.attempts == attempt,
            WebhookDelivery.status == PENDING,
        )
        .with_for_update()
    )
    if row is None:
        return False
    row.attempts_log = [*row.attempts_log, outcome][-ATTEMPTS_KEPT:]
    row.last_status_code = outcome.get("status_code")
    row.status = status
    row.next_attempt_at = next_attempt_at
    if status == DELIVERED:
        row.delivered_at = at
    session.flush()
    return True


def prune_deliveries(session: Session, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` deliveries of events older than ``before`` that are settled
    (delivered or given up); how many went. Pending ones stay whatever their age."""
    old = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.created_at < before, WebhookDelivery.status != PENDING)
        .limit(limit)
    )
    result = session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.id.in_(old.scalar_subquery())),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0))
