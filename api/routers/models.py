"""/v1/models: the model registry. Inference jobs name a model as `name` (newest) or `name@N`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field, field_validator

from api.deps import CurrentPrincipal, CurrentTenant, SettingsDep, StoreDep, UoW
from api.schemas import errors
from barge.errors import NotFound, excerpt
from barge.jsonvalues import check_json_value
from barge.specs import MODEL_NAME_PATTERN, Task
from db import repositories as repo
from db.models import Model
from services import audit, registry

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelIn(BaseModel):
    name: str = Field(..., pattern=MODEL_NAME_PATTERN)
    uri: str = Field(
        ..., max_length=2048, description="s3:// prefix of a Hugging Face model directory"
    )
    task: Task
    base_model: str | None = Field(None, max_length=2048)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_model", "metrics")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        check_json_value(v)
        return v


class ModelOut(BaseModel):
    name: str
    version: int
    ref: str
    uri: str
    task: str
    base_model: str | None
    adapter_base_uri: str | None = Field(
        None,
        description="Set when this version is a LoRA adapter: where the base it applies to "
        "lies (inference loads the base once and applies the adapter).",
    )
    metrics: dict[str, Any]
    job_id: str | None
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelOut]


MODEL_EXAMPLES = {
    "embed": {
        "summary": "Register a model directory as the next version of a name",
        "value": {
            "name": "minilm",
            "uri": "s3://barge/acme/models/all-minilm-l6-v2/",
            "task": "embed",
        },
    }
}


def _out(m: Model) -> ModelOut:
    return ModelOut(
        name=m.name,
        version=m.version,
        ref=f"{m.name}@{m.version}",
        uri=m.uri,
        task=m.task,
        base_model=m.base_model,
        adapter_base_uri=m.adapter_base_uri,
        metrics=m.metrics or {},
        job_id=str(m.job_id) if m.job_id else None,
        created_at=m.created_at,
    )


@router.post(
    "", status_code=201, response_model=ModelOut, responses=errors(403, 409, 502, body=True)
)
def register_model(
    body: Annotated[ModelIn, Body(openapi_examples=MODEL_EXAMPLES)],
    uow: UoW,
    principal: CurrentPrincipal,
    settings: SettingsDep,
    store: StoreDep,
) -> ModelOut:
    """Register an existing model directory as the next version of `name`."""
    model = registry.register_directory(
        uow.session,
        settings,
        store,
        principal.tenant.id,
        body.name,
        body.uri,
        body.task,
        base_model=body.base_model,
        metrics=body.metrics,
    )
    audit.record(
        uow.session,
        principal,
        None,
        "model.register",
        f"model:{model.name}@{model.version}",
        uri=model.uri,
        task=model.task,
    )
    return _out(model)


@router.get("", response_model=ModelList, responses=errors())
def list_models(uow: UoW, tenant: CurrentTenant) -> ModelList:
    """The newest version of each registered model."""
    return ModelList(models=[_out(m) for m in repo.model_versions(uow.session, tenant.id)])


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
    return ModelList(models=[_out(m) for m in versions])
