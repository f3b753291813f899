"""/openai/v1/models: thin handlers; the rules live in services.openai_models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Context
from api.schemas.openai_models import model_list, model_object
from services import openai_models as service

router = APIRouter(prefix="/models", tags=["openai models"])


@router.get("", summary="The models a request may name: aliases, registered names and versions")
def list_models(ctx: Context) -> dict[str, Any]:
    return model_list(service.listing(ctx))


@router.get("/{model_id:path}", summary="A model (an alias, a registered name or name@N)")
def get_model(model_id: str, ctx: Context) -> dict[str, Any]:
    return model_object(service.get(ctx, model_id))
