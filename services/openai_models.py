"""Models of the OpenAI-compatible surface: what a request's ``model`` may name, as OpenAI's
``model`` objects (``{id, object: "model", created, owned_by}``). They are the aliases of
``BARGE_OPENAI_MODEL_ALIASES`` (owned by ``system``; ``created`` 0, a setting has no date) and
the tenant's registered models: each name (its newest version) and each ``name@N``, owned by
the tenant's organization (``org-<tenant id>``, as fine-tuning jobs name it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from barge.errors import NotFound, excerpt
from barge.settings import Settings
from db.models import Model, Tenant
from db.repositories import openai as openai_repo
from services import registry


def _model(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def _registered(tenant: Tenant, model_id: str, row: Model) -> dict[str, Any]:
    return _model(model_id, int(row.created_at.timestamp()), f"org-{tenant.id}")


def listing(session: Session, settings: Settings, tenant: Tenant) -> dict[str, Any]:
    """Every model the tenant may name: the aliases, then its registered names and versions."""
    data = [_model(name, 0, "system") for name in sorted(settings.openai_model_aliases)]
    seen = set(settings.openai_model_aliases)  # an alias wins over a registered name
    for row in openai_repo.tenant_models(session, tenant.id):
        if row.name not in seen:  # the newest version comes first
            seen.add(row.name)
            data.append(_registered(tenant, row.name, row))
        data.append(_registered(tenant, f"{row.name}@{row.version}", row))
    return {"object": "list", "data": data}


def get(session: Session, settings: Settings, tenant: Tenant, model_id: str) -> dict[str, Any]:
    """The model ``model_id`` names; 404 for a name neither an alias nor the tenant's."""
    if model_id in settings.openai_model_aliases:
        return _model(model_id, 0, "system")
    row = registry.registered(session, tenant.id, model_id)
    if row is None:
        raise NotFound(
            f"The model {excerpt(model_id)} does not exist: GET /models lists the ones this key "
            "may name",
            field="model",
            code="model_not_found",
        )
    return _registered(tenant, model_id, row)
