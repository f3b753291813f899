"""/v1/drops: drop-folder rules (an S3 prefix mapped to a job template)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import select

from api.deps import CurrentTenant, SettingsDep, StoreDep, UoW
from api.schemas import ERROR_RESPONSES
from barge.errors import Conflict, InvalidSpec, NotFound
from barge.specs import InferenceSpec
from barge.storage import S3Uri, check_bucket_allowed
from db.models import DropRule

router = APIRouter(prefix="/v1/drops", tags=["drops"])


class DropRuleIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    prefix: str = Field(..., description="s3://bucket/path/: files go in <prefix>incoming/")
    template: dict[str, Any] = Field(
        ..., description="An inference job spec without input and output."
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("s3://") or len(v) <= 5:
            raise ValueError("must be an s3://bucket/path/ prefix")
        return v if v.endswith("/") else v + "/"


class DropRuleOut(BaseModel):
    name: str
    prefix: str
    template: dict[str, Any]
    enabled: bool
    incoming: str
    outputs: str


class DropRuleList(BaseModel):
    drops: list[DropRuleOut]


def _out(rule: DropRule) -> DropRuleOut:
    prefix = S3Uri.parse(rule.prefix)
    return DropRuleOut(
        name=rule.name,
        prefix=rule.prefix,
        template=rule.template,
        enabled=rule.enabled,
        incoming=str(prefix.join("incoming/")),
        outputs=str(prefix.join("outputs/")),
    )


def _check_template(template: dict[str, Any]) -> None:
    if "input" in template or "output" in template:
        raise InvalidSpec(
            "template must not set input or output: they come from the dropped file",
            field="template",
        )
    probe = {**template, "type": "inference", "input": "s3://x/y", "output": "s3://x/z/"}
    try:
        InferenceSpec.model_validate(probe)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidSpec(
            f"template.{field}: {str(err['msg']).removeprefix('Value error, ')}",
            field=f"template.{field}",
        ) from None


@router.post("", status_code=201, response_model=DropRuleOut, responses=ERROR_RESPONSES)
def add_drop(
    body: DropRuleIn, uow: UoW, tenant: CurrentTenant, settings: SettingsDep, store: StoreDep
) -> DropRuleOut:
    """Watch `<prefix>incoming/`: each new file becomes one job from `template`."""
    _check_template(body.template)
    check_bucket_allowed(settings, S3Uri.parse(body.prefix), "prefix")
    existing = uow.session.scalar(
        select(DropRule).where(DropRule.tenant_id == tenant.id, DropRule.name == body.name)
    )
    if existing is not None:
        raise Conflict(f"a drop folder named {body.name!r} exists; remove it first")
    rule = DropRule(tenant_id=tenant.id, name=body.name, prefix=body.prefix, template=body.template)
    uow.session.add(rule)
    uow.session.flush()
    return _out(rule)


@router.get("", response_model=DropRuleList, responses=ERROR_RESPONSES)
def list_drops(uow: UoW, tenant: CurrentTenant) -> DropRuleList:
    rules = uow.session.scalars(
        select(DropRule).where(DropRule.tenant_id == tenant.id).order_by(DropRule.name)
    )
    return DropRuleList(drops=[_out(r) for r in rules])


@router.delete("/{name}", status_code=204, responses=ERROR_RESPONSES)
def remove_drop(name: str, uow: UoW, tenant: CurrentTenant) -> Response:
    """Stop watching; jobs already created run to the end."""
    rule = uow.session.scalar(
        select(DropRule).where(DropRule.tenant_id == tenant.id, DropRule.name == name)
    )
    if rule is None:
        raise NotFound(f"no drop folder named {name!r}")
    rule.enabled = False
    rule.name = f"{rule.name}~removed~{rule.id.hex[:8]}"
    return Response(status_code=204)
