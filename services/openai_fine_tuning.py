"""Fine-tuning jobs of the OpenAI-compatible surface: the training (and validation) file checked
line by line when the job is created, then run as a Barge ``generate`` fine-tune; the job's
status, events and checkpoints are read from that Barge job, and ``fine_tuned_model`` is the
registry's ``name@N``, usable at once as a batch's ``model``.

How OpenAI's parameters become Barge's:

- ``model``: a ``BARGE_OPENAI_MODEL_ALIASES`` alias, a registry name or a model directory;
- ``hyperparameters`` (or ``method.supervised.hyperparameters``): ``n_epochs`` ("auto": 3),
  ``batch_size`` ("auto": a tenth of the examples, 1 to 16), ``learning_rate_multiplier``
  ("auto": 1) times the method's base learning rate (``BASE_LEARNING_RATE``);
- the method: ``BARGE_OPENAI_FINE_TUNING_METHOD`` (a LoRA adapter by default), or the request's
  ``barge.method`` (Barge's ``{"type": "lora", "r", ...}`` or ``{"type": "full"}``);
- the registered name: ``<base>-<suffix>`` (``<base>-ft`` without a suffix), a new version of it
  per job.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from barge import modeldirs
from barge.chat import MessagesError, chat_example
from barge.errors import Conflict, InvalidSpec, NotFound, excerpt
from barge.settings import Settings
from barge.specs import (
    CHAT_FIELD,
    FinetuneSpec,
    FullMethod,
    LoraMethod,
    Method,
)
from barge.status import (
    CANCELLED,
    CANCELLING,
    FAILED,
    PAUSE_STATES,
    PAUSED,
    PAUSING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
)
from barge.storage import S3Uri
from db import repositories as repo
from db.base import utcnow
from db.models import Job, JobEvent, OpenAIFile, OpenAIFineTuningJob
from db.repositories import openai as openai_repo
from services import audit, jobs, openai_files, submission, usage
from services.context import ServiceContext
from services.openai_batches import bounded_lines, model_ref
from services.openai_files import BadRequest

AUTO_EPOCHS = 3
MAX_AUTO_BATCH_SIZE = 16
MAX_EPOCHS = 1000  # Hyperparameters.epochs' bound
MAX_BATCH_SIZE = 4096
# The learning rate a multiplier of 1 stands for, per method.
BASE_LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}
# As OpenAI keeps them: the final epoch's model and those of the two epochs before it, each
# usable as a model (fine_tuned_model_checkpoint).
EPOCH_MODELS = 2
MAX_SUFFIX_CHARS = 64
_SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_LINE_ERRORS = 5  # shown in a refused file's message
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
EVENT_WARN_KINDS = ("shard_retry", "shard_error", "plan_error", "quota_exceeded", "early_stopped")
CHECKPOINT_KIND = "eval"  # one per epoch: its train loss and validation metrics
_METHOD = TypeAdapter(Method)


@dataclass
class Examples:
    """What checking a training or validation file found."""

    count: int
    errors: list[str]
    chat: bool = False  # chat examples (their model needs a chat template)


def check_file(f: IO[bytes], settings: Settings) -> Examples:
    """Every line of a fine-tuning file: a chat example ``{"messages": [...]}`` (the last
    assistant message is learnt) or ``{"prompt", "completion"}``, one format per file."""
    count, fmt = 0, None
    errors: list[str] = []
    limit = settings.max_text_chars
    for number, raw in bounded_lines(f, settings.max_record_bytes):
        if len(errors) >= MAX_LINE_ERRORS:
            break
        if raw is None:
            errors.append(
                f"line {number} is longer than {settings.max_record_bytes} bytes "
                "(BARGE_MAX_RECORD_BYTES)"
            )
            continue
        if not raw.strip():
            continue
        try:
            data = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            errors.append(f"line {number} is not valid JSON: {exc}"[:300])
            continue
        if not isinstance(data, dict):
            errors.append(f"line {number} is not a JSON object")
            continue
        line_fmt = "chat" if CHAT_FIELD in data else "completion"
        problem = _chat_problem(data, limit) if line_fmt == "chat" else _pair_problem(data, limit)
        if problem is None and fmt is not None and line_fmt != fmt:
            problem = f"is a {line_fmt} example in a file of {fmt} examples; use one format"
        if problem is not None:
            errors.append(f"line {number}: {problem}")
            continue
        fmt = fmt or line_fmt
        count += 1
    if not count and not errors:
        errors.append("the file has no examples")
    return Examples(count, errors, fmt == "chat")


def _chat_problem(data: dict[str, Any], limit: int) -> str | None:
    value = data[CHAT_FIELD]
    try:
        chat_example(value, limit, CHAT_FIELD)
    except MessagesError as exc:
        return exc.message
    weights = [m.get("weight") for m in value if isinstance(m, dict) and "weight" in m]
    if any(w != 1 for w in weights):
        return "a message's weight other than 1 is not supported (the last assistant message is learnt)"
    return None


def _pair_problem(data: dict[str, Any], limit: int) -> str | None:
    for name in ("prompt", "completion"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            return f"needs {CHAT_FIELD!r} (a chat example) or non-empty 'prompt' and 'completion'"
        if len(value) > limit:
            return f"{name!r} has {len(value)} characters, more than {limit} (BARGE_MAX_TEXT_CHARS)"
    return None


@dataclass(frozen=True)
class CreateFineTuningJob:
    """What a create request asks: OpenAI's fields and Barge's ``barge`` extension
    (``{"method": {"type": "lora", ...}}`` or ``{"type": "full"}``), each as sent; ``create``
    checks every one, so that each refusal names its field and says what to fix."""

    model: Any
    training_file: Any
    validation_file: Any = None
    hyperparameters: Any = None
    method: Any = None
    suffix: Any = None
    seed: Any = None
    metadata: Any = None
    integrations: Any = None
    barge: Any = None


def _hyperparameters(request: CreateFineTuningJob) -> dict[str, Any]:
    """The hyperparameters asked for: ``method.supervised.hyperparameters`` over the top-level
    (deprecated) ``hyperparameters``."""
    method = request.method
    chosen = request.hyperparameters
    if method is not None:
        if not isinstance(method, dict) or method.get("type") not in (
            "supervised",
            "dpo",
            "reinforcement",
        ):
            raise BadRequest("method.type must be supervised", field="method.type")
        if method["type"] != "supervised":
            raise BadRequest(
                f"method {method['type']} is not supported; Barge fine-tunes with supervised",
                field="method.type",
                code="unsupported_method",
            )
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise BadRequest("method.supervised must be an object", field="method.supervised")
        chosen = supervised.get("hyperparameters", chosen)
    if chosen is None:
        return {}
    if not isinstance(chosen, dict):
        raise BadRequest("hyperparameters must be an object", field="hyperparameters")
    unknown = set(chosen) - {"n_epochs", "batch_size", "learning_rate_multiplier"}
    if unknown:
        raise BadRequest(
            f"unknown hyperparameter {sorted(unknown)[0]!r} (n_epochs, batch_size, "
            "learning_rate_multiplier)",
            field="hyperparameters",
        )
    return chosen


def _number(
    value: Any, name: str, low: float, high: float, auto: float, integer: bool
) -> float | int:
    if value is None or value == "auto":
        return auto
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(
            f"hyperparameters.{name} must be 'auto' or {kind} from {low:g} to {high:g}, "
            f"got {excerpt(value)}",
            field=f"hyperparameters.{name}",
        )
    return value


def _method(request: CreateFineTuningJob, settings: Settings) -> FullMethod | LoraMethod:
    options = request.barge
    if options is None:
        options = {}
    if not isinstance(options, dict) or set(options) - {"method"}:
        raise BadRequest("barge must be an object with at most a method", field="barge")
    if "method" not in options:
        name = settings.openai_fine_tuning_method
        return _METHOD.validate_python({"type": name})
    try:
        return _METHOD.validate_python(options["method"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(
            f"barge.method{'.' + where if where else ''}: {first['msg']}", field="barge.method"
        ) from None


def _suffix(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SUFFIX.match(value):
        raise BadRequest(
            f"suffix must be 1 to {MAX_SUFFIX_CHARS} letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {excerpt(value)}",
            field="suffix",
        )
    return value


def registered_name(model: str, suffix: str | None) -> str:
    """The registry name a job's model gets: the base's last path segment and the suffix."""
    base = model.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")[:40] or "model"
    return f"{base}-{suffix or 'ft'}"


def _file(session: Session, tenant_id: uuid.UUID, file_id: Any, field: str) -> OpenAIFile:
    if not isinstance(file_id, str) or not file_id:
        raise BadRequest(f"{field} must be a file id", field=field)
    try:
        row = openai_files.get(session, tenant_id, file_id)
    except NotFound as exc:
        raise NotFound(exc.message, field=field) from None
    if row.purpose != "fine-tune":
        raise BadRequest(
            f"file {row.id} has purpose {row.purpose!r}; a fine-tuning job reads files uploaded "
            "with purpose 'fine-tune'",
            field=field,
        )
    return row


def _checked(ctx: ServiceContext, row: OpenAIFile, field: str) -> Examples:
    with ctx.store.open(openai_files.location(row)) as f:
        found = check_file(f, ctx.settings)
    if found.errors:
        raise BadRequest(
            f"{field} {row.id} is not a valid fine-tuning file: {'; '.join(found.errors)}",
            field=field,
            code="invalid_file_format",
        )
    return found


def _check_base(ctx: ServiceContext, model: str, job: Job, examples: Examples) -> None:
    """The base (as the submission resolved it) must be a causal LM, with a chat template
    for chat examples: an embedding model is refused here, not by the job a moment later."""
    base = job.model_uri
    problem = base and modeldirs.causal_lm_problem(ctx.settings, ctx.store, base, examples.chat)
    if problem:
        raise BadRequest(
            f"model {excerpt(model)} cannot be fine-tuned: {problem}",
            field="model",
            code="model_not_available",
        )


def _seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(2**31)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise BadRequest(
            f"seed must be an integer from 0 to 2**32-1, got {excerpt(value)}", field="seed"
        )
    return value


def _chosen(
    asked: dict[str, Any], examples: Examples, method: FullMethod | LoraMethod
) -> tuple[dict[str, Any], float]:
    """The hyperparameters ("auto" made a number) and the learning rate they make."""
    auto_batch = max(1, min(MAX_AUTO_BATCH_SIZE, examples.count // 10))
    chosen = {
        "n_epochs": _number(asked.get("n_epochs"), "n_epochs", 1, MAX_EPOCHS, AUTO_EPOCHS, True),
        "batch_size": _number(
            asked.get("batch_size"), "batch_size", 1, MAX_BATCH_SIZE, auto_batch, True
        ),
        "learning_rate_multiplier": _number(
            asked.get("learning_rate_multiplier"), "learning_rate_multiplier", 1e-6, 1e4, 1.0, False
        ),
    }
    learning_rate = BASE_LEARNING_RATE[method.type] * chosen["learning_rate_multiplier"]
    if learning_rate > 1.0:
        raise BadRequest(
            f"learning_rate_multiplier {chosen['learning_rate_multiplier']:g} makes a learning "
            f"rate of {learning_rate:g} (over 1) for method {method.type}",
            field="hyperparameters.learning_rate_multiplier",
        )
    return chosen, learning_rate


def create(ctx: ServiceContext, request: CreateFineTuningJob) -> OpenAIFineTuningJob:
    """Check the request and its files, then submit the Barge fine-tune that runs it."""
    if not isinstance(request.model, str) or not request.model or len(request.model) > 2048:
        raise BadRequest("model must be a model name of at most 2048 characters", field="model")
    if request.integrations:
        raise BadRequest("integrations are not supported", field="integrations")
    seed = _seed(request.seed)
    asked = _hyperparameters(request)
    method = _method(request, ctx.settings)
    suffix = _suffix(request.suffix)
    metadata = openai_files.check_metadata(request.metadata)
    train = _file(ctx.session, ctx.tenant.id, request.training_file, "training_file")
    validation = (
        _file(ctx.session, ctx.tenant.id, request.validation_file, "validation_file")
        if request.validation_file is not None
        else None
    )
    examples = _checked(ctx, train, "training_file")
    if validation is not None:
        _checked(ctx, validation, "validation_file")
    chosen, learning_rate = _chosen(asked, examples, method)
    row = OpenAIFineTuningJob(
        id=openai_files.new_id("ftjob-"),
        tenant_id=ctx.tenant.id,
        model=request.model,
        training_file_id=train.id,
        validation_file_id=validation.id if validation else None,
        suffix=suffix,
        seed=seed,
        hyperparameters=chosen,
        meta=metadata,
        created_at=utcnow(),
        id_key=secrets.token_hex(16),
    )
    job = _submit(ctx, _spec_fields(ctx, row, (train, validation), method, learning_rate))
    _check_base(ctx, request.model, job, examples)  # a refusal rolls the job back
    row.job_id = job.id
    row = openai_repo.add_fine_tuning_job(ctx.session, row)
    audit.record(
        ctx,
        "fine_tuning.create",
        f"fine_tuning_job:{row.id}",
        model=row.model,
        training_file=row.training_file_id,
        validation_file=row.validation_file_id,
        job=job.id,
    )
    return row


def _spec_fields(
    ctx: ServiceContext,
    row: OpenAIFineTuningJob,
    files: tuple[OpenAIFile, OpenAIFile | None],
    method: FullMethod | LoraMethod,
    learning_rate: float,
) -> dict[str, Any]:
    """The Barge fine-tune that runs the job ``row`` over its (training, validation) files."""
    train, validation = files
    chosen = row.hyperparameters
    output = openai_files.files_prefix(ctx.settings, ctx.tenant).join(f"fine_tuning/{row.id}/")
    return {
        "type": "finetune",
        "base_model": model_ref(ctx.settings, row.model),
        "task": "generate",
        "train": train.uri,
        "validation": validation.uri if validation else None,
        "hyperparameters": {
            "epochs": chosen["n_epochs"],
            "batch_size": chosen["batch_size"],
            "learning_rate": learning_rate,
            "seed": row.seed,
        },
        "model_name": registered_name(row.model, row.suffix),
        "output": str(output),
        "input_format": "jsonl",
        "method": method,
        # A merged LoRA model exists only at the end.
        "epoch_models": 0 if isinstance(method, LoraMethod) and method.merge else EPOCH_MODELS,
        "metadata": {"openai_fine_tuning_job_id": row.id},
    }


def _submit(ctx: ServiceContext, spec_fields: dict[str, Any]) -> Job:
    """The Barge fine-tune, submitted; its refusals named by the request's fields."""
    try:
        spec = FinetuneSpec.model_validate(spec_fields)
        job, _ = submission.submit(ctx, submission.SubmitJob(spec))
    except ValidationError as exc:
        raise BadRequest(f"the job cannot run: {exc.errors()[0]['msg']}", field="model") from None
    except InvalidSpec as exc:
        field = {"base_model": "model", "train": "training_file", "validation": "validation_file"}
        raise BadRequest(exc.message, field=field.get(exc.field or "", exc.field)) from None
    return job


