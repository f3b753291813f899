"""/openai/v1/models: a model a request may name as OpenAI's ``model`` object, and their list."""

from __future__ import annotations

from typing import Any

from services.openai_models import ModelView


def model_object(model: ModelView) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


def model_list(models: list[ModelView]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in models]}
