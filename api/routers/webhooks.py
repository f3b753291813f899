"""/v1/webhooks: the tenant's webhook endpoints (create, list, get, delete, rotate the secret)
and each one's deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from api.deps import Context
from api.schemas.errors import errors
from api.schemas.webhooks import (
    WEBHOOK_EXAMPLES,
    DeliveryList,
    WebhookIn,
    WebhookList,
    WebhookOut,
    delivery_out,
    webhook_out,
)
from services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookOut, responses=errors(409, body=True))
def create_webhook(
    body: Annotated[WebhookIn, Body(openapi_examples=WEBHOOK_EXAMPLES)], ctx: Context
) -> WebhookOut:
    """A new endpoint; the answer carries its signing secret, shown only this once."""
    endpoint = webhooks.create(ctx, webhooks.CreateWebhook(body.url, body.events))
    return webhook_out(endpoint, with_secret=True)


@router.get("", response_model=WebhookList, responses=errors())
def list_webhooks(ctx: Context) -> WebhookList:
    return WebhookList(webhooks=[webhook_out(e) for e in webhooks.endpoints(ctx)])


@router.get("/{webhook_id}", response_model=WebhookOut, responses=errors(404))
def get_webhook(webhook_id: str, ctx: Context) -> WebhookOut:
    return webhook_out(webhooks.get(ctx, webhook_id))


@router.delete("/{webhook_id}", status_code=204, responses=errors(404))
def delete_webhook(webhook_id: str, ctx: Context) -> Response:
    """The endpoint goes, with its deliveries; those pending are never sent."""
    webhooks.delete(ctx, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate", response_model=WebhookOut, responses=errors(404))
def rotate_webhook_secret(webhook_id: str, ctx: Context) -> WebhookOut:
    """A new secret, shown only in this answer; the old one keeps signing (beside it) for
    BARGE_WEBHOOK_SECRET_GRACE_HOURS."""
    return webhook_out(webhooks.rotate(ctx, webhook_id), with_secret=True)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList, responses=errors(404, 422))
def list_deliveries(
    webhook_id: str,
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=webhooks.MAX_DELIVERIES)] = 50,
    type: Annotated[str | None, Query(max_length=64, description="Only this event type")] = None,
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts (status code and the
    start of the answer)."""
    found = webhooks.deliveries(ctx, webhook_id, limit, type)
    return DeliveryList(deliveries=[delivery_out(d) for d in found])
