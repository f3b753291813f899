"""The model registry: resolving what a job names as its model, and registering versions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from barge import onnxdirs
from barge.errors import Conflict, Forbidden, InvalidSpec, PermanentJobError, excerpt
from barge.jsonvalues import unstorable
from barge.modeldirs import check_model_files, is_onnx_dir, list_model_files
from barge.specs import BUILTIN_MODELS, MAX_VERSION
from barge.storage import S3Uri, check_bucket_allowed, local_model_dir
from barge.uris import normalise
from db import repositories as repo
from db.models import Model
from services import audit, quotas
from services.context import ServiceContext
from services.scopes import Scopes, require_read, scopes_for

REGISTER_TRIES = 5  # two registrations of one name at once: the loser takes the next version


def resolve(ctx: ServiceContext, ref: str, field: str = "model", *, tenant_scopes: Scopes) -> str:
    """``resolve_model``'s location, for a field that takes no adapter (refused, naming its
    base)."""
    uri, base = resolve_model(ctx, ref, field, tenant_scopes=tenant_scopes)
    if base is not None:
        raise InvalidSpec(
            f"{field}: model {excerpt(ref)} is a LoRA adapter over {base}; name its base here "
            "(or register a merged export with method.merge)",
            field=field,
        )
    return uri


def resolve_model(
    ctx: ServiceContext, ref: str, field: str = "model", *, tenant_scopes: Scopes
) -> tuple[str, str | None]:
    """The model's location and, for a registered LoRA adapter, its base's (both inside the
    tenant's read scopes), else None. The model's location: a built-in model's name, an s3://
    prefix, an allowed local directory, or a registry entry of the tenant (``name`` is the
    newest version, ``name@N`` version N). An s3:// location, named or registered, must lie
    inside the tenant's read scopes (checked before the store is asked anything). A local
    directory is returned as it was sent (the worker checks and resolves it again), so every
    message about it names what the user wrote, never the directory it resolves to."""
    if ref in BUILTIN_MODELS:
        return ref, None  # shipped with the worker
    if ref.startswith("s3://"):
        uri = S3Uri.parse(ref, field=field)  # a spec's model: normalised, a prefix
        require_read(tenant_scopes, str(uri), field)
        check_bucket_allowed(ctx.settings, uri, field)
        if not ctx.store.list(uri):
            raise InvalidSpec(f"no model directory at {uri}", field=field)
        return str(uri), None
    try:
        local = local_model_dir(ctx.settings, ref)  # raises when not under BARGE_LOCAL_MODEL_DIRS
    except InvalidSpec as exc:
        raise InvalidSpec(exc.message, field=field) from None
    if local is not None:  # kept as sent: what it resolves to is for the worker, not for echoes
        if not local.is_dir():
            raise InvalidSpec(f"no model directory at {excerpt(ref)}", field=field)
        return ref, None
    name, _, version = ref.partition("@")
    if version and (not version.isdigit() or not 1 <= int(version) <= MAX_VERSION):
        raise InvalidSpec(
            f"model version must be a number from 1 to {MAX_VERSION}: {excerpt(ref)}",
            field=field,
        )
    found = repo.find_model(ctx.session, ctx.tenant.id, name, int(version) if version else None)
    if found is None:
        raise InvalidSpec(
            f"model {excerpt(ref)} is neither an s3:// URI nor a registered model name[@version]",
            field=field,
        )
    for location in (found.uri, found.adapter_base_uri):
        if location and location.startswith("s3://") and not tenant_scopes.may_read(location):
            raise Forbidden(
                f"{field}: model {excerpt(ref)} is registered at a location this tenant may "
                "not read (any more); ask an admin for a scope that covers it, or register it "
                "again",
                field=field,
            )
    return found.uri, found.adapter_base_uri


def registered(session: Session, tenant_id: uuid.UUID, ref: str) -> Model | None:
    """The tenant's registry entry ``ref`` names (``name``: the newest version, ``name@N``),
    or None: a directory, a built-in model, an unknown name, a version that is no number, or
    text no name can hold (a NUL)."""
    if ref.startswith(("s3://", "/", "file://")) or ref in BUILTIN_MODELS or unstorable(ref):
        return None
    name, _, version = ref.partition("@")
    if version and not (
        version.isascii() and version.isdigit() and 1 <= int(version[:11]) <= MAX_VERSION
    ):
        return None
    return repo.find_model(session, tenant_id, name, int(version) if version else None)


ONNX_ONLY_TASKS = ("regress",)


def check_task_fits(task: str, onnx_task: str | None, field: str) -> None:
    """An ONNX model runs the task its barge.json names; ``regress`` needs an ONNX model.
    ``onnx_task`` is that task, or None for a Hugging Face directory."""
    if onnx_task is not None and task != onnx_task:
        raise InvalidSpec(
            f"the model is an ONNX model whose barge.json output means {onnx_task!r}; use task "
            f"{onnx_task!r}, not {task!r}",
            field=field,
        )
    if onnx_task is None and task in ONNX_ONLY_TASKS:
        raise InvalidSpec(
            f"task {task!r} runs ONNX models only (a directory with model.onnx and barge.json)",
            field=field,
        )


def check_name_keeps_task(session: Session, tenant_id: uuid.UUID, name: str, task: str) -> None:
    """A new version of ``name`` must keep the task its versions have."""
    latest = repo.find_model(session, tenant_id, name)
    if latest is not None and latest.task != task:
        raise InvalidSpec(
            f"model {name!r} is registered for task {latest.task!r}; a new version must keep "
            "the task, or choose another model_name",
            field="model_name",
        )


@dataclass(frozen=True)
class RegisterVersion:
    """A model version to register as the next version of ``name``: where it lies, the task it
    runs, and what is known of it (a fine-tune's base, metrics and job, the base a LoRA adapter
    applies to)."""

    name: str
    uri: str
    task: str
    base_model: str | None = None
    metrics: dict[str, Any] | None = None
    job_id: uuid.UUID | None = None
    adapter_base_uri: str | None = None


def register_version(ctx: ServiceContext, version: RegisterVersion) -> Model:
    """Add (and audit) the next version of ``version.name`` for the context's tenant, inside the
    caller's transaction. A concurrent registration of the same name makes the unique constraint refuse
    one of them: that one retries (in a savepoint) with the next version."""
    session = ctx.session
    for _ in range(REGISTER_TRIES):
        try:
            with session.begin_nested():
                model = repo.register_model(
                    session,
                    ctx.tenant.id,
                    version.name,
                    version.uri,
                    version.task,
                    base_model=version.base_model,
                    metrics=version.metrics,
                    job_id=version.job_id,
                    adapter_base_uri=version.adapter_base_uri,
                )
        except IntegrityError:
            continue
        target = f"model:{model.name}@{model.version}"
        audit.record(
            ctx, "model.register", target, uri=model.uri, task=model.task, job=model.job_id
        )
        return model
    raise Conflict(f"{version.name} was registered concurrently {REGISTER_TRIES} times; retry")


def register_directory(ctx: ServiceContext, version: RegisterVersion) -> Model:
    """Register an existing model directory (inside the tenant's read scopes, checked to be
    loadable) as the next version."""
    settings, store = ctx.settings, ctx.store
    uri = S3Uri.parse(normalise(version.uri, "uri", prefix=True), field="uri")
    require_read(scopes_for(ctx.session, settings, ctx.tenant.id), str(uri), "uri")
    check_bucket_allowed(settings, uri, "uri")
    try:
        files = list_model_files(settings, store, str(uri))
        check_model_files(str(uri), files)
        onnx_task = (
            onnxdirs.check_directory(settings, store, str(uri)).task if is_onnx_dir(files) else None
        )
    except PermanentJobError as exc:
        raise InvalidSpec(exc.message, field="uri") from None
    check_task_fits(version.task, onnx_task, "task")
    quotas.check_registration(ctx.session, settings, ctx.tenant.id)  # 429: max_model_versions
    return register_version(ctx, replace(version, uri=str(uri)))
