"""/openai/v1/fine_tuning/jobs: the create body (OpenAI's fields and Barge's ``barge``
extension), the list's ``metadata[KEY]=VALUE`` filter (which the handler reads from the query
itself and the schema declares), and jobs, events and checkpoints as OpenAI's objects."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from api.schemas.openai_common import timestamp
from barge.status import FAILED
from services.openai_fine_tuning import (
    TERMINAL,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningView,
)


class FineTuningJobCreate(BaseModel):
    """A create request's body: OpenAI's fields and Barge's ``barge`` extension
    (``{"method": {"type": "lora", ...}}`` or ``{"type": "full"}``). Every field is taken as
    sent and checked by the service, so that each refusal names its field and says what to
    fix."""

    model_config = ConfigDict(extra="ignore")

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


METADATA_KEY = re.compile(r"^metadata\[(.{1,64})\]$")
# The metadata filter the handler reads from the query itself, for the schema.
METADATA_FILTER = {
    "parameters": [
        {
            "name": "metadata",
            "in": "query",
            "required": False,
            "style": "deepObject",
            "explode": True,
            "description": "metadata[KEY]=VALUE: only jobs whose metadata has KEY set to VALUE",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    ]
}


def fine_tuning_job(view: FineTuningView) -> dict[str, Any]:
    """A job as OpenAI's ``fine_tuning.job`` object."""
    row, job = view.row, view.job
    hyperparameters = dict(row.hyperparameters)
    return {
        "id": row.id,
        "object": "fine_tuning.job",
        "created_at": timestamp(row.created_at),
        "error": (
            {"code": "job_failed", "message": job.error or "the job failed", "param": None}
            if job is not None and job.status == FAILED
            else None
        ),
        "fine_tuned_model": view.fine_tuned_model,
        "finished_at": timestamp(job.finished_at) if job and job.status in TERMINAL else None,
        "hyperparameters": hyperparameters,
        "model": row.model,
        "organization_id": f"org-{job.tenant_id}" if job else f"org-{row.tenant_id}",
        "result_files": [row.result_file_id] if row.result_file_id else [],
        "seed": row.seed,
        "status": view.status,
        "trained_tokens": view.trained_tokens,
        "training_file": row.training_file_id,
        "validation_file": row.validation_file_id,
        "estimated_finish": view.estimated_finish,
        "integrations": [],
        "metadata": row.meta,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "user_provided_suffix": row.suffix,
        "barge": view.barge,
    }


def fine_tuning_event(event: FineTuningEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": timestamp(event.at),
        "level": event.level,
        "message": event.message,
        "data": event.data,
        "type": event.type,
    }


def fine_tuning_checkpoint(checkpoint: FineTuningCheckpoint) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": timestamp(checkpoint.at),
        "fine_tuned_model_checkpoint": checkpoint.model,
        "fine_tuning_job_id": checkpoint.job_id,
        "metrics": checkpoint.metrics,
        "step_number": checkpoint.step,
        "epoch": checkpoint.epoch,
    }
