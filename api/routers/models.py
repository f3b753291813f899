"""/v1/models: the model registry. Inference jobs name a model as `name` (newest) or `name@N`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.exc import IntegrityError

from api.deps import CurrentTenant, SettingsDep, StoreDep, UoW
from api.schemas import ERROR_RESPONSES
from barge.errors import Conflict, InvalidSpec, NotFound, PermanentJobError, excerpt
from barge.modeldirs import check_model_files, list_model_files
from barge.specs import MODEL_NAME_PATTERN, Task, check_json_value
from barge.storage import S3Uri, check_bucket_allowed
from barge.uris import normalise
from db import repositories as repo
from db.models import Model

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
    metrics: dict[str, Any]
    job_id: str | None
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelOut]


def _out(m: Model) -> ModelOut:
    return ModelOut(
        name=m.name,
        version=m.version,
        ref=f"{m.name}@{m.version}",
        uri=m.uri,
        task=m.task,
        base_model=m.base_model,
        metrics=m.metrics or {},
        job_id=str(m.job_id) if m.job_id else None,
        created_at=m.created_at,
    )


@router.post("", status_code=201, response_model=ModelOut, responses=ERROR_RESPONSES)
def register_model(
    body: ModelIn, uow: UoW, tenant: CurrentTenant, settings: SettingsDep, store: StoreDep
) -> ModelOut:
    """Register an existing model directory as the next version of `name`."""
    uri = S3Uri.parse(normalise(body.uri, "uri", prefix=True), field="uri")
    check_bucket_allowed(settings, uri, "uri")
    try:
        check_model_files(str(uri), list_model_files(settings, store, str(uri)))
    except PermanentJobError as exc:
        raise InvalidSpec(exc.message, field="uri") from None
    try:
        with uow.session.begin_nested():
            model = repo.register_model(
                uow.session,
                tenant.id,
                body.name,
                str(uri),
                body.task,
                base_model=body.base_model,
                metrics=body.metrics,
            )
    except IntegrityError:
        raise Conflict(f"{body.name} was registered concurrently; retry") from None
    return _out(model)


@router.get("", response_model=ModelList, responses=ERROR_RESPONSES)
def list_models(uow: UoW, tenant: CurrentTenant) -> ModelList:
    """The newest version of each registered model."""
    return ModelList(models=[_out(m) for m in repo.model_versions(uow.session, tenant.id)])


@router.get("/{name}", response_model=ModelList, responses=ERROR_RESPONSES)
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