def get(session: Session, tenant_id: uuid.UUID, job_id: str) -> OpenAIFineTuningJob:
    row = (
        openai_repo.get_fine_tuning_job(session, tenant_id, job_id)
        if openai_files.is_id(job_id)
        else None
    )
    if row is None:
        raise NotFound(f"no such fine-tuning job: {excerpt(job_id)}", field="fine_tuning_job_id")
    return row


def _job(session: Session, row: OpenAIFineTuningJob) -> Job | None:
    return repo.get_job(session, row.job_id) if row.job_id else None


def cancel(ctx: ServiceContext, job_id: str) -> OpenAIFineTuningJob:
    """Cancel the Barge job (its training stops at the next step); 409 once it ended."""
    row = get(ctx.session, ctx.tenant.id, job_id)
    job = _job(ctx.session, row)
    if job is None or job.status in TERMINAL or job.status == CANCELLING:
        status = present(ctx.session, row).status
        raise Conflict(f"fine-tuning job {row.id} is already {status}; there is nothing to cancel")
    jobs.cancel(ctx, job)
    audit.record(ctx, "fine_tuning.cancel", f"fine_tuning_job:{row.id}", job=job.id)
    ctx.session.flush()
    return row


def pause(ctx: ServiceContext, job_id: str) -> OpenAIFineTuningJob:
    """Pause the training: it checkpoints at its next step and frees its worker (``pausing``,
    then ``paused``); 409 unless it is running (a paused job's pause changes nothing)."""
    row = get(ctx.session, ctx.tenant.id, job_id)
    job = _job(ctx.session, row)
    if job is None or job.status not in (RUNNING, *PAUSE_STATES):
        status = present(ctx.session, row).status
        raise Conflict(f"fine-tuning job {row.id} is {status}; only a running job can be paused")
    if job.status == RUNNING:
        jobs.pause(ctx, job)
        audit.record(ctx, "fine_tuning.pause", f"fine_tuning_job:{row.id}", job=job.id)
    ctx.session.flush()
    return row


