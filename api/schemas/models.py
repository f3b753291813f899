"""/v1/models: the registration body, its examples, and a registered version as answered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from barge.jsonvalues import check_json_value
from barge.specs import MODEL_NAME_PATTERN, Task
from db.models import Model


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


def model_out(m: Model) -> ModelOut:
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
