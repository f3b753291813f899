"""Accepting a job: the checks a submission must pass against the stores, and its creation.

Shared by the HTTP API and the drop-folder scanner, so both accept exactly the same jobs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from barge.errors import Conflict, InvalidSpec, excerpt
from barge.records import detect_format, peek_fields, resolve_inputs
from barge.settings import Settings
from barge.specs import MAX_VERSION, FinetuneSpec, InferenceSpec, JobSpec, parse_spec
from barge.storage import ObjectInfo, ObjectStore, S3Uri, check_bucket_allowed, local_model_dir
from barge.uris import normalise, overlap
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job


def resolve_model(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    tenant_id: uuid.UUID,
    ref: str,
    field: str = "model",
) -> str:
    """The model's location: an s3:// prefix, an allowed local directory, or a registry entry."""
    if ref.startswith("s3://"):
        uri = S3Uri.parse(normalise(ref, field, prefix=True), field=field)
        check_bucket_allowed(settings, uri, field)
        if not store.list(uri):
            raise InvalidSpec(f"no model directory at {uri}", field=field)
        return str(uri)
    try:
        local = local_model_dir(settings, ref)  # raises when not under BARGE_LOCAL_MODEL_DIRS
    except InvalidSpec as exc:
        raise InvalidSpec(exc.message, field=field) from None
    if local is not None:
        if not local.is_dir():
            raise InvalidSpec(f"no model directory at {local}", field=field)
        return str(local)
    name, _, version = ref.partition("@")
    if version and (not version.isdigit() or not 1 <= int(version) <= MAX_VERSION):
        raise InvalidSpec(
            f"model version must be a number from 1 to {MAX_VERSION}: {excerpt(ref)}",
            field=field,
        )
    found = repo.find_model(session, tenant_id, name, int(version) if version else None)
    if found is None:
        raise InvalidSpec(
            f"model {excerpt(ref)} is neither an s3:// URI nor a registered model name[@version]",
            field=field,
        )
    return found.uri


def _data_objects(
    settings: Settings, store: ObjectStore, uri_text: str, declared: str, field: str
) -> list[ObjectInfo]:
    """The data objects at ``uri_text`` (one object or a prefix), each of a known format."""
    uri = S3Uri.parse(normalise(uri_text, field), field=field)
    check_bucket_allowed(settings, uri, field)
    objects = resolve_inputs(store, uri_text, field)
    if not objects:
        raise InvalidSpec(f"no {field} object or prefix at {uri_text}", field=field)
    unknown = [str(o.uri) for o in objects if detect_format(o.uri.key, declared) is None]
    if unknown:
        raise InvalidSpec(
            f"cannot tell the format of {', '.join(unknown[:5])}: name {field} files .jsonl, "
            ".csv or .parquet (optionally .gz) or set input_format",
            field=field,
        )
    return objects


def _first_fields(store: ObjectStore, info: ObjectInfo, declared: str, field: str) -> list[str]:
    fmt = detect_format(info.uri.key, declared)
    assert fmt is not None
    return peek_fields(store, info, fmt, field)


def check_input(settings: Settings, store: ObjectStore, spec: InferenceSpec) -> None:
    objects = _data_objects(settings, store, spec.input, spec.input_format, "input")
    first = objects[0]
    fields = _first_fields(store, first, spec.input_format, "input")
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


def check_training_data(settings: Settings, store: ObjectStore, spec: FinetuneSpec) -> None:
    """Train (and validation) exist, are not empty and have the task's fields; the labels and
    every record are checked when the job is planned."""
    for field, uri_text in (("train", spec.train), ("validation", spec.validation)):
        if uri_text is None:
            continue
        objects = _data_objects(settings, store, uri_text, spec.input_format, field)
        if all(o.size == 0 for o in objects):
            raise InvalidSpec(f"{field} data at {uri_text} is empty", field=field)
        first = next(o for o in objects if o.size > 0)
        fields = _first_fields(store, first, spec.input_format, field)
        if not fields:
            raise InvalidSpec(
                f"{field} data at {first.uri} has no readable records (first 100 lines)",
                field=field,
            )
        missing = [f for f in spec.fields if f not in fields]
        if missing:
            need = " and ".join(repr(f) for f in spec.fields)
            raise InvalidSpec(
                f"{field} records need {need} for task {spec.task!r}; {first.uri} has no "
                f"{', '.join(repr(m) for m in missing)} (its fields: {', '.join(fields[:20])})",
                field=field,
            )


def check_model_name(session: Session, tenant_id: uuid.UUID, spec: FinetuneSpec) -> None:
    latest = repo.find_model(session, tenant_id, spec.model_name)
    registered = latest.task if latest is not None else None
    if registered is not None and registered != spec.task:
        raise InvalidSpec(
            f"model {spec.model_name!r} is registered for task {registered!r}; a new version "
            f"must keep the task, or choose another model_name",
            field="model_name",
        )


