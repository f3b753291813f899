"""/v1/drops: drop-folder rules (an S3 prefix mapped to a job template)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from api.deps import Context, CurrentTenant, UoW
from api.schemas.drops import DROP_EXAMPLES, DropRuleIn, DropRuleList, DropRuleOut, drop_rule_out
from api.schemas.errors import errors
from db import repositories as repo
from services import drops

router = APIRouter(prefix="/v1/drops", tags=["drops"])


@router.post(
    "", status_code=201, response_model=DropRuleOut, responses=errors(403, 409, 502, body=True)
)
def add_drop(
    body: Annotated[DropRuleIn, Body(openapi_examples=DROP_EXAMPLES)], ctx: Context
) -> DropRuleOut:
    """Watch `<prefix>incoming/`: each new file becomes one job from `template`."""
    return drop_rule_out(
        drops.add_rule(ctx, drops.AddDropRule(body.name, body.prefix, body.template))
    )


@router.get("", response_model=DropRuleList, responses=errors())
def list_drops(uow: UoW, tenant: CurrentTenant) -> DropRuleList:
    return DropRuleList(drops=[drop_rule_out(r) for r in repo.drop_rules(uow.session, tenant.id)])


@router.delete("/{name}", status_code=204, responses=errors(404))
def remove_drop(name: str, ctx: Context) -> Response:
    """Stop watching; jobs already created run to the end."""
    drops.remove_rule(ctx, name)
    return Response(status_code=204)
