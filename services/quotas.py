"""Quotas: how much one tenant may hold and ask for.

Every tenant gets the settings' defaults (``BARGE_QUOTA_*``); an admin overrides them limit by
limit (``tenants.quotas``, a JSON object; ``check_overrides`` validates one before it is stored,
``effective`` merges). They are checked where the figures are known:

- at submit (``check_submission``, from ``services.submission.create_job``): a fine-tune's
  ``checkpoint_every_seconds`` below ``min_checkpoint_seconds`` is a 422 naming the field; a
  tenant already holding ``max_active_jobs`` queued + running jobs gets a 429 with
  ``Retry-After``. A tenant's submissions take this check in turn (a lock until commit), so
  concurrent ones cannot all slip under the limit; other tenants' never wait for it.
- when the job is planned (``plan_overrun``, from ``worker.control.planner``):
  ``max_shards_per_job``, ``max_records_per_job`` and ``max_finetune_steps``; the job fails naming
  the limit.
- what a tenant holds, before it holds more: ``max_openai_files`` and
  ``max_openai_storage_bytes`` at an upload to /openai/v1/files (``check_openai_upload``; the
  output files Barge writes count, and are never refused), ``max_model_versions`` when a user
  registers a version (``check_registration``) and when a fine-tune is submitted (it registers
  one when it ends; one admitted under the quota still registers its versions, so its training
  is never thrown away). A 429 with ``x-should-retry: false``: waiting frees nothing.

Fair share between tenants (who runs next on a free worker) is the worker's claim
(``worker.lifecycle.claim``), not a quota.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from barge.errors import InvalidSpec, QuotaExceeded, excerpt
from barge.settings import Settings
from barge.specs import FinetuneSpec, JobSpec
from db import repositories as repo
from db.models import Tenant
from db.repositories import openai as openai_repo

log = logging.getLogger(__name__)

# What a 429 for max_active_jobs tells the client to wait before trying again, in seconds.
RETRY_AFTER_SECONDS = 30


class Quotas(BaseModel):
    """One tenant's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_active_jobs: int = Field(ge=1, le=1_000_000, description="Queued + running jobs.")
    max_shards_per_job: int = Field(ge=1, le=10_000_000)
    max_records_per_job: int = Field(ge=1, le=10**13)
    max_finetune_steps: int = Field(ge=1, le=10**10, description="Optimizer steps.")
    min_checkpoint_seconds: float = Field(
        ge=1.0, le=86_400.0, description="The shortest checkpoint_every_seconds accepted."
    )
    max_openai_files: int = Field(
        ge=1, le=10**9, description="OpenAI files held: uploads and the files Barge wrote."
    )
    max_openai_storage_bytes: int = Field(
        ge=1, le=10**16, description="Bytes of the OpenAI files held, in all."
    )
    max_model_versions: int = Field(
        ge=1, le=10**9, description="Registered model versions, of every name."
    )


QUOTA_NAMES: tuple[str, ...] = tuple(Quotas.model_fields)

# One validator per limit, with that limit's type and bounds.
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Annotated[info.annotation, *info.metadata])  # type: ignore[arg-type]
    for name, info in Quotas.model_fields.items()
}


def defaults(settings: Settings) -> Quotas:
    """The settings' quotas (``BARGE_QUOTA_*``), every tenant's unless overridden."""
    return Quotas.model_construct(
        **{name: getattr(settings, f"quota_{name}") for name in QUOTA_NAMES}
    )


def _check_one(name: str, value: object) -> Any:
    if isinstance(value, bool):  # JSON true is not a number
        raise InvalidSpec(
            f"quota {name} must be a number, got {excerpt(value)}", field=f"quotas.{name}"
        )
    try:
        return _ADAPTERS[name].validate_python(value)
    except ValidationError as exc:
        problem = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise InvalidSpec(
            f"quota {name}: {problem} (got {excerpt(value)})", field=f"quotas.{name}"
        ) from None


def check_overrides(overrides: dict[str, object]) -> dict[str, object]:
    """An admin's overrides, validated: known names, each value of its type and within sane
    bounds (``"5"`` from a command line is read as 5). A value of None means "back to the
    default" and is kept as None, for the caller to drop when it merges. Raises InvalidSpec
    naming the first quota to fix (``field`` is ``quotas.<name>``)."""
    if not isinstance(overrides, dict):
        raise InvalidSpec("quotas must be an object of limit names to values", field="quotas")
    checked: dict[str, object] = {}
    for name, value in overrides.items():
        if name not in QUOTA_NAMES:
            raise InvalidSpec(
                f"unknown quota {excerpt(name)}; quotas are {', '.join(QUOTA_NAMES)}",
                field="quotas",
            )
        checked[name] = None if value is None else _check_one(name, value)
    return checked


def effective(tenant: Tenant | None, settings: Settings) -> Quotas:
    """The tenant's quotas: the defaults, overridden by the tenant's own. A stored override
    that is not valid (a row edited by hand) is ignored, with a warning: the default holds."""
    limits = defaults(settings)
    stored = (tenant.quotas if tenant is not None else None) or {}
    updates: dict[str, Any] = {}
    for name, value in stored.items():
        if value is None or name not in QUOTA_NAMES:
            continue
        try:
            updates[name] = _check_one(name, value)
        except InvalidSpec as exc:
            log.warning("tenant %s: stored %s ignored", tenant.name if tenant else "?", exc)
    return limits.model_copy(update=updates) if updates else limits


