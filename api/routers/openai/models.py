"""/openai/v1/models: thin handlers; the rules live in services.openai_models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentTenant, SettingsDep, UoW
from api.schemas.openai_models import model_list, model_object
from services import openai_models as service

router = APIRouter(prefix="/models", tags=["openai models"])


@router.get("", summary="The models a request may name: aliases, registered names and versions")
def list_models(tenant: CurrentTenant, uow: UoW, settings: SettingsDep) -> dict[str, Any]:
    return model_list(service.listing(uow.session, settings, tenant))


@router.get("/{model_id:path}", summary="A model (an alias, a registered name or name@N)")
def get_model(
    model_id: str, tenant: CurrentTenant, uow: UoW, settings: SettingsDep
) -> dict[str, Any]:
    return model_object(service.get(uow.session, settings, tenant, model_id))
