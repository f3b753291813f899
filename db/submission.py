"""Accepting a job: the checks a submission must pass against the stores, and its creation.

Shared by the HTTP API and the drop-folder scanner, so both accept exactly the same jobs.
"""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from barge.errors import Conflict, InvalidSpec
from barge.records import detect_format, peek_fields, resolve_inputs
from barge.settings import Settings
from barge.specs import InferenceSpec
from barge.storage import ObjectStore, S3Uri, check_bucket_allowed, local_model_dir
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job, Model


def resolve_model(
    session: Session, settings: Settings, store: ObjectStore, tenant_id: uuid.UUID, ref: str
) -> str:
    """The model's location: an s3:// prefix, an allowed local directory, or a registry entry."""
    if ref.startswith("s3://"):
        uri = S3Uri.parse(ref, field="model").as_prefix()
        check_bucket_allowed(settings, uri, "model")
        if not store.list(uri):
            raise InvalidSpec(f"no model directory at {uri}", field="model")
        return str(uri)
    local = local_model_dir(settings, ref)  # raises when not under BARGE_LOCAL_MODEL_DIRS
    if local is not None:
        if not local.is_dir():
            raise InvalidSpec(f"no model directory at {local}", field="model")
        return str(local)
    name, _, version = ref.partition("@")
    query = select(Model).where(Model.tenant_id == tenant_id, Model.name == name)
    if version:
        if not version.isdigit():
            raise InvalidSpec(f"model version must be a number: {ref!r}", field="model")
        query = query.where(Model.version == int(version))
    found = session.scalar(query.order_by(Model.version.desc()).limit(1))
    if found is None:
        raise InvalidSpec(
            f"model {ref!r} is neither an s3:// URI nor a registered model name[@version]",
            field="model",
        )
    return found.uri


def check_input(settings: Settings, store: ObjectStore, spec: InferenceSpec) -> None:
    uri = S3Uri.parse(spec.input, field="input")
    check_bucket_allowed(settings, uri, "input")
    objects = resolve_inputs(store, spec.input)
    if not objects:
        raise InvalidSpec(f"no input object or prefix at {spec.input}", field="input")
    unknown = [str(o.uri) for o in objects if detect_format(o.uri.key, spec.input_format) is None]
    if unknown:
        raise InvalidSpec(
            f"cannot tell the format of {', '.join(unknown[:5])}: name inputs .jsonl, .csv or "
            ".parquet (optionally .gz) or set input_format",
            field="input",
        )
    first = objects[0]
    fmt = detect_format(first.uri.key, spec.input_format)
    assert fmt is not None
    fields = peek_fields(store, first, fmt)
    if not fields:
        return  # nothing readable to check against; bad records are reported per record
    shown = ", ".join(fields[:20])
    if spec.text_field not in fields:
        raise InvalidSpec(
            f"text_field {spec.text_field!r} is not a field of {first.uri} (its fields: {shown})",
            field="text_field",
        )
    if spec.id_field and spec.id_field not in fields:
        raise InvalidSpec(
            f"id_field {spec.id_field!r} is not a field of {first.uri} (its fields: {shown})",
            field="id_field",
        )


def check_output(
    session: Session, settings: Settings, store: ObjectStore, spec: InferenceSpec
) -> None:
    out = S3Uri.parse(spec.output, field="output").as_prefix()
    check_bucket_allowed(settings, out, "output")
    if store.head(out.join("_manifest.json")) is not None:
        raise InvalidSpec(
            f"output prefix {out} already holds a finished job's outputs (_manifest.json); "
            "choose a new output prefix",
            field="output",
        )
    active = repo.active_job_for_output(session, str(out))
    if active is not None:
        raise InvalidSpec(
            f"output prefix {out} is in use by job {active.id} ({active.status}); "
            "choose a new output prefix",
            field="output",
        )


def create_job(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    tenant_id: uuid.UUID,
    spec: InferenceSpec,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate against the stores and add the job (queued); (job, created). The caller commits
    and then sends ``plan_job``; the same idempotency key returns the existing job."""
    spec_json = spec.model_dump(mode="json")
    if idempotency_key:
        existing = repo.job_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            if existing.spec != spec_json:
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was used for job {existing.id} with a "
                    "different spec; use a new key for a new job"
                )
            return existing, False
    if len(json.dumps(spec.metadata)) > settings.max_metadata_bytes:
        raise InvalidSpec(
            f"metadata is larger than {settings.max_metadata_bytes} bytes", field="metadata"
        )
    model_uri = resolve_model(session, settings, store, tenant_id, spec.model)
    check_input(settings, store, spec)
    check_output(session, settings, store, spec)
    now = utcnow()
    job = Job(
        tenant_id=tenant_id,
        type=spec.type,
        status=state.QUEUED,
        spec=spec_json,
        meta=spec.metadata,
        idempotency_key=idempotency_key,
        model_uri=model_uri,
        output_uri=str(S3Uri.parse(spec.output).as_prefix()),
        created_at=now,
        updated_at=now,
        dispatched_at=now,
    )
    session.add(job)
    session.flush()
    repo.add_event(session, job.id, "created", "job accepted", spec=spec_json)
    return job, True