def check_submission(
    session: Session, settings: Settings, tenant_id: uuid.UUID, spec: JobSpec
) -> None:
    """The quotas a submission meets before anything is stored: the checkpoint interval (422)
    and the tenant's active jobs (429 with Retry-After). Takes the tenant's submission lock,
    held until the caller commits."""
    limits = effective(session.get(Tenant, tenant_id), settings)
    every = spec.checkpoint_every_seconds if isinstance(spec, FinetuneSpec) else None
    if every is not None and every < limits.min_checkpoint_seconds:
        raise InvalidSpec(
            f"checkpoint_every_seconds is {every:g}, below this tenant's quota "
            f"min_checkpoint_seconds ({limits.min_checkpoint_seconds:g}); checkpoint less often",
            field="checkpoint_every_seconds",
        )
    if isinstance(spec, FinetuneSpec):  # it registers a version when it ends
        check_model_versions(session, limits, tenant_id, field="model_name")
    repo.lock_tenant_submissions(session, tenant_id)
    active = repo.active_job_count(session, tenant_id)
    if active >= limits.max_active_jobs:
        raise QuotaExceeded(
            f"quota max_active_jobs is {limits.max_active_jobs} and this tenant has {active} "
            "jobs queued or running: submit again when one has finished (or cancel one), or "
            "ask an admin to raise the quota",
            retry_after=RETRY_AFTER_SECONDS,
            quota="max_active_jobs",
            limit=limits.max_active_jobs,
            active=active,
        )


class HoldingExceeded(QuotaExceeded):
    """A quota on what a tenant holds (files, their bytes, model versions) is reached. Waiting
    does not free it (deleting, or an admin raising it, does), so clients are told not to
    retry: ``x-should-retry: false``, which OpenAI's SDKs honour."""

    def __init__(self, message: str, *, field: str | None = None, **detail: Any):
        super().__init__(message, retry_after=RETRY_AFTER_SECONDS, field=field, **detail)

    @property
    def headers(self) -> dict[str, str]:
        return {**super().headers, "x-should-retry": "false"}


def check_openai_upload(session: Session, settings: Settings, tenant: Tenant, size: int) -> None:
    """Before an upload of ``size`` bytes is stored: room for one more file under the tenant's
    max_openai_files and its bytes under max_openai_storage_bytes (a 429 naming the quota and
    the figures). Takes the tenant's files lock, held until the caller commits, so concurrent
    uploads take the check in turn."""
    limits = effective(tenant, settings)
    repo.lock_tenant(session, repo.FILES_LOCK, tenant.id)
    count, used = openai_repo.openai_file_usage(session, tenant.id)
    free = "delete files it no longer needs (DELETE /openai/v1/files/{file_id}), or ask an admin"
    if count >= limits.max_openai_files:
        raise HoldingExceeded(
            f"quota max_openai_files is {limits.max_openai_files} and this tenant holds {count} "
            f"files: {free} to raise the quota",
            field="file",
            quota="max_openai_files",
            limit=limits.max_openai_files,
            files=count,
        )
    if used + size > limits.max_openai_storage_bytes:
        raise HoldingExceeded(
            f"quota max_openai_storage_bytes is {limits.max_openai_storage_bytes} and this "
            f"tenant's files hold {used} bytes: this file's {size} bytes would make "
            f"{used + size}; {free} to raise the quota",
            field="file",
            quota="max_openai_storage_bytes",
            limit=limits.max_openai_storage_bytes,
            used=used,
            size=size,
        )


def check_registration(session: Session, settings: Settings, tenant_id: uuid.UUID) -> None:
    """Before a user registers a version: room under the tenant's max_model_versions (a 429
    naming it). Takes the tenant's registry lock, held until the caller commits."""
    limits = effective(session.get(Tenant, tenant_id), settings)
    repo.lock_tenant(session, repo.REGISTRY_LOCK, tenant_id)
    check_model_versions(session, limits, tenant_id, field=None)


def check_model_versions(
    session: Session, limits: Quotas, tenant_id: uuid.UUID, field: str | None
) -> None:
    """Room for one more registered version under max_model_versions, or a 429 naming it."""
    count = repo.model_version_count(session, tenant_id)
    if count >= limits.max_model_versions:
        raise HoldingExceeded(
            f"quota max_model_versions is {limits.max_model_versions} and this tenant has "
            f"registered {count} model versions: ask an admin to raise the quota",
            field=field,
            quota="max_model_versions",
            limit=limits.max_model_versions,
            registered=count,
        )


@dataclass(frozen=True)
class Overrun:
    """A planned job over one of its tenant's limits."""

    quota: str
    limit: int
    value: int
    what: str  # "shards", "records", "optimizer steps"
    hint: str

    @property
    def message(self) -> str:
        return (
            f"quota exceeded: the job has {self.value} {self.what}, over this tenant's "
            f"{self.quota} of {self.limit}; {self.hint}, or ask an admin to raise the quota"
        )


def plan_overrun(
    limits: Quotas, *, shards: int, records: int, steps: int | None = None
) -> Overrun | None:
    """The first limit a planned job exceeds, or None."""
    if shards > limits.max_shards_per_job:
        return Overrun(
            "max_shards_per_job",
            limits.max_shards_per_job,
            shards,
            "shards",
            "use a larger shard_size or split the input",
        )
    if records > limits.max_records_per_job:
        return Overrun(
            "max_records_per_job",
            limits.max_records_per_job,
            records,
            "records",
            "split the input into several jobs",
        )
    if steps is not None and steps > limits.max_finetune_steps:
        return Overrun(
            "max_finetune_steps",
            limits.max_finetune_steps,
            steps,
            "optimizer steps",
            "train fewer epochs or use a larger batch_size",
        )
    return None
