"""/openai/v1/batches: the create body, and a batch as OpenAI's ``batch`` object."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from api.schemas.openai_common import timestamp
from services.openai_batches import BatchView


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, Any] | None = None


def batch_object(view: BatchView) -> dict[str, Any]:
    batch, job, progress, status = view.batch, view.job, view.progress, view.status
    finished = job.finished_at if job is not None else batch.created_at
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": view.errors} if view.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": timestamp(batch.created_at),
        "in_progress_at": timestamp(job.started_at) if job else None,
        "expires_at": timestamp(batch.expires_at),
        "finalizing_at": timestamp(job.finished_at) if job and status == "completed" else None,
        "completed_at": timestamp(finished) if status == "completed" else None,
        "failed_at": timestamp(finished) if status == "failed" else None,
        "expired_at": timestamp(batch.expired_at) if status == "expired" else None,
        "cancelling_at": timestamp(batch.cancelling_at),
        "cancelled_at": timestamp(finished) if status == "cancelled" else None,
        "request_counts": {
            "total": batch.total,
            "completed": progress.records_succeeded if progress else 0,
            "failed": (progress.records_failed if progress else 0)
            + (batch.expired_requests or 0)
            + (batch.cancelled_requests or 0),
        },
        "usage": _usage(batch.usage),
        "model": batch.model,
        "metadata": batch.meta,
        "barge": view.barge,
    }


def _usage(totals: dict[str, int] | None) -> dict[str, Any] | None:
    if totals is None:
        return None
    return {
        "input_tokens": totals.get("prompt_tokens", 0),
        "output_tokens": totals.get("completion_tokens", 0),
        "total_tokens": totals.get("total_tokens", 0),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