def resume(ctx: ServiceContext, job_id: str) -> OpenAIFineTuningJob:
    """Resume a pausing or paused training from the checkpoint its pause took; 409 unless it
    is pausing or paused (a running job's resume changes nothing)."""
    row = get(ctx.session, ctx.tenant.id, job_id)
    job = _job(ctx.session, row)
    if job is None or job.status not in (RUNNING, *PAUSE_STATES):
        status = present(ctx.session, row).status
        raise Conflict(f"fine-tuning job {row.id} is {status}; only a paused job can be resumed")
    if job.status in PAUSE_STATES:
        jobs.resume(ctx, job)
        audit.record(ctx, "fine_tuning.resume", f"fine_tuning_job:{row.id}", job=job.id)
    ctx.session.flush()
    return row


_STATUS = {
    QUEUED: "queued",
    RUNNING: "running",
    PAUSING: "pausing",
    PAUSED: "paused",
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    CANCELLING: "cancelled",
    CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class FineTuningView:
    """A fine-tuning job as OpenAI's client reads it: the row, its Barge job, and what they
    tell: its OpenAI status, the model it registered (``name@N``) and the tokens it trained
    on once it succeeded, and when it should finish while it trains (Unix seconds)."""

    row: OpenAIFineTuningJob
    job: Job | None
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    estimated_finish: int | None
    barge: dict[str, Any] | None = None  # the Barge job it runs as and what that used


def present(session: Session, row: OpenAIFineTuningJob) -> FineTuningView:
    """The job as OpenAI's client reads it (``fine_tuning.job``)."""
    job = _job(session, row)
    status = _STATUS.get(job.status, "running") if job else "failed"
    model = repo.model_for_job(session, job.id) if job and status == "succeeded" else None
    estimated = None
    if job is not None and job.status == RUNNING and job.started_at and job.steps_total:
        done = repo.progress_for(session, [job.id])[job.id].steps_done
        _rate, eta = jobs.rate_and_eta(
            done, job.steps_total, (utcnow() - job.started_at).total_seconds(), True
        )
        estimated = int(utcnow().timestamp() + eta) if eta is not None else None
    return FineTuningView(
        row=row,
        job=job,
        status=status,
        fine_tuned_model=f"{model.name}@{model.version}" if model else None,
        trained_tokens=(model.metrics or {}).get("trained_tokens") if model else None,
        estimated_finish=estimated,
        barge=usage.extension(job, usage.usage_for(session, None, [job.id] if job else [])),
    )


# What an event's id shows (``ftevent-`` or ``ftckpt-`` and 32 hex digits): the event's number
# and its kind, sealed (AES, one block) with the job's own key; a cursor is read back with it.
EVENT_PREFIX, CHECKPOINT_PREFIX = "ftevent-", "ftckpt-"
_KINDS = {EVENT_PREFIX: 1, CHECKPOINT_PREFIX: 2}
_SEALED = re.compile(r"[0-9a-f]{32}")
BIGINT_MAX = 2**63 - 1


def _aes(row: OpenAIFineTuningJob) -> Cipher[Any]:
    return Cipher(algorithms.AES(bytes.fromhex(row.id_key)), modes.ECB())


def _tail(prefix: str) -> bytes:
    return bytes([_KINDS[prefix]]) + bytes(7)


def public_id(row: OpenAIFineTuningJob, prefix: str, event_id: int) -> str:
    """The opaque id of one of the job's events (``prefix`` says which list shows it): its
    number hints at nothing (another job's events, how many there are), and only this job's
    lists read it back (``read_cursor``)."""
    sealer = _aes(row).encryptor()
    return (
        prefix
        + (sealer.update(event_id.to_bytes(8, "big") + _tail(prefix)) + sealer.finalize()).hex()
    )


def read_cursor(row: OpenAIFineTuningJob, after: str | None, prefix: str) -> int | None:
    """The event number an ``after`` cursor (an id from this job's list) stands for; a 400 for
    anything else (another list's or job's id, a made-up one)."""
    if after is None:
        return None
    sealed = after[len(prefix) :] if after.startswith(prefix) else ""
    if _SEALED.fullmatch(sealed):  # ASCII hex only: no other digits get this far
        opener = _aes(row).decryptor()
        block = opener.update(bytes.fromhex(sealed)) + opener.finalize()
        number = int.from_bytes(block[:8], "big")
        if block[8:] == _tail(prefix) and number <= BIGINT_MAX:
            return number
    raise BadRequest(
        f"after must be an id from this job's list, got {excerpt(after)}", field="after"
    )


def page(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    after: str | None,
    metadata: dict[str, str] | None = None,
) -> openai_files.Page[FineTuningView]:
    after_row = None
    if after is not None:
        after_row = (
            openai_repo.get_fine_tuning_job(session, tenant_id, after)
            if openai_files.is_id(after)
            else None
        )
        if after_row is None:
            raise BadRequest(f"after: no such fine-tuning job {excerpt(after)}", field="after")
    rows, more = openai_repo.list_fine_tuning_jobs(session, tenant_id, limit, after_row, metadata)
    return openai_files.Page([present(session, r) for r in rows], more)


@dataclass(frozen=True)
class FineTuningEvent:
    """One of a job's events as OpenAI shows it (``fine_tuning.job.event``); ``id`` is opaque
    (``public_id``)."""

    id: str
    at: datetime
    level: str  # info, warn or error
    message: str
    data: dict[str, Any]
    type: str  # metrics or message


@dataclass(frozen=True)
class FineTuningCheckpoint:
    """One epoch's checkpoint (``fine_tuning.job.checkpoint``): its metrics, and the model it
    is usable as (``name@N``) when Barge kept one."""

    id: str
    at: datetime
    model: str | None
    job_id: str  # the fine-tuning job's id
    metrics: dict[str, Any]
    step: Any
    epoch: Any


def _event(row: OpenAIFineTuningJob, event: JobEvent) -> FineTuningEvent:
    data = {k: v for k, v in (event.data or {}).items() if k != "spec"}
    kind, message = event.kind, event.message
    level = "info"
    if kind == "status":
        message = message or f"job {event.to_status}"
        if event.to_status == FAILED:
            level = "error"
        data = {"status": _STATUS.get(event.to_status or "", event.to_status), **data}
    elif kind in EVENT_WARN_KINDS:
        level = "warn"
    if kind == "created":
        message = f"created fine-tuning job {row.id}"
    if kind == "train":
        data = {
            "step": data.get("step"),
            "train_loss": data.get("loss"),
            "total_steps": data.get("steps_total"),
            **data,
        }
    return FineTuningEvent(
        id=public_id(row, EVENT_PREFIX, event.id),
        at=event.at,
        level=level,
        message=message,
        data=data,
        type="metrics" if kind in ("train", CHECKPOINT_KIND) else "message",
    )


def events(
    session: Session, tenant_id: uuid.UUID, job_id: str, limit: int, after: str | None
) -> openai_files.Page[FineTuningEvent]:
    """The job's events, newest first (``after``: the last of the previous page)."""
    row = get(session, tenant_id, job_id)
    before = read_cursor(row, after, EVENT_PREFIX)
    if row.job_id is None:
        return openai_files.Page([], False)
    found, more = repo.events_newest_first(session, row.job_id, limit, before)
    return openai_files.Page([_event(row, e) for e in found], more)


def _checkpoint(
    row: OpenAIFineTuningJob, event: JobEvent, usable: dict[Any, str]
) -> FineTuningCheckpoint:
    record = event.data or {}
    metrics = {
        "step": record.get("step"),
        "train_loss": record.get("train_loss"),
        "valid_loss": record.get("validation_loss"),
        "full_valid_loss": record.get("validation_loss"),
        **{
            k.replace("validation_", "valid_"): v
            for k, v in record.items()
            if k.startswith("validation_") and k != "validation_loss"
        },
    }
    return FineTuningCheckpoint(
        id=public_id(row, CHECKPOINT_PREFIX, event.id),
        at=event.at,
        model=usable.get(record.get("epoch")),
        job_id=row.id,
        metrics=metrics,
        step=record.get("step"),
        epoch=record.get("epoch"),
    )


def checkpoints(
    session: Session, tenant_id: uuid.UUID, job_id: str, limit: int, after: str | None
) -> openai_files.Page[FineTuningCheckpoint]:
    """One checkpoint per finished epoch, newest first, with its train loss and validation
    metrics. The registered epoch and the kept epochs before it (``EPOCH_MODELS``) name their
    models (``name@N``, usable as any model); Barge keeps no model of the others, so theirs is
    null."""
    row = get(session, tenant_id, job_id)
    before = read_cursor(row, after, CHECKPOINT_PREFIX)
    if row.job_id is None:
        return openai_files.Page([], False)
    found, more = repo.events_newest_first(session, row.job_id, limit, before, (CHECKPOINT_KIND,))
    usable = _epoch_models(session, row.job_id)
    return openai_files.Page([_checkpoint(row, e, usable) for e in found], more)


def _epoch_models(session: Session, job_id: uuid.UUID) -> dict[Any, str]:
    """``name@N`` of each epoch the job registered a model of, by epoch: its own model (the
    selected epoch, else the last) and its epoch models."""
    out: dict[Any, str] = {}
    for model in repo.models_for_job(session, job_id):
        values = model.metrics or {}
        epoch = (
            values.get("epoch")
            if repo.is_epoch_model(model)
            else _registered_epoch(session, job_id, values)
        )
        out[epoch] = f"{model.name}@{model.version}"
    return out


def _registered_epoch(session: Session, job_id: uuid.UUID, metrics: dict[str, Any]) -> Any:
    """The epoch a job's own model is: the one select best chose, else the last evaluated."""
    if "selected_epoch" in metrics:
        return metrics["selected_epoch"]
    last, _ = repo.events_newest_first(session, job_id, 1, None, (CHECKPOINT_KIND,))
    return last[0].data.get("epoch") if last else None


RESULT_COLUMNS = ("step", "train_loss", "valid_loss", "valid_exact_match")
RESULT_EVENT_KINDS = ("train", CHECKPOINT_KIND)  # the events the results file is made of


def results_csv(events: list[JobEvent]) -> bytes:
    """The results file of a fine-tuning job: one row per step with a ``train`` event (the
    mean training loss since the one before) or an epoch's evaluation (validation metrics),
    by step."""
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.data or {}
        step = data.get("step")
        if not isinstance(step, int):
            continue
        row = rows.setdefault(step, {"step": step})
        if event.kind == "train":
            row["train_loss"] = data.get("loss")
        elif event.kind == CHECKPOINT_KIND:
            row.setdefault("train_loss", data.get("train_loss"))
            row["valid_loss"] = data.get("validation_loss")
            row["valid_exact_match"] = data.get("validation_exact_match")
    lines = [",".join(RESULT_COLUMNS)]
    for step in sorted(rows):
        row = rows[step]
        lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in RESULT_COLUMNS))
    return ("\n".join(lines) + "\n").encode()


def for_job(session: Session, job_id: uuid.UUID) -> OpenAIFineTuningJob | None:
    return openai_repo.fine_tuning_job_for(session, job_id)


def attach_results(
    session: Session, row: OpenAIFineTuningJob, job: Job, uri: S3Uri, size: int
) -> None:
    """At finalize of a succeeded job: its results file, written at ``uri``, becomes a file of
    its tenant listed in ``result_files``. Idempotent."""
    if row.result_file_id is not None:
        return
    row.result_file_id = openai_files.add_output_file(
        session,
        job.tenant_id,
        uri,
        f"{row.id}_results.csv",
        size,
        purpose=openai_files.RESULTS_PURPOSE,
    ).id
    session.flush()
