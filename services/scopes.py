"""Tenants' storage scopes: the prefixes a tenant may read and those it may write.

Every location a tenant names (a job's input, output, model, base model, training and validation
data, a drop folder's prefix, a registry entry's directory) must lie inside its scopes. The check
runs before Barge touches the store, so a refusal says only that the location is not allowed,
never whether anything is there; and it runs again in the worker before a job reads or writes
(``denial``), against the job row and the tenant's scopes as they are then.

A scope is a normalised ``s3://bucket/path/`` prefix, or ``*`` (any bucket that
``BARGE_ALLOWED_BUCKETS`` allows: for single-tenant set-ups). A tenant whose own scopes are not
set gets the settings' templates with ``{tenant}`` replaced by its name.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from barge.errors import Forbidden, InvalidSpec, PermanentJobError, excerpt
from barge.settings import Settings
from barge.uris import SCHEME, contains, uri_problem
from db.models import Job, Tenant

ANY = "*"
MAX_SCOPES = 50
# A tenant name that can stand for a path segment in a template: no "/" (tenant "a" must never
# contain tenant "a/b"), no dots alone, nothing a key may not hold.
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Scopes:
    """Where one tenant may read and write; ``from_template`` says which came from settings."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    read_from_template: bool = False
    write_from_template: bool = False

    def may_read(self, uri: str) -> bool:
        return _inside(self.read + self.write, uri)

    def may_write(self, uri: str) -> bool:
        return _inside(self.write, uri)


def _inside(scopes: tuple[str, ...], uri: str) -> bool:
    if not uri.startswith(SCHEME):
        return False
    return any(scope == ANY or contains(scope, uri) for scope in scopes)


def check_scopes(values: list[str], field: str) -> list[str]:
    """An admin's scope list, normalised (each a prefix ending in "/", or ``*``), without
    repeats; InvalidSpec naming ``field`` and what to fix."""
    if len(values) > MAX_SCOPES:
        raise InvalidSpec(f"{field}: at most {MAX_SCOPES} scopes", field=field)
    out: list[str] = []
    for value in values:
        if value != ANY:
            problem = uri_problem(value)
            if problem:
                raise InvalidSpec(f"{field}: {problem}", field=field)
            if not value.endswith("/"):
                value += "/"
        if value not in out:
            out.append(value)
    return out


def render(templates: list[str], tenant_name: str) -> tuple[str, ...]:
    """The settings' templates for ``tenant_name``; a name that cannot stand in a path, or a
    template that does not render to a usable prefix, gives nothing (never a wider scope)."""
    out: list[str] = []
    for template in templates:
        if template == ANY:
            out.append(ANY)
            continue
        if "{tenant}" in template and not _TEMPLATE_NAME.fullmatch(tenant_name):
            continue
        value = template.replace("{tenant}", tenant_name)
        if uri_problem(value) is None:
            out.append(value if value.endswith("/") else value + "/")
    return tuple(out)


def scopes_of(tenant: Tenant, settings: Settings) -> Scopes:
    """The tenant's own scopes where set, else the settings' templates rendered for it."""
    read_default = tenant.read_scopes is None
    write_default = tenant.write_scopes is None
    return Scopes(
        read=render(settings.tenant_read_scopes, tenant.name)
        if read_default
        else tuple(tenant.read_scopes or ()),
        write=render(settings.tenant_write_scopes, tenant.name)
        if write_default
        else tuple(tenant.write_scopes or ()),
        read_from_template=read_default,
        write_from_template=write_default,
    )


def scopes_for(session: Session, settings: Settings, tenant_id: uuid.UUID) -> Scopes:
    """``scopes_of`` the tenant with this id (no scopes at all if it is gone)."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return Scopes(read=(), write=())
    return scopes_of(tenant, settings)


def _refusal(uri: str, field: str, verb: str) -> str:
    return (
        f"{field}: this API key's tenant may not {verb} {excerpt(uri)}; ask an admin for a "
        "storage scope that covers it (`barge tenants show` lists a tenant's scopes)"
    )


def require_read(scopes: Scopes, uri: str, field: str) -> None:
    """Forbidden (naming only the location the caller gave) unless ``uri`` is readable."""
    if not scopes.may_read(uri):
        raise Forbidden(_refusal(uri, field, "read"), field=field)


def require_write(scopes: Scopes, uri: str, field: str) -> None:
    """Forbidden unless the tenant may write under ``uri``."""
    if not scopes.may_write(uri):
        raise Forbidden(_refusal(uri, field, "write"), field=field)


def locations(
    spec: dict[str, Any],
    model_uri: str | None,
    output_uri: str,
    adapter_base_uri: str | None = None,
) -> list[tuple[str, str, str]]:
    """(field, uri, "read" | "write") for every storage location a stored job touches: its
    spec's data, its resolved model (when in the store) and its output."""
    fields = ("train", "validation") if spec.get("type") == "finetune" else ("input",)
    out = [(f, u, "read") for f in fields if isinstance(u := spec.get(f), str) and u]
    if model_uri and model_uri.startswith(SCHEME):
        out.append(("base_model" if spec.get("type") == "finetune" else "model", model_uri, "read"))
    if adapter_base_uri and adapter_base_uri.startswith(SCHEME):
        out.append(("model", adapter_base_uri, "read"))  # the base a LoRA adapter applies to
    out.append(("output", output_uri, "write"))
    return out


def denial(
    session: Session, settings: Settings, job: Job, tenant_scopes: Scopes | None = None
) -> str | None:
    """The worker's check before a job reads or writes: why a location of the job row, as it is
    now, lies outside its tenant's scopes as they are now (naming the field only), or None.
    ``tenant_scopes``: those scopes, when the caller has just read the tenant."""
    scopes = (
        tenant_scopes if tenant_scopes is not None else scopes_for(session, settings, job.tenant_id)
    )
    for field, uri, mode in locations(
        job.spec, job.model_uri, job.output_uri, job.adapter_base_uri
    ):
        allowed = scopes.may_write(uri) if mode == "write" else scopes.may_read(uri)
        if not allowed:
            return (
                f"{field} is outside the storage this job's tenant may {mode} (its scopes "
                "changed, or the job row was edited after it was accepted); nothing was "
                f"{'written' if mode == 'write' else 'read'}"
            )
    return None


def check_job(session: Session, settings: Settings, job: Job) -> None:
    """``denial`` as a PermanentJobError (it fails the job)."""
    denied = denial(session, settings, job)
    if denied:
        raise PermanentJobError(denied)
