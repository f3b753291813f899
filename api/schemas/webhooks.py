"""/v1/webhooks: an endpoint's body, an endpoint as answered (with its secret only when it was
just made or rotated), and its deliveries with their attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from db.models import WebhookDelivery, WebhookEndpoint
from db.outbox import EVENT_TYPES
from services.webhooks import MAX_URL_CHARS


class WebhookIn(BaseModel):
    url: str = Field(
        ...,
        max_length=MAX_URL_CHARS,
        description="An http(s) URL on a public address (checked after DNS, at create and at "
        "each send)",
    )
    events: list[str] = Field(
        ...,
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="The event types to send: " + ", ".join(EVENT_TYPES),
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    rotated_at: datetime | None
    secret: str | None = Field(
        None,
        description="The signing secret (whsec_...): shown only in the answer to create and "
        "rotate, never again",
    )


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class AttemptOut(BaseModel):
    at: str
    status_code: int | None = Field(description="The answer's status, or null when none came")
    response: str | None = Field(None, description="The start of the answer's body")
    error: str | None = None
    ms: int | None = None


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header, the same on every attempt")
    event_id: str
    type: str
    job_id: str | None
    status: str = Field(description="pending, delivered, or failed (given up)")
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    payload: dict[str, Any]
    attempt_log: list[AttemptOut] = Field(description="The newest attempts, oldest first")


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


WEBHOOK_EXAMPLES = {
    "batches": {
        "summary": "Be told when a job or an OpenAI batch ends",
        "value": {
            "url": "https://hooks.example.com/barge",
            "events": ["job.succeeded", "job.failed", "batch.completed", "batch.failed"],
        },
    }
}


def webhook_out(endpoint: WebhookEndpoint, with_secret: bool = False) -> WebhookOut:
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        created_at=endpoint.created_at,
        rotated_at=endpoint.rotated_at,
        secret=endpoint.secret if with_secret else None,
    )


def delivery_out(delivery: WebhookDelivery) -> DeliveryOut:
    import json

    return DeliveryOut(
        id=delivery.id,
        event_id=delivery.event_id,
        type=delivery.event_type,
        job_id=str(delivery.job_id) if delivery.job_id else None,
        status=delivery.status,
        attempts=delivery.attempts,
        created_at=delivery.created_at,
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        delivered_at=delivery.delivered_at,
        last_status_code=delivery.last_status_code,
        payload=json.loads(delivery.body),
        attempt_log=[AttemptOut(**a) for a in delivery.attempts_log],
    )
