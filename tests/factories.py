"""Factories: rows for tests that need them (tenants, jobs, shards), flushed, never committed
here (the caller's session scope commits). ``build_*`` make unsaved rows for the unit tier."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from barge.status import QUEUED, RUNNING
from db.base import utcnow
from db.models import Job, Shard, Tenant
from db.session import session_scope

RECORDS_PER_SHARD = 10


def inference_spec_json(output_uri: str) -> dict[str, Any]:
    return {
        "type": "inference",
        "model": "s3://test-models/minilm/",
        "task": "embed",
        "input": "s3://test-inputs/data.jsonl",
        "output": output_uri,
    }


def build_job(
    *,
    status: str = QUEUED,
    type_: str = "inference",
    created_at: datetime | None = None,
    **values: Any,
) -> Job:
    """An unsaved job row with a valid stored spec."""
    output = values.pop("output_uri", f"s3://test-outputs/{uuid.uuid4().hex}/")
    now = created_at or utcnow()
    return Job(
        id=values.pop("id", uuid.uuid4()),
        tenant_id=values.pop("tenant_id", uuid.uuid4()),
        type=type_,
        status=status,
        spec=values.pop("spec", inference_spec_json(output)),
        meta=values.pop("meta", {}),
        output_uri=output,
        created_at=now,
        updated_at=now,
        **values,
    )


def build_shard(job: Job, index: int = 0, **values: Any) -> Shard:
    """An unsaved shard of ``job`` with RECORDS_PER_SHARD records."""
    defaults: dict[str, Any] = {
        "id": uuid.uuid4(),
        "status": "pending",
        "source_uri": "s3://test-inputs/data.jsonl",
        "source_etag": "",
        "input_format": "jsonl",
        "compressed": False,
        "start_record": index * RECORDS_PER_SHARD,
        "record_count": RECORDS_PER_SHARD,
        "record_offset": index * RECORDS_PER_SHARD,
        "first_line": index * RECORDS_PER_SHARD + 1,
        "attempt": 0,
        "handoffs": 0,
        "records_succeeded": 0,
        "records_failed": 0,
        "steps_done": 0,
    }
    return Shard(job_id=job.id, index=index, **{**defaults, **values})


def make_tenant(session: Session, scopes: list[str] | None = None) -> Tenant:
    """A tenant that may read and write ``scopes`` (default: any bucket, "*")."""
    scopes = ["*"] if scopes is None else scopes
    tenant = Tenant(name=f"tenant-{uuid.uuid4().hex[:12]}", read_scopes=scopes, write_scopes=scopes)
    session.add(tenant)
    session.flush()
    return tenant


def make_job(
    session: Session,
    tenant: Tenant,
    *,
    status: str = QUEUED,
    type_: str = "inference",
    created_at: datetime | None = None,
) -> Job:
    job = build_job(status=status, type_=type_, created_at=created_at, tenant_id=tenant.id)
    session.add(job)
    session.flush()
    return job


def make_shard(session: Session, job: Job, index: int = 0, **values: Any) -> Shard:
    shard = build_shard(job, index, **values)
    session.add(shard)
    session.flush()
    return shard


def new_job(url: str, status: str = QUEUED) -> uuid.UUID:
    with session_scope(url) as session:
        return make_job(session, make_tenant(session), status=status).id


def new_shard(url: str) -> uuid.UUID:
    with session_scope(url) as session:
        job = make_job(session, make_tenant(session), status=RUNNING)
        return make_shard(session, job).id