# Objects in an output prefix that say another job already wrote there.
TAKEN_MARKERS = {
    "_manifest.json": "a finished job's outputs",
    "_SUCCESS": "a finished job's outputs",
    "checkpoints/latest.json": "another fine-tune's checkpoints",
}


def _reads(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, location) for each place a job reads; an input without a trailing "/" may be
    an object or a prefix, so it counts as both."""
    if isinstance(spec, FinetuneSpec):
        named = [("train", spec.train), ("validation", spec.validation)]
    else:
        named = [("input", spec.input)]
    return [
        (field, form)
        for field, u in named
        if u
        for form in ([u] if u.endswith("/") else [u, u + "/"])
    ]


def check_locations(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    tenant_id: uuid.UUID,
    output: str,
    reads: list[tuple[str, str]],
) -> str:
    """The one rule for where a job may write; returns the normalised output prefix.

    The output may not overlap the job's own input; may not equal, contain or lie inside any
    other job's output (running or finished, whatever its status), nor overlap the input of a
    job that is not final; an active job's output is not an input. A prefix that already holds
    a manifest or checkpoints is refused too. Concurrent submissions take this check in turn
    (the lock is held until the caller commits), so two jobs can never both win one place."""
    out = normalise(output, "output", prefix=True)
    check_bucket_allowed(settings, S3Uri.parse(out), "output")
    for field, uri in reads:
        if overlap(out, uri):
            raise InvalidSpec(
                f"output {out} overlaps the job's own {field} {uri}: its outputs would be "
                "read as its input; write them under another prefix",
                field="output",
            )
    for marker, what in TAKEN_MARKERS.items():
        if store.head(S3Uri.parse(out).join(marker)) is not None:
            raise InvalidSpec(
                f"output prefix {out} already holds {what} ({marker}); choose a new output prefix",
                field="output",
            )
    repo.lock_submissions(session)
    other = repo.job_with_output_overlapping(session, out)
    if other is not None:
        raise InvalidSpec(
            f"output prefix {out} overlaps the output {other.output_uri} of "
            f"{_job_name(other, tenant_id)}; every job needs a prefix of its own",
            field="output",
        )
    for job in repo.active_jobs(session):
        theirs = [u for _, u in _reads(parse_spec(job.spec))]
        clash = next((u for u in theirs if overlap(out, u)), None)
        if clash is not None:
            raise InvalidSpec(
                f"output prefix {out} overlaps the input {clash} of "
                f"{_job_name(job, tenant_id)}; it would change that job's input while it runs",
                field="output",
            )
        mine = next(((f, u) for f, u in reads if overlap(job.output_uri, u)), None)
        if mine is not None:
            raise InvalidSpec(
                f"{mine[0]} {mine[1]} overlaps the output {job.output_uri} of "
                f"{_job_name(job, tenant_id)}, which is still being written; wait for it to "
                "finish",
                field=mine[0],
            )
    return out


def _job_name(job: Job, tenant_id: uuid.UUID) -> str:
    """How a refusal names another job: by id and status for the same tenant, never more for
    another tenant's."""
    if job.tenant_id == tenant_id:
        return f"job {job.id} ({job.status})"
    return "another tenant's job"


@contextmanager
def naming(field: str) -> Iterator[None]:
    """Refusals from the stores (an unusable key on the local backend, say) name ``field``."""
    try:
        yield
    except InvalidSpec as exc:
        if exc.field is not None:
            raise
        raise InvalidSpec(f"{field}: {exc.message}", field=field) from None


def create_job(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    tenant_id: uuid.UUID,
    spec: JobSpec,
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
    job_id = uuid.uuid4()
    if isinstance(spec, FinetuneSpec):
        with naming("base_model"):
            model_uri = resolve_model(
                session, settings, store, tenant_id, spec.base_model, field="base_model"
            )
        with naming("train"):
            check_training_data(settings, store, spec)
        check_model_name(session, tenant_id, spec)
        train_bucket = S3Uri.parse(spec.train).bucket
        output = spec.output or f"s3://{train_bucket}/barge-finetunes/{job_id}/"
    else:
        with naming("model"):
            model_uri = resolve_model(session, settings, store, tenant_id, spec.model)
        with naming("input"):
            check_input(settings, store, spec)
        output = spec.output
    with naming("output"):
        output = check_locations(session, settings, store, tenant_id, output, _reads(spec))
    now = utcnow()
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        type=spec.type,
        status=state.QUEUED,
        spec=spec_json,
        meta=spec.metadata,
        idempotency_key=idempotency_key,
        model_uri=model_uri,
        output_uri=output,
        created_at=now,
        updated_at=now,
        dispatched_at=now,
    )
    session.add(job)
    session.flush()
    repo.add_event(session, job.id, "created", "job accepted", spec=spec_json)
    return job, True
