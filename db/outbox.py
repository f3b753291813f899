"""The webhook outbox: a job reaching a final status writes one delivery row per subscribed
endpoint of its tenant, in the very transaction of that change (``db.state.transition`` calls
``job_finished``), so an event is sent exactly when its change was committed; the control
worker sends the rows (``worker.control.webhooks``).

Events: ``job.succeeded|failed|cancelled`` for every job; for a job that runs an OpenAI batch
or fine-tuning job, also OpenAI's own ``batch.completed|failed|expired|cancelled`` or
``fine_tuning.job.succeeded|failed|cancelled``, with the batch's or fine-tuning job's id. The
body is OpenAI's event: ``{id, object: "event", type, created_at, data: {id}}``.

Imports ``db.models`` and ``db.base`` only (``db.state`` imports it)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from barge.status import CANCELLED, FAILED, SUCCEEDED
from db.models import (
    Job,
    OpenAIBatch,
    OpenAIFineTuningJob,
    WebhookDelivery,
    WebhookEndpoint,
)

JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
FINE_TUNING_EVENTS = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
)
EVENT_TYPES = JOB_EVENTS + BATCH_EVENTS + FINE_TUNING_EVENTS
PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "failed"  # a delivery's statuses

_BATCH = {SUCCEEDED: "batch.completed", FAILED: "batch.failed", CANCELLED: "batch.cancelled"}


def job_finished(session: Session, job: Job, status: str, at: datetime) -> int:
    """Queue the events of ``job`` reaching the final ``status``; how many deliveries."""
    events = [(f"job.{status}", str(job.id))]
    batch = session.scalar(select(OpenAIBatch).where(OpenAIBatch.job_id == job.id))
    if batch is not None:
        events.append((_batch_event(batch, status), batch.id))
    tune = session.scalar(select(OpenAIFineTuningJob).where(OpenAIFineTuningJob.job_id == job.id))
    if tune is not None:
        events.append((f"fine_tuning.job.{status}", tune.id))
    return sum(enqueue(session, job.tenant_id, kind, oid, at, job.id) for kind, oid in events)


def _batch_event(batch: OpenAIBatch, status: str) -> str:
    """A batch whose window ended is expired when it left requests unrun (finalize counted
    them before this), completed when the last ones finished meanwhile."""
    if status == CANCELLED and batch.expired_at is not None:
        return "batch.completed" if batch.expired_requests == 0 else "batch.expired"
    return _BATCH[status]


def enqueue(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: str,
    object_id: str,
    at: datetime,
    job_id: uuid.UUID | None = None,
) -> int:
    """One event, a delivery for each of the tenant's endpoints subscribed to its type, due
    now; flushes, never commits. How many deliveries."""
    endpoints = [
        e
        for e in session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
        )
        if event_type in e.events
    ]
    if not endpoints:
        return 0
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created_at": int(at.timestamp()),
            "data": {"id": object_id},
        },
        separators=(",", ":"),
    )
    for endpoint in endpoints:
        session.add(
            WebhookDelivery(
                id=f"wh_{uuid.uuid4().hex}",
                endpoint_id=endpoint.id,
                tenant_id=tenant_id,
                event_id=event_id,
                event_type=event_type,
                job_id=job_id,
                body=body,
                status=PENDING,
                attempts=0,
                next_attempt_at=at,
                created_at=at,
                attempts_log=[],
            )
        )
    session.flush()
    return len(endpoints)
