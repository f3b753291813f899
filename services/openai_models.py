"""Models of the OpenAI-compatible surface: what a request's ``model`` may name, as OpenAI's
``model`` objects (``{id, object: "model", created, owned_by}``). They are the aliases of
``BARGE_OPENAI_MODEL_ALIASES`` (owned by ``system``; ``created`` 0, a setting has no date) and
the tenant's registered models: each name (its newest version) and each ``name@N``, owned by
the tenant's organization (``org-<tenant id>``, as fine-tuning jobs name it)."""

from __future__ import annotations

from dataclasses import dataclass

from barge.errors import NotFound, excerpt
from db import repositories as repo
from db.models import Model, Tenant
from services import registry
from services.context import ServiceContext


@dataclass(frozen=True)
class ModelView:
    """A model a request may name, as OpenAI's ``model`` object says it."""

    id: str
    created: int  # Unix seconds; 0 for an alias
    owned_by: str  # "system" for an alias, the tenant's organization for its own


def _alias(name: str) -> ModelView:
    return ModelView(name, 0, "system")


def _registered(tenant: Tenant, model_id: str, row: Model) -> ModelView:
    return ModelView(model_id, int(row.created_at.timestamp()), f"org-{tenant.id}")


def listing(ctx: ServiceContext) -> list[ModelView]:
    """Every model the tenant may name: the aliases, then its registered names and versions."""
    settings, tenant = ctx.settings, ctx.tenant
    data = [_alias(name) for name in sorted(settings.openai_model_aliases)]
    seen = set(settings.openai_model_aliases)  # an alias wins over a registered name
    for row in repo.tenant_models(ctx.session, tenant.id, limit=None):
        if row.name not in seen:  # the newest version comes first
            seen.add(row.name)
            data.append(_registered(tenant, row.name, row))
        data.append(_registered(tenant, f"{row.name}@{row.version}", row))
    return data


def get(ctx: ServiceContext, model_id: str) -> ModelView:
    """The model ``model_id`` names; 404 for a name neither an alias nor the tenant's."""
    if model_id in ctx.settings.openai_model_aliases:
        return _alias(model_id)
    row = registry.registered(ctx.session, ctx.tenant.id, model_id)
    if row is None:
        raise NotFound(
            f"The model {excerpt(model_id)} does not exist: GET /models lists the ones this key "
            "may name",
            field="model",
            code="model_not_found",
        )
    return _registered(ctx.tenant, model_id, row)
