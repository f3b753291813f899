"""Accepting a job: the checks a submission must pass against the stores, and its creation.

Shared by the HTTP API and the drop-folder scanner, so both accept exactly the same jobs.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from barge import onnxdirs
from barge.errors import Conflict, InvalidSpec, PermanentJobError
from barge.onnxdirs import OnnxConfig
from barge.queue import PLAN_JOB
from barge.records import detect_format, format_of, images, peek_fields, resolve_inputs
from barge.specs import BUILTIN_MODELS, CHAT_FIELD, FinetuneSpec, InferenceSpec, JobSpec
from barge.status import QUEUED
from barge.storage import ObjectInfo, ObjectStore, S3Uri, check_bucket_allowed
from db import repositories as repo
from db.base import utcnow
from db.models import Job
from services import audit, quotas, registry, scopes
from services.context import ServiceContext
from services.locations import check_locations, reads


def _data_objects(
    ctx: ServiceContext, uri_text: str, declared: str, field: str
) -> list[ObjectInfo]:
    """The data objects at ``uri_text`` (a spec's location: one object or a prefix), each of a
    known format."""
    uri = S3Uri.parse(uri_text, field=field)
    check_bucket_allowed(ctx.settings, uri, field)
    objects = resolve_inputs(ctx.store, uri_text, field)
    if not objects:
        raise InvalidSpec(f"no {field} object or prefix at {uri_text}", field=field)
    for info in objects:
        try:
            format_of(info.uri, declared)
        except PermanentJobError as exc:
            raise InvalidSpec(exc.message, field=field) from None
    return objects


def _first_fields(store: ObjectStore, info: ObjectInfo, declared: str, field: str) -> list[str]:
    fmt = detect_format(info.uri.key, declared)
    assert fmt is not None
    return peek_fields(store, info, fmt, field)


def check_model(ctx: ServiceContext, spec: InferenceSpec, model_uri: str) -> OnnxConfig | None:
    """An ONNX model directory's barge.json (None for a Hugging Face one), checked to fit the
    job's task; the graph itself is checked when the model is registered and when it loads."""
    if spec.model in BUILTIN_MODELS:
        return None  # built into the worker: nothing in the store to look at
    try:
        config = onnxdirs.find_config(ctx.settings, ctx.store, model_uri)
    except PermanentJobError as exc:
        raise InvalidSpec(exc.message, field="model") from None
    registry.check_task_fits(spec.task, config.task if config else None, "task")
    return config


def check_registered_task(ctx: ServiceContext, spec: InferenceSpec) -> None:
    """A registered model runs the task it was registered for (a ``generate`` model in an
    ``embed`` job would fail in the worker a moment later); refused naming ``task``, as an
    ONNX model's task is (``registry.check_task_fits``)."""
    found = registry.registered(ctx.session, ctx.tenant.id, spec.model)
    if found is not None and found.task != spec.task:
        raise InvalidSpec(
            f"model {spec.model} is registered for task {found.task!r}; this job's task is "
            f"{spec.task!r}: name a model registered for {spec.task!r}, or register this "
            "one under another name for that task",
            field="task",
            code="model_task_mismatch",
        )


def check_input(ctx: ServiceContext, spec: InferenceSpec, onnx: OnnxConfig | None = None) -> None:
    """The input exists and its first record has the fields the job reads: ``text_field``
    (``messages_field``, ``image_field``), or for an ONNX model the fields its barge.json
    names; an image task without ``image_field`` needs at least one image object."""
    if spec.reads_image_objects:
        _check_image_objects(ctx, spec)
        return
    objects = _data_objects(ctx, spec.input, spec.input_format, "input")
    first = objects[0]
    fields = _first_fields(ctx.store, first, spec.input_format, "input")
    if not fields:
        return  # nothing readable to check against; bad records are reported per record
    shown = ", ".join(fields[:20])
    # What the task reads of each record: its messages, its image or its text.
    name, read = (
        ("messages_field", spec.messages_field)
        if spec.messages_field is not None
        else ("image_field", spec.image_field)
        if spec.image_field is not None
        else ("text_field", spec.text_field)
    )
    if onnx is not None:
        missing = [f for f in onnx.record_fields() if f not in fields]
        if missing:
            raise InvalidSpec(
                f"the model's barge.json reads {', '.join(map(repr, missing[:10]))}, which "
                f"{'is' if len(missing) == 1 else 'are'} not a field of {first.uri} (its "
                f"fields: {shown})",
                field="input",
            )
    elif read not in fields:
        raise InvalidSpec(
            f"{name} {read!r} is not a field of {first.uri} (its fields: {shown})",
            field=name,
        )
    if spec.id_field and spec.id_field not in fields:
        raise InvalidSpec(
            f"id_field {spec.id_field!r} is not a field of {first.uri} (its fields: {shown})",
            field="id_field",
        )


def _check_image_objects(ctx: ServiceContext, spec: InferenceSpec) -> None:
    """An image task without image_field reads image objects: there must be at least one."""
    uri = S3Uri.parse(spec.input, field="input")
    check_bucket_allowed(ctx.settings, uri, "input")
    if not images.list_images(ctx.store, spec.input):
        raise InvalidSpec(
            f"no image objects ({', '.join(images.IMAGE_SUFFIXES)}) at {spec.input}; for "
            "records that hold images (JSONL, CSV, Parquet) set image_field",
            field="input",
        )


def check_training_data(ctx: ServiceContext, spec: FinetuneSpec) -> None:
    """Train (and validation) exist, are not empty and have the task's fields; the labels and
    every record are checked when the job is planned."""
    for field, uri_text in (("train", spec.train), ("validation", spec.validation)):
        if uri_text is None:
            continue
        objects = _data_objects(ctx, uri_text, spec.input_format, field)
        if all(o.size == 0 for o in objects):
            raise InvalidSpec(f"{field} data at {uri_text} is empty", field=field)
        first = next(o for o in objects if o.size > 0)
        fields = _first_fields(ctx.store, first, spec.input_format, field)
        if not fields:
            raise InvalidSpec(
                f"{field} data at {first.uri} has no readable records (first 100 lines)",
                field=field,
            )
        missing = [f for f in spec.fields if f not in fields]
        if missing and spec.task == "generate" and CHAT_FIELD in fields:
            missing = []  # chat records: {"messages": [{role, content}, ...]}
        if missing:
            need = " and ".join(repr(f) for f in spec.fields)
            raise InvalidSpec(
                f"{field} records need {need} for task {spec.task!r}; {first.uri} has no "
                f"{', '.join(repr(m) for m in missing)} (its fields: {', '.join(fields[:20])})",
                field=field,
            )


def default_finetune_output(
    tenant_scopes: scopes.Scopes, spec: FinetuneSpec, job_id: uuid.UUID
) -> str:
    """A fine-tune's output when the spec names none: ``barge-finetunes/<job id>/`` under the
    tenant's first write scope (under the training data's bucket when that scope is ``*``)."""
    first = next(iter(tenant_scopes.write), None)
    if first is None or first == scopes.ANY:
        return f"s3://{S3Uri.parse(spec.train).bucket}/barge-finetunes/{job_id}/"
    return f"{first}barge-finetunes/{job_id}/"


@contextmanager
def naming(field: str) -> Iterator[None]:
    """Refusals from the stores (an unusable key on the local backend, say) name ``field``."""
    try:
        yield
    except InvalidSpec as exc:
        if exc.field is not None:
            raise
        raise InvalidSpec(f"{field}: {exc.message}", field=field) from None


def _check_finetune(
    ctx: ServiceContext, tenant_scopes: scopes.Scopes, spec: FinetuneSpec, job_id: uuid.UUID
) -> tuple[str, str]:
    """A fine-tune's base model (a Hugging Face directory, never an adapter) and output, once
    they and its training data pass their checks."""
    with naming("base_model"):
        model_uri = registry.resolve(
            ctx, spec.base_model, field="base_model", tenant_scopes=tenant_scopes
        )
        if onnxdirs.find_config(ctx.settings, ctx.store, model_uri) is not None:
            raise InvalidSpec(
                "base_model is an ONNX model directory; fine-tunes train Hugging Face "
                "models (train your network yourself and register its ONNX export)",
                field="base_model",
            )
    output = spec.output or default_finetune_output(tenant_scopes, spec, job_id)
    scopes.require_write(tenant_scopes, output, "output")
    with naming("train"):
        check_training_data(ctx, spec)
    registry.check_name_keeps_task(ctx.session, ctx.tenant.id, spec.model_name, spec.task)
    return model_uri, output


def _check_inference(
    ctx: ServiceContext, tenant_scopes: scopes.Scopes, spec: InferenceSpec
) -> tuple[str, str | None]:
    """An inference job's model (and the base it applies to when it is a LoRA adapter), once
    the model, its task and the input pass their checks."""
    scopes.require_write(tenant_scopes, spec.output, "output")
    with naming("model"):
        model_uri, adapter_base = registry.resolve_model(
            ctx, spec.model, tenant_scopes=tenant_scopes
        )
        onnx = check_model(ctx, spec, model_uri)
        check_registered_task(ctx, spec)
    with naming("input"):
        check_input(ctx, spec, onnx)
    return model_uri, adapter_base


def _check_against_stores(
    ctx: ServiceContext, spec: JobSpec, job_id: uuid.UUID, parent_id: uuid.UUID | None = None
) -> tuple[str, str | None, str]:
    """The resolved model, the base it applies to when it is a LoRA adapter, and the output
    prefix, once the model, the data and the locations pass their checks. Every location is
    checked against the tenant's storage scopes before the store is asked anything about it;
    the spec normalised each when it was parsed."""
    tenant_scopes = scopes.scopes_for(ctx.session, ctx.settings, ctx.tenant.id)
    for field, uri in reads(spec):  # an input that may be an object or a prefix: both
        scopes.require_read(tenant_scopes, uri, field)
    adapter_base: str | None = None  # resolve refuses an adapter as a fine-tune's base
    if isinstance(spec, FinetuneSpec):
        model_uri, output = _check_finetune(ctx, tenant_scopes, spec, job_id)
    else:
        output = spec.output
        model_uri, adapter_base = _check_inference(ctx, tenant_scopes, spec)
    with naming("output"):
        output = check_locations(ctx, output, reads(spec), parent_id)
    return model_uri, adapter_base, output


@dataclass(frozen=True)
class SubmitJob:
    """A job to submit: its spec, the key that makes a repeated submission return the job it
    made before (the API's ``Idempotency-Key``, a drop folder's object and ETag), and what its
    audit entry says besides the job's locations (a resubmission's original, say)."""

    spec: JobSpec
    idempotency_key: str | None = None
    audit_data: dict[str, Any] = dataclasses.field(default_factory=dict)
    parent_id: uuid.UUID | None = None  # a retry: the job it retries (it writes inside its output)
    retry_index: int | None = None


def check(
    ctx: ServiceContext, command: SubmitJob, job_id: uuid.UUID
) -> tuple[str, str | None, str]:
    """Every check a submission passes (its metadata, the tenant's quotas, the model, the data
    and the locations against the stores); the resolved model, the base it applies to when it
    is a LoRA adapter, and the output prefix. A dry run stops here."""
    spec = command.spec
    if len(json.dumps(spec.metadata)) > ctx.settings.max_metadata_bytes:
        raise InvalidSpec(
            f"metadata is larger than {ctx.settings.max_metadata_bytes} bytes", field="metadata"
        )
    quotas.check_submission(ctx.session, ctx.settings, ctx.tenant.id, spec)  # 422 / 429
    return _check_against_stores(ctx, spec, job_id, command.parent_id)


def create_job(ctx: ServiceContext, command: SubmitJob) -> tuple[Job, bool]:
    """Validate against the stores and add the job (queued) for the context's tenant; (job,
    created). The caller commits and then sends ``plan_job``; the same idempotency key returns
    the existing job."""
    spec, idempotency_key, session = command.spec, command.idempotency_key, ctx.session
    tenant_id = ctx.tenant.id
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
    job_id = uuid.uuid4()
    model_uri, adapter_base, output = check(ctx, command, job_id)
    now = utcnow()
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        type=spec.type,
        status=QUEUED,
        spec=spec_json,
        meta=spec.metadata,
        idempotency_key=idempotency_key,
        model_uri=model_uri,
        adapter_base_uri=adapter_base,
        output_uri=output,
        created_at=now,
        updated_at=now,
        dispatched_at=now,
        parent_id=command.parent_id,
        retry_index=command.retry_index,
    )
    session.add(job)
    session.flush()
    repo.add_event(session, job.id, "created", "job accepted", spec=spec_json)
    return job, True


def submit(ctx: ServiceContext, command: SubmitJob) -> tuple[Job, bool]:
    """Create the job, audit it and queue its planning for after the commit; (job, created).
    A repeated submission (the same idempotency key) changes nothing and is not audited."""
    job, created = create_job(ctx, command)
    if created:
        audit.record(ctx, "job.submit", f"job:{job.id}", **audited(job), **command.audit_data)
        ctx.uow.send_after_commit(PLAN_JOB, str(job.id))
    return job, created


def audited(job: Job) -> dict[str, Any]:
    """What the audit log keeps of a submission: its type and the locations it names."""
    spec = job.spec
    reads = ("train", "validation") if job.type == "finetune" else ("input",)
    return {
        "type": job.type,
        "model": spec.get("base_model" if job.type == "finetune" else "model"),
        **{field: spec.get(field) for field in reads},
        "output": job.output_uri,
    }
