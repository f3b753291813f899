"""/v1/drops: a drop-folder rule's body, its examples, and a rule as answered."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from barge.jsonvalues import field_name, unstorable
from barge.uris import uri_problem
from db.models import DropRule
from services.drops import NAME_CHARS, NAME_PATTERN, folder


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


def drop_rule_out(rule: DropRule) -> DropRuleOut:
    return DropRuleOut(
        name=rule.name,
        prefix=rule.prefix,
        template=rule.template,
        enabled=rule.enabled,
        incoming=str(folder(rule, "incoming/")),
        outputs=str(folder(rule, "outputs/")),
    )
