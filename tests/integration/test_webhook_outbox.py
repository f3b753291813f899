"""The webhook outbox on a real Postgres: a job's final transition writes one delivery per
subscribed endpoint of its tenant in the same transaction (a rollback leaves none), under the
native name and, for a job that runs an OpenAI batch or fine-tuning job, OpenAI's (an expired
batch's included); and the sender's claim holds a row from a second sender."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import (
    OpenAIBatch,
    OpenAIFineTuningJob,
    Tenant,
    WebhookDelivery,
    WebhookEndpoint,
)
from db.outbox import EVENT_TYPES
from db.session import session_scope
from tests.factories import make_job, make_tenant


def endpoint(session: object, tenant: Tenant, events: list[str]) -> WebhookEndpoint:
    row = WebhookEndpoint(
        id=f"whep_{uuid.uuid4().hex[:24]}",
        tenant_id=tenant.id,
        url="https://93.184.216.34/hooks",
        events=events,
        secret="whsec_" + "A" * 44,
        created_at=utcnow(),
    )
    session.add(row)  # type: ignore[attr-defined]
    return row


def written(url: str, tenant_id: uuid.UUID) -> list[tuple[str, str, str]]:
    """(endpoint, type, data.id) of every delivery of the tenant."""
    with session_scope(url) as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
        )
        return sorted((d.endpoint_id, d.event_type, json.loads(d.body)["data"]["id"]) for d in rows)


@pytest.mark.parametrize("final", [state.SUCCEEDED, state.FAILED])
def test_a_final_state_writes_one_delivery_per_subscribed_endpoint(
    database_url: str, final: str
) -> None:
    with session_scope(database_url) as session:
        tenant = make_tenant(session)
        every = endpoint(session, tenant, list(EVENT_TYPES))
        endpoint(session, tenant, ["job.cancelled"])  # not subscribed to this end
        job = make_job(session, tenant)
        state.transition(session, job, state.RUNNING)  # not final: nothing
        state.transition(session, job, final)
        tenant_id, endpoint_id, job_id = tenant.id, every.id, str(job.id)
    assert written(database_url, tenant_id) == [(endpoint_id, f"job.{final}", job_id)]
    with session_scope(database_url) as session:
        [delivery] = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
        )
        body = json.loads(delivery.body)
        assert set(body) == {"id", "object", "type", "created_at", "data"}
        assert body["object"] == "event" and body["id"] == delivery.event_id
        assert delivery.status == "pending" and delivery.id.startswith("wh_")


def test_a_rolled_back_transition_leaves_no_delivery(database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant = make_tenant(session)
        endpoint(session, tenant, ["job.failed"])
        job = make_job(session, tenant)
        tenant_id, job_id = tenant.id, job.id
    with pytest.raises(RuntimeError), session_scope(database_url) as session:
        found = repo.get_job(session, job_id)
        assert found is not None
        state.transition(session, found, state.FAILED, error="boom")
        raise RuntimeError("the transaction fails after the transition")
    assert written(database_url, tenant_id) == []


@pytest.mark.parametrize(
    ("expired_requests", "openai_type"),
    [(None, "batch.cancelled"), (3, "batch.expired"), (0, "batch.completed")],
)
def test_a_batch_ends_under_openai_names(
    database_url: str, expired_requests: int | None, openai_type: str
) -> None:
    with session_scope(database_url) as session:
        tenant = make_tenant(session)
        hook = endpoint(session, tenant, list(EVENT_TYPES))
        job = make_job(session, tenant, status=state.RUNNING)
        batch_id = f"batch_{uuid.uuid4().hex}"
        now = utcnow()
        session.add(
            OpenAIBatch(
                id=batch_id,
                tenant_id=tenant.id,
                job_id=job.id,
                endpoint="/v1/embeddings",
                input_file_id="file-x",
                completion_window="24h",
                expires_at=now + timedelta(hours=24),
                expired_at=None if expired_requests is None else now,
                expired_requests=expired_requests,
            )
        )
        session.flush()
        state.transition(session, job, state.CANCELLING)
        state.transition(session, job, state.CANCELLED)
        expected = sorted(
            [(hook.id, "job.cancelled", str(job.id)), (hook.id, openai_type, batch_id)]
        )
        tenant_id = tenant.id
    assert written(database_url, tenant_id) == expected


def test_a_fine_tuning_job_ends_under_openai_names(database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant = make_tenant(session)
        hook = endpoint(session, tenant, ["fine_tuning.job.succeeded"])
        job = make_job(session, tenant, status=state.RUNNING, type_="finetune")
        tune_id = f"ftjob-{uuid.uuid4().hex}"
        session.add(
            OpenAIFineTuningJob(
                id=tune_id,
                tenant_id=tenant.id,
                job_id=job.id,
                model="m",
                training_file_id="file-x",
                seed=1,
                hyperparameters={},
                id_key="0" * 32,
            )
        )
        session.flush()
        state.transition(session, job, state.SUCCEEDED)
        tenant_id, hook_id = tenant.id, hook.id
    assert written(database_url, tenant_id) == [(hook_id, "fine_tuning.job.succeeded", tune_id)]


def test_a_claimed_delivery_is_skipped_by_a_second_sender(database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant = make_tenant(session)
        endpoint(session, tenant, ["job.failed"])
        job = make_job(session, tenant)
        state.transition(session, job, state.FAILED, error="x")
        tenant_id = tenant.id
    later = utcnow() + timedelta(seconds=1)
    with session_scope(database_url) as first:
        mine = [
            d
            for d, _ in repo.take_due_deliveries(first, later, 1000, timedelta(seconds=30))
            if d.tenant_id == tenant_id
        ]
        assert len(mine) == 1 and mine[0].attempts == 1
        with session_scope(database_url) as second:  # while the first holds its lock
            taken = repo.take_due_deliveries(second, later, 1000, timedelta(seconds=30))
            assert mine[0].id not in {d.id for d, _ in taken}
    with session_scope(database_url) as third:  # committed: not due again before the hold ends
        taken = repo.take_due_deliveries(third, later, 1000, timedelta(seconds=30))
        assert mine[0].id not in {d.id for d, _ in taken}


def test_settled_deliveries_past_their_retention_are_pruned(database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant = make_tenant(session)
        endpoint(session, tenant, ["job.failed"])
        for _ in range(3):
            job = make_job(session, tenant)
            state.transition(session, job, state.FAILED, error="x")
        rows = list(
            session.scalars(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant.id))
        )
        old = utcnow() - timedelta(days=40)
        for row, status in zip(rows, ("delivered", "failed", "pending"), strict=True):
            row.status, row.created_at = status, old
        tenant_id = tenant.id
    with session_scope(database_url) as session:
        repo.prune_deliveries(session, utcnow() - timedelta(days=30), 1000)
    with session_scope(database_url) as session:
        left = session.scalars(
            select(WebhookDelivery.status).where(WebhookDelivery.tenant_id == tenant_id)
        )
        assert list(left) == ["pending"]  # a pending one stays whatever its age
