"""The one rule for where a job may read and write, used by every way a job is submitted (the
HTTP API, drop folders): one place, one spelling, one job."""

from __future__ import annotations

import uuid
from typing import Any

from barge.errors import InvalidSpec
from barge.specs import JobSpec
from barge.storage import S3Uri, check_bucket_allowed
from barge.uris import overlap
from db import repositories as repo
from db.models import Job
from services.context import ServiceContext

# Objects in an output prefix that say another job already wrote there.
TAKEN_MARKERS = {
    "_manifest.json": "a finished job's outputs",
    "_SUCCESS": "a finished job's outputs",
    "checkpoints/latest.json": "another fine-tune's checkpoints",
}


def reads(spec: JobSpec | dict[str, Any]) -> list[tuple[str, str]]:
    """(field, location) for each place a job reads; an input without a trailing "/" may be
    an object or a prefix, so it counts as both. Takes a spec or a stored spec's JSON (read as
    it is: a row written by an older version must not stop new submissions)."""
    data = spec if isinstance(spec, dict) else spec.model_dump()
    fields = ("train", "validation") if data.get("type") == "finetune" else ("input",)
    return [
        (field, form)
        for field in fields
        if isinstance(u := data.get(field), str) and u
        for form in ([u] if u.endswith("/") else [u, u + "/"])
    ]


def check_locations(
    ctx: ServiceContext,
    output: str,
    reading: list[tuple[str, str]],
    parent_id: uuid.UUID | None = None,
) -> str:
    """The one rule for where a job may write; returns the output prefix. ``output`` and the
    ``reading`` locations are normalised already (by the spec that names them, or built from
    normalised scopes).

    The output may not overlap the job's own input; may not equal, contain or lie inside any
    other job's output (running or finished, whatever its status), nor overlap the input of a
    job that is not final; an active job's output is not an input. A prefix that already holds
    a manifest or checkpoints is refused too. A retry (``parent_id``: the job it retries)
    writes inside that job's output, and only there. Concurrent submissions take this check in turn
    (the lock is held until the caller commits), so two jobs can never both win one place."""
    out, prefix = output, S3Uri.parse(output)
    check_bucket_allowed(ctx.settings, prefix, "output")
    for field, uri in reading:
        if overlap(out, uri):
            raise InvalidSpec(
                f"output {out} overlaps the job's own {field} {uri}: its outputs would be "
                "read as its input; write them under another prefix",
                field="output",
            )
    for marker, what in TAKEN_MARKERS.items():
        if ctx.store.head(prefix.join(marker)) is not None:
            raise InvalidSpec(
                f"output prefix {out} already holds {what} ({marker}); choose a new output prefix",
                field="output",
            )
    session, tenant_id = ctx.session, ctx.tenant.id
    repo.lock_submissions(session)
    other = repo.job_with_output_overlapping(session, out, parent_id)
    if other is not None:
        raise InvalidSpec(
            f"output prefix {out} overlaps {_whose('output', other.output_uri, other, tenant_id)}"
            "; every job needs a prefix of its own",
            field="output",
        )
    for job in repo.active_jobs(session):
        theirs = [u for _, u in reads(job.spec)]
        clash = next((u for u in theirs if overlap(out, u)), None)
        if clash is not None:
            raise InvalidSpec(
                f"output prefix {out} overlaps {_whose('input', clash, job, tenant_id)}; it "
                "would change that job's input while it runs",
                field="output",
            )
        mine = next(((f, u) for f, u in reading if overlap(job.output_uri, u)), None)
        if mine is not None:
            raise InvalidSpec(
                f"{mine[0]} {mine[1]} overlaps {_whose('output', job.output_uri, job, tenant_id)}"
                ", which is still being written; wait for it to finish",
                field=mine[0],
            )
    return out


def _whose(what: str, uri: str, job: Job, tenant_id: uuid.UUID) -> str:
    """How a refusal names another job's location: the location, the job's id and status for
    the same tenant; for another tenant's, only that it is another tenant's job (an admin may
    have given two tenants scopes that share a prefix: neither learns the other's paths)."""
    if job.tenant_id == tenant_id:
        return f"the {what} {uri} of job {job.id} ({job.status})"
    return "another tenant's job"
