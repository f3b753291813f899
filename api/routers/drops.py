"""/v1/drops: drop-folder rules (an S3 prefix mapped to a job template)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field, field_validator

from api.deps import CurrentPrincipal, CurrentTenant, SettingsDep, StoreDep, UoW
from api.schemas import errors
from barge.jsonvalues import field_name, unstorable
from barge.storage import S3Uri
from barge.uris import uri_problem
from db import repositories as repo
from db.models import DropRule
from services import audit, drops
from services.drops import NAME_CHARS, NAME_PATTERN

router = APIRouter(prefix="/v1/drops", tags=["drops"])


class DropRuleIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=NAME_CHARS, pattern=NAME_PATTERN)
    prefix: str = Field(..., description="s3://bucket/path/: files go in <prefix>incoming/")
    template: dict[str, Any] = Field(
        ..., description="An inference job spec without input and output."
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        problem = uri_problem(v)
        if problem:
            raise ValueError(f"must be an s3://bucket/path/ prefix: {problem}")
        return v if v.endswith("/") else v + "/"

    @field_validator("template")
    @classmethod
    def _storable(cls, v: dict[str, Any]) -> dict[str, Any]:
        found = unstorable(v)
        if found:
            path, problem = found
            where = f" (at template.{field_name(path)})" if path else ""
            raise ValueError(f"{problem}{where}")
        return v


class DropRuleOut(BaseModel):
    name: str
    prefix: str
    template: dict[str, Any]
    enabled: bool
    incoming: str
    outputs: str


class DropRuleList(BaseModel):
    drops: list[DropRuleOut]


DROP_EXAMPLES = {
    "embed": {
        "summary": "Embed every file dropped into s3://barge/acme/drops/reviews/incoming/",
        "value": {
            "name": "reviews",
            "prefix": "s3://barge/acme/drops/reviews/",
            "template": {
                "model": "s3://barge/acme/models/all-minilm-l6-v2/",
                "task": "embed",
                "id_field": "id",
            },
        },
    }
}


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


@router.post(
    "", status_code=201, response_model=DropRuleOut, responses=errors(403, 409, 502, body=True)
)
def add_drop(
    body: Annotated[DropRuleIn, Body(openapi_examples=DROP_EXAMPLES)],
    uow: UoW,
    principal: CurrentPrincipal,
    settings: SettingsDep,
    store: StoreDep,
) -> DropRuleOut:
    """Watch `<prefix>incoming/`: each new file becomes one job from `template`."""
    rule = drops.add_rule(
        uow.session, settings, principal.tenant.id, body.name, body.prefix, body.template
    )
    audit.record(
        uow.session, principal, None, "drop.create", f"drop:{rule.name}", prefix=rule.prefix
    )
    return _out(rule)


@router.get("", response_model=DropRuleList, responses=errors())
def list_drops(uow: UoW, tenant: CurrentTenant) -> DropRuleList:
    return DropRuleList(drops=[_out(r) for r in repo.drop_rules(uow.session, tenant.id)])


@router.delete("/{name}", status_code=204, responses=errors(404))
def remove_drop(name: str, uow: UoW, principal: CurrentPrincipal) -> Response:
    """Stop watching; jobs already created run to the end."""
    drops.remove_rule(uow.session, principal.tenant.id, name)
    audit.record(uow.session, principal, None, "drop.delete", f"drop:{name}")
    return Response(status_code=204)
