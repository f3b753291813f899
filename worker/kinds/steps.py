"""What a job kind's steps take and give (``worker.kinds.JobKind``): a ``Plan`` (the shards a
kind's plan step made of a job, with what the planning event says), and a job being finalized
(``Finalizing``) and what its kind's finalize step made of it (``Finished``: the manifest and
the summary its final transition says); ``timings``, which every manifest carries.

No torch, nothing of the runners. Imports: ``barge``, ``db``, ``worker.context``; never ``api``
or ``cli``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Job, Shard
from worker.context import WorkerContext


@dataclass
class Plan:
    """A planned job: its shards (not yet added to the session), its records (training records
    for a fine-tune), and the message and data of its ``running`` event; ``steps_total`` for a
    fine-tune."""

    shards: list[Shard]
    total: int
    message: str
    data: dict[str, int]
    steps_total: int | None = None


@dataclass(frozen=True)
class Finalizing:
    """A job whose units are all settled, in the finalizing transaction: the status it ends in
    and why (``error``); ``writes`` is False when the job may not write its output any more (its
    tenant's scopes changed): then nothing is written."""

    ctx: WorkerContext
    session: Session
    job: Job
    shards: list[Shard]
    status: str
    error: str | None
    writes: bool


@dataclass(frozen=True)
class Finished:
    """What a kind's finalize step made of a job: its ``_manifest.json`` and the summary its
    final transition says (when no error does)."""

    manifest: dict[str, Any]
    summary: str


def timings(job: Job) -> dict[str, Any]:
    """When the job was created, started and finished, and the seconds it ran."""
    finished = utcnow()
    return {
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": finished.isoformat(),
        "seconds": round((finished - (job.started_at or job.created_at)).total_seconds(), 3),
    }
