"""/v1/models: the model registry. Inference jobs name a model as `name` (newest) or `name@N`."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import Context, CurrentTenant, UoW
from api.schemas.errors import errors
from api.schemas.models import MODEL_EXAMPLES, ModelIn, ModelList, ModelOut, model_out
from barge.errors import NotFound, excerpt
from barge.specs import MODEL_NAME_PATTERN
from db import repositories as repo
from services import registry

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "", status_code=201, response_model=ModelOut, responses=errors(403, 409, 502, body=True)
)
def register_model(
    body: Annotated[ModelIn, Body(openapi_examples=MODEL_EXAMPLES)], ctx: Context
) -> ModelOut:
    """Register an existing model directory as the next version of `name`."""
    version = registry.RegisterVersion(
        body.name, body.uri, body.task, base_model=body.base_model, metrics=body.metrics
    )
    return model_out(registry.register_directory(ctx, version))


@router.get("", response_model=ModelList, responses=errors())
def list_models(uow: UoW, tenant: CurrentTenant) -> ModelList:
    """The newest version of each registered model."""
    return ModelList(models=[model_out(m) for m in repo.model_versions(uow.session, tenant.id)])


@router.get("/{name}", response_model=ModelList, responses=errors(404))
def model_versions(name: str, uow: UoW, tenant: CurrentTenant) -> ModelList:
    """Every version of `name`, newest first."""
    versions = (
        repo.model_versions(uow.session, tenant.id, name)
        if re.match(MODEL_NAME_PATTERN, name)
        else []  # a name that could never be registered (it would not fit the query either)
    )
    if not versions:
        raise NotFound(f"no model named {excerpt(name)}")
    return ModelList(models=[model_out(m) for m in versions])
