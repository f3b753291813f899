"""Drop folders: the rules (an S3 prefix mapped to a job template) and the job spec a dropped
object becomes. The scanning and moving of objects is the worker's (``worker.control.drops``)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from barge.errors import Conflict, InvalidSpec, NotFound, excerpt
from barge.jsonvalues import field_name
from barge.records import DATA_SUFFIXES, detect_format
from barge.specs import InferenceSpec
from barge.storage import ObjectInfo, ObjectStore, S3Uri, check_bucket_allowed
from barge.uris import key_problem, overlap
from db import repositories as repo
from db.models import DropRule
from services import audit, scopes
from services.context import ServiceContext

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
NAME_CHARS = 200
OVERRIDE_SUFFIX = ".job.json"  # <name>.job.json beside a dropped file overrides the template
# Placeholder locations (valid URIs) that stand in for a dropped file and its output folder.
PROBE_INPUT, PROBE_OUTPUT = "s3://template-check/in.jsonl", "s3://template-check/out/"


def check_template(template: dict[str, Any]) -> None:
    """A template is an inference spec without input and output."""
    if "input" in template or "output" in template:
        raise InvalidSpec(
            "template must not set input or output: they come from the dropped file",
            field="template",
        )
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


@dataclass(frozen=True)
class AddDropRule:
    """A drop folder to watch: its name, its ``s3://`` prefix (ending in "/") and the job
    template each dropped file is run with."""

    name: str
    prefix: str
    template: dict[str, Any]


def add_rule(ctx: ServiceContext, command: AddDropRule) -> DropRule:
    """Watch ``<prefix>incoming/`` for the context's tenant."""
    prefix, template, tenant_id = command.prefix, command.template, ctx.tenant.id
    check_template(template)
    mine = scopes.scopes_for(ctx.session, ctx.settings, tenant_id)
    scopes.require_write(mine, prefix, "prefix")  # it moves and writes objects under it
    model = template.get("model")
    if isinstance(model, str) and model.startswith("s3://"):
        scopes.require_read(mine, model, "template.model")
    check_bucket_allowed(ctx.settings, S3Uri.parse(prefix), "prefix")
    _check_owner(ctx, prefix)
    rule = repo.add_drop_rule(ctx.session, tenant_id, command.name, prefix, template)
    if rule is None:
        raise Conflict(f"a drop folder named {command.name!r} exists; remove it first")
    audit.record(ctx, "drop.create", f"drop:{rule.name}", prefix=rule.prefix)
    return rule


def _check_owner(ctx: ServiceContext, prefix: str) -> None:
    """One owner per drop prefix: a new rule may not overlap another rule (any tenant's), nor
    the write scopes of another tenant (who could drop files into it). Concurrent adds take this check in turn (the lock is
    held until the caller commits)."""
    session, tenant_id = ctx.session, ctx.tenant.id
    repo.lock_submissions(session)
    for rule in repo.enabled_drop_rules(session):
        if overlap(prefix, rule.prefix):
            whose = (
                f"drop folder {rule.name!r}"
                if rule.tenant_id == tenant_id
                else ("another tenant's drop folder")
            )
            raise Conflict(
                f"prefix {prefix} overlaps {whose}; each drop folder needs a prefix of its own",
                field="prefix",
            )
    for other in repo.tenants_except(session, tenant_id):
        theirs = scopes.scopes_of(other, ctx.settings)
        if any(s != scopes.ANY and overlap(prefix, s) for s in theirs.write):
            raise Conflict(
                f"prefix {prefix} overlaps storage another tenant may write to (and so drop "
                "files into); choose a prefix only your tenant can write to",
                field="prefix",
            )


def remove_rule(ctx: ServiceContext, name: str) -> None:
    """Stop watching; jobs already created run to the end."""
    # A name no rule can have (a removed rule's NAME~removed~... included) needs no query.
    valid = len(name) <= NAME_CHARS and re.fullmatch(NAME_PATTERN, name)
    rule = repo.live_drop_rule(ctx.session, ctx.tenant.id, name) if valid else None
    if rule is None:
        raise NotFound(f"no drop folder named {excerpt(name)}")
    repo.remove_drop_rule(ctx.session, rule)
    audit.record(ctx, "drop.delete", f"drop:{name}")


def folder(rule: DropRule, name: str) -> S3Uri:
    """One of the rule's folders under its prefix: ``incoming/``, ``outputs/``, ``done/``,
    ``failed/``."""
    return S3Uri.parse(rule.prefix).join(name)


def drop_name(filename: str) -> str:
    """`reviews.csv.gz` → `reviews`: the name outputs and status files are called by."""
    name = filename[:-3] if filename.lower().endswith(".gz") else filename
    for suffix in DATA_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or filename
    return filename


def spec_for_object(
    session: Session,
    store: ObjectStore,
    rule: DropRule,
    info: ObjectInfo,
    override: ObjectInfo | None,
    relative: str | None = None,
) -> InferenceSpec:
    """The job a dropped object becomes: the rule's template (plus ``<name>.job.json``), the
    object as input, ``<prefix>outputs/<name>/`` as output (``<name>-<etag>/`` when a job
    already has that name's outputs). ``relative`` is the object's path under ``incoming/``
    (``2024/05/reviews.csv``), so a file in a subfolder is named by its path
    (``outputs/2024/05/reviews/``). ValueError or InvalidSpec say why it cannot be."""
    filename = relative or info.uri.key.rsplit("/", 1)[-1]
    name = drop_name(filename)
    problem = key_problem(filename)
    if problem:
        raise ValueError(f"cannot take {excerpt(filename)}: its path {problem}")
    base = filename.rsplit("/", 1)[-1]
    if base.startswith(("_", ".")):
        raise ValueError(
            f"{base} is not read: Barge skips names starting with '_' or '.' (markers, hidden "
            "files); rename it to drop it"
        )
    if info.size == 0:
        raise ValueError(f"{filename} is empty")
    fields: dict[str, Any] = dict(rule.template)
    if override is not None:
        try:
            extra = json.loads(store.get_bytes(override.uri))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}{OVERRIDE_SUFFIX} is not valid JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise ValueError(f"{name}{OVERRIDE_SUFFIX} must hold a JSON object")
        fields.update({k: v for k, v in extra.items() if k not in ("input", "output")})
    if detect_format(filename, fields.get("input_format", "auto")) is None:
        raise ValueError(
            f"cannot read {filename}: Barge reads .jsonl, .csv and .parquet files (optionally .gz)"
        )
    outputs = folder(rule, "outputs/")
    output = outputs.join(f"{name}/")
    taken = store.head(output.join("_manifest.json")) is not None
    if taken or repo.job_with_output_overlapping(session, str(output)) is not None:
        # the same name dropped again: the first job keeps its outputs
        output = outputs.join(f"{name}-{info.etag[:8] or uuid.uuid4().hex[:8]}/")
    fields.update(type="inference", input=str(info.uri), output=str(output))
    fields.setdefault("metadata", {})
    fields["metadata"] = {**fields["metadata"], "drop_rule": rule.name, "drop_object": filename}
    return InferenceSpec.model_validate(fields)
