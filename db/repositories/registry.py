"""The model registry: named, versioned model directories. Repositories flush; only boundaries commit."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from db.models import Model

# --- model registry ---------------------------------------------------------------------------


def register_model(
    session: Session,
    tenant_id: uuid.UUID,
    name: str,
    uri: str,
    task: str,
    *,
    base_model: str | None = None,
    metrics: dict[str, Any] | None = None,
    job_id: uuid.UUID | None = None,
    adapter_base_uri: str | None = None,
) -> Model:
    """Add the next version of ``name`` (1, 2, ...); the unique (tenant, name, version) constraint
    makes two concurrent registrations fail rather than share a version."""
    latest = session.scalar(
        select(func.max(Model.version)).where(Model.tenant_id == tenant_id, Model.name == name)
    )
    model = Model(
        tenant_id=tenant_id,
        name=name,
        version=(latest or 0) + 1,
        uri=uri,
        task=task,
        base_model=base_model,
        metrics=metrics or {},
        job_id=job_id,
        adapter_base_uri=adapter_base_uri,
    )
    session.add(model)
    session.flush()
    return model


def model_versions(session: Session, tenant_id: uuid.UUID, name: str | None = None) -> list[Model]:
    """Every version of ``name``, newest first; without a name, the newest version of each."""
    if name is not None:
        return list(
            session.scalars(
                select(Model)
                .where(Model.tenant_id == tenant_id, Model.name == name)
                .order_by(Model.version.desc())
            )
        )
    newest = (
        select(Model.name, func.max(Model.version).label("version"))
        .where(Model.tenant_id == tenant_id)
        .group_by(Model.name)
        .subquery()
    )
    return list(
        session.scalars(
            select(Model)
            .join(newest, and_(Model.name == newest.c.name, Model.version == newest.c.version))
            .where(Model.tenant_id == tenant_id)
            .order_by(Model.name)
        )
    )


def model_version_count(session: Session, tenant_id: uuid.UUID) -> int:
    """Every version the tenant has registered, of every name."""
    return int(session.scalar(select(func.count()).where(Model.tenant_id == tenant_id)) or 0)


def find_model(
    session: Session, tenant_id: uuid.UUID, name: str, version: int | None = None
) -> Model | None:
    """``name@version``, or the newest version of ``name``."""
    query = select(Model).where(Model.tenant_id == tenant_id, Model.name == name)
    if version is not None:
        query = query.where(Model.version == version)
    return session.scalar(query.order_by(Model.version.desc()).limit(1))


# In the metrics of a fine-tune's epoch model (``epoch_models``): the model_name it is an
# epoch of. The job's own model has no such key.
CHECKPOINT_OF = "checkpoint_of"


def is_epoch_model(model: Model) -> bool:
    """Whether ``model`` is an epoch model of a fine-tune, not the model it registered."""
    return CHECKPOINT_OF in (model.metrics or {})


def models_for_job(session: Session, job_id: uuid.UUID) -> list[Model]:
    """Every version a fine-tune job registered: its model and its epoch models."""
    return list(
        session.scalars(select(Model).where(Model.job_id == job_id).order_by(Model.created_at))
    )


def model_for_job(session: Session, job_id: uuid.UUID) -> Model | None:
    """The version a fine-tune job registered as its ``model_name``, if any."""
    return next((m for m in models_for_job(session, job_id) if not is_epoch_model(m)), None)


def tenant_models(session: Session, tenant_id: uuid.UUID, limit: int | None = 1000) -> list[Model]:
    """Every version of every model of the tenant, by name, newest version first (the first
    ``limit``; None: all of them)."""
    return list(
        session.scalars(
            select(Model)
            .where(Model.tenant_id == tenant_id)
            .order_by(Model.name, Model.version.desc())
            .limit(limit)
        )
    )
