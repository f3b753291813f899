"""Response bodies, and what every request body must be to be storable."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


class JobOut(BaseModel):
    id: str
    type: str
    status: str
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
        None  # token totals of generate jobs and OpenAI batches, once final
    )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: str
    from_status: str | None
    to_status: str | None
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    events: list[EventOut]
    next_after: int


class ShardOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    index: int
    status: str
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


class ErrorOut(BaseModel):
    error: str
    message: str
    field: str | None = None
    detail: Any = None


# The error bodies every /v1 route can answer with, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 422)
}
