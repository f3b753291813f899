"""Response bodies, and what every request body must be to be storable."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The vocabularies, as enums in the OpenAPI schema (barge.status and barge.specs.JOB_TYPES hold
# the same values; tests/e2e/test_api_contract.py checks they agree).
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
JobType = Literal["inference", "finetune"]
ShardStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class ProgressOut(BaseModel):
    records_total: int | None
    records_succeeded: int
    records_failed: int
    shards_total: int | None
    shards_done: int
    records_per_second: float | None
    eta_seconds: float | None
    steps_done: int | None = Field(None, description="Fine-tunes: optimizer steps done.")
    steps_total: int | None = Field(None, description="Fine-tunes: optimizer steps in all.")


class OutputOut(BaseModel):
    uri: str
    manifest: str | None
    errors: str | None


class DeviceUsageOut(BaseModel):
    worker: str = Field(description="The worker process (host:pid) the attempts ran in")
    device: str | None = Field(description="As torch names it: cuda:0, cpu, cuda:0,cuda:1")
    name: str | None = Field(description="The device's name, e.g. NVIDIA H100 80GB HBM3")
    attempts: int
    wall_seconds: float | None
    busy_seconds: float | None = Field(description="Model compute; null where not timed")
    energy_joules: float | None = Field(
        description="Measured by NVML; null where the device has no energy counter"
    )


class CostOut(BaseModel):
    amount: float
    currency: str
    basis: str


class UsageOut(BaseModel):
    """What a job's shard attempts used (every attempt, retried ones too); attempts still
    running count once they end."""

    attempts: int
    attempts_running: int
    wall_seconds: float = Field(description="Seconds attempts held their devices, summed")
    busy_seconds: float | None = Field(description="Seconds of model compute (inference)")
    cpu_seconds: float = Field(description="CPU time of the worker processes")
    gpu_seconds: float = Field(description="Wall seconds times the GPUs held")
    tokens_in: int | None = Field(description="Prompt tokens (generation)")
    tokens_out: int | None = Field(description="Generated tokens (generation)")
    energy_joules: float | None = Field(
        description="NVML's energy counter on NVIDIA GPUs, summed; null unless every attempt "
        "measured it (never an estimate)"
    )
    devices: list[DeviceUsageOut]
    cost: CostOut | None = Field(description="From BARGE_PRICE_PER_DEVICE_HOUR; null if unset")


class JobOut(BaseModel):
    id: str
    type: JobType
    status: JobStatus
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: ProgressOut
    output: OutputOut
    error: str | None
    metadata: dict[str, Any]
    waiting: str | None = Field(
        None,
        description="What the job waits for, when it waits: 'waiting to be planned', "
        "'waiting for a GPU worker: 2 jobs ahead', 'finalizing', ...; null while its shards "
        "run and once it is finalized.",
    )
    usage: dict[str, int] | None = (
        None  # token totals of generate and text2text jobs and OpenAI batches, once final
    )
    resources: UsageOut | None = Field(
        None,
        description="What the job's attempts used: device seconds, tokens, energy, cost; "
        "null before its first attempt",
    )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: str
    from_status: JobStatus | None
    to_status: JobStatus | None
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    events: list[EventOut]
    next_after: int


class ShardOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    index: int
    status: ShardStatus
    source: str = Field(validation_alias="source_uri")
    start_record: int
    record_count: int
    attempt: int
    worker: str | None
    records_succeeded: int
    records_failed: int
    last_error: str | None
    lease_expires_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class ShardList(BaseModel):
    shards: list[ShardOut]


class JobFileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="Relative to the job's output prefix: part-00000.jsonl, ...")
    kind: Literal["part", "errors", "manifest", "other"] = Field(
        description="part: results of one shard; errors: its failed records; manifest: "
        "_manifest.json; other: _SUCCESS, a fine-tune's model and checkpoints, ..."
    )
    size: int = Field(description="Bytes")


class JobFileList(BaseModel):
    output: str = Field(description="The job's output prefix")
    files: list[JobFileOut] = Field(description="Parts, errors files, manifest, the rest")


class ErrorOut(BaseModel):
    """Every error of the /v1 API (the /openai/v1 surface keeps OpenAI's envelope)."""

    error: str = Field(description="A stable code: not_found, invalid_request, forbidden, ...")
    message: str = Field(description="What went wrong and what to do, in words")
    field: str | None = Field(
        None, description="The request field at fault (`body` for the body as a whole), or null"
    )
    detail: Any = Field(None, description="More, when there is more: each problem, a quota")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid_request",
                    "message": "batch_size: Input should be greater than or equal to 1",
                    "field": "batch_size",
                    "detail": [{"field": "batch_size", "message": "Input should be ..."}],
                }
            ]
        }
    )


# What each status means, for the OpenAPI schema: every operation lists only those it can answer.
ERROR_MEANINGS = {
    401: "No API key, or one that is unknown, revoked or expired (`WWW-Authenticate: Bearer`).",
    403: "Outside the tenant's storage scopes, or an admin call made with a member's key.",
    404: "No such resource for this tenant (another tenant's is a 404 too).",
    409: "Conflicts with the resource's state or with an existing one.",
    413: "The body is over BARGE_MAX_BODY_BYTES; refused before it is read.",
    422: "Invalid input: `field` names where, `message` says what is wrong.",
    429: "Over a quota of the tenant (`Retry-After` says when to try again).",
    502: "The object store failed or refused Barge's request.",
    503: "The database is unavailable; retry shortly.",
}
HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}},
}


def errors(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error responses of an authenticated /v1 operation: 401 and 503 always, 413 and 422
    when it takes a body, and ``codes``."""
    every = {401, 503, *codes, *((413, 422) if body else ())}
    return {
        code: {
            "model": ErrorOut,
            "description": ERROR_MEANINGS[code],
            **({"headers": HEADERS[code]} if code in HEADERS else {}),
        }
        for code in sorted(every)
    }
