"""/v1/jobs: the job body (an inference spec or a fine-tune, told apart by ``type``), its
examples, and the job, event, shard and file responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from barge.specs import FinetuneSpec, InferenceSpec
from services.jobs import JobView

# The vocabularies, as enums in the OpenAPI schema (barge.status and barge.specs.JOB_TYPES hold
# the same values; tests/e2e/test_api_contract.py checks they agree).
JobStatus = Literal[
    "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelling", "cancelled"
]
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
    worker: str = Field(
        description="The worker the attempts ran in, by an opaque label (the same in the "
        "job's shards and the console's timeline); the admin's workers page names it"
    )
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


class RetryChildOut(BaseModel):
    id: str
    retry: int | None
    status: JobStatus
    output: str


class EffectiveRecordsOut(BaseModel):
    total: int
    succeeded: int = Field(description="Succeeded in the job or any of its retries")
    failed: int = Field(description="Failed in its newest finished retry")
    not_processed: int


class RetriesOut(BaseModel):
    children: list[RetryChildOut] | None = None
    records: EffectiveRecordsOut | None = None
    parent: str | None = Field(None, description="A retry: the job it retries")
    retry: int | None = Field(None, description="A retry: its number (output retry-N/)")


class RetryBody(BaseModel):
    """What a retry changes of its job's spec; anything left out stays as it was."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=2048, description="Another model or version")
    batch_size: int | None = Field(None, ge=1, le=4096)
    shard_size: int | None = Field(None, ge=1)
    max_failed_ratio: float | None = Field(None, ge=0.0, le=1.0)
    params: dict[str, Any] | None = None
    output_format: Literal["jsonl", "parquet"] | None = None


RETRY_EXAMPLES = {
    "same": {"summary": "Retry what failed with the same spec", "value": {}},
    "smaller": {
        "summary": "Retry with smaller batches (after an out-of-memory failure)",
        "value": {"batch_size": 8},
    },
}


class DryRunRecordsOut(BaseModel):
    count: int
    exact: bool = Field(description="False when estimated from a sample of a large object")


class DryRunTokensOut(BaseModel):
    input: int = Field(description="Input tokens of the whole job, estimated")
    per_record: float
    sampled_records: int


class MeasuredOut(BaseModel):
    shards: int
    records: int
    seconds: float = Field(description="Processing seconds: the shards' wall less cold starts")
    loads: int = Field(description="Shards that paid a cold start (imports, model load)")
    load_seconds: float = Field(description="The cold starts' seconds, summed")


class EstimateOut(BaseModel):
    duration_seconds: float = Field(
        description="From the first shard's start to the last's end, cold start included"
    )
    device_hours: float
    device: str = Field(description="The kind of device the estimate is for")
    workers: int = Field(description="Workers of that kind its shards are spread over")
    records_per_second: float = Field(description="Per device, as measured, processing only")
    model_warm: bool = Field(
        description="A live GPU worker holds the model warm for the task: no cold start assumed"
    )
    cold_start_seconds: float | None = Field(
        description="Added to the duration for loading the model: 0 when warm, else the mean "
        "cold start measured; null when none was measured (nothing added)"
    )
    confidence: Literal["low", "medium", "high"]
    measured: MeasuredOut = Field(description="The past shards the rate was measured over")


class DryRunOut(BaseModel):
    """What a submission would make: it passed every check; no job was created."""

    dry_run: Literal[True]
    type: JobType
    model_uri: str
    output: str
    records: DryRunRecordsOut
    shards: int
    tokens: DryRunTokensOut | None = Field(
        description="Null without a tokenizer.json or for records other than text"
    )
    estimate: EstimateOut | None = Field(
        description="Null when this model never ran this task here"
    )


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
    retries: RetriesOut | None = Field(
        None,
        description="A retried job: its retries and its records counted once across them; "
        "a retry: the job it retries and its number; null otherwise",
    )


def job_out(view: JobView) -> JobOut:
    """The job as the API answers it."""
    return JobOut.model_validate(view.as_dict())


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
    source: str = Field(
        validation_alias="source_uri",
        description="Its input object; for a packed shard (many small objects read as one), "
        "the pack listing under the job's output (_inputs/pack-*.jsonl, one line per object)",
    )
    objects: int | None = Field(
        None,
        validation_alias="pack_objects",
        description="A packed shard: how many objects it reads; null for an object's own shard",
    )
    first_source: str | None = Field(
        None, validation_alias="pack_first", description="A packed shard: its first object"
    )
    last_source: str | None = Field(
        None, validation_alias="pack_last", description="A packed shard: its last object"
    )
    start_record: int = Field(
        description="Index of its first record in its object (a packed shard: of its first "
        "object's entry in the listing)"
    )
    record_count: int
    attempt: int
    worker: str | None = Field(
        description="The worker of its latest attempt, by the label the job's usage gives it"
    )
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


def _job_type(body: object) -> str:
    if isinstance(body, dict):
        return str(body.get("type", "inference"))
    return str(getattr(body, "type", "inference"))


# `type` picks the spec: "inference" (the default) or "finetune".
JobBody = Annotated[
    Annotated[InferenceSpec, Tag("inference")] | Annotated[FinetuneSpec, Tag("finetune")],
    Discriminator(_job_type),
]


# The examples of /docs ("Try it out" starts from one of them).
JOB_EXAMPLES = {
    "embed": {
        "summary": "Embed a prefix of JSONL files",
        "value": {
            "type": "inference",
            "model": "s3://barge/acme/models/all-minilm-l6-v2/",
            "task": "embed",
            "input": "s3://barge/acme/reviews/",
            "output": "s3://barge/acme/reviews-embedded/",
            "text_field": "text",
            "id_field": "id",
            "batch_size": 64,
            "params": {"normalize": True},
            "metadata": {"team": "search"},
        },
    },
    "generate": {
        "summary": "Generate from chat messages with a registered model",
        "value": {
            "type": "inference",
            "model": "support-bot@2",
            "task": "generate",
            "input": "s3://barge/acme/tickets/open.jsonl",
            "output": "s3://barge/acme/tickets-answered/",
            "messages_field": "messages",
            "params": {"max_new_tokens": 128, "temperature": 0},
        },
    },
    "finetune": {
        "summary": "Fine-tune a classifier",
        "value": {
            "type": "finetune",
            "base_model": "s3://barge/acme/models/all-minilm-l6-v2/",
            "task": "classify",
            "train": "s3://barge/acme/tickets/train.jsonl",
            "validation": "s3://barge/acme/tickets/val.jsonl",
            "hyperparameters": {"epochs": 3, "batch_size": 16, "learning_rate": 5e-5},
            "model_name": "ticket-router",
            "checkpoint_every_steps": 200,
        },
    },
}
