"""/v1/drops: drop-folder rules (an S3 prefix mapped to a job template)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, ValidationError, field_validator

from api.deps import CurrentTenant, SettingsDep, StoreDep, UoW
from api.schemas import ERROR_RESPONSES, field_name, unstorable
from barge.errors import Conflict, InvalidSpec, NotFound, excerpt
from barge.specs import InferenceSpec
from barge.storage import S3Uri, check_bucket_allowed
from barge.uris import uri_problem
from db import repositories as repo
from db.models import DropRule

router = APIRouter(prefix="/v1/drops", tags=["drops"])

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
NAME_CHARS = 200
PROBE_INPUT, PROBE_OUTPUT = "s3://template-check/in.jsonl", "s3://template-check/out/"


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
    # Placeholder locations (valid URIs) stand in for the dropped file and its output folder.
    probe = {**template, "type": "inference", "input": PROBE_INPUT, "output": PROBE_OUTPUT}
    try:
        InferenceSpec.model_validate(probe)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = field_name(err["loc"])
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
    rule = repo.add_drop_rule(uow.session, tenant.id, body.name, body.prefix, body.template)
    if rule is None:
        raise Conflict(f"a drop folder named {body.name!r} exists; remove it first")
    return _out(rule)


@router.get("", response_model=DropRuleList, responses=ERROR_RESPONSES)
def list_drops(uow: UoW, tenant: CurrentTenant) -> DropRuleList:
    return DropRuleList(drops=[_out(r) for r in repo.drop_rules(uow.session, tenant.id)])


@router.delete("/{name}", status_code=204, responses=ERROR_RESPONSES)
def remove_drop(name: str, uow: UoW, tenant: CurrentTenant) -> Response:
    """Stop watching; jobs already created run to the end."""
    # A name no rule can have (a removed rule's NAME~removed~... included) needs no query.
    valid = len(name) <= NAME_CHARS and re.fullmatch(NAME_PATTERN, name)
    rule = repo.live_drop_rule(uow.session, tenant.id, name) if valid else None
    if rule is None:
        raise NotFound(f"no drop folder named {excerpt(name)}")
    repo.remove_drop_rule(uow.session, rule)
    return Response(status_code=204)
