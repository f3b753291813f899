"""Finalizing a job: once every unit is settled, its kind's finalize step writes what the kind
writes (an OpenAI batch's files, a fine-tune's results) and makes the manifest; then
``_manifest.json`` (and ``_SUCCESS`` on success) is written last, and the job moves to its final
state. Idempotent: safe to run twice. It sends nothing, so it opens a plain ``ctx.session()``
scope.

The manifest carries what the job's attempts used (``resources``: ``services.usage``). A
retry's finalize writes its parent's manifest again, naming it (``services.retries``).

Imports: ``barge``, ``db``, ``services``, ``worker.context``, ``worker.kinds`` (no torch),
``worker.samples``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import logging
import uuid

from barge.specs import JobSpec, parse_spec
from barge.storage import S3Uri
from db import repositories as repo
from db import state
from db.base import utcnow
from db.models import Job, Shard
from services import retries, scopes
from services import usage as used_by
from worker import samples
from worker.context import WorkerContext
from worker.kinds import JobKind, kind_for
from worker.kinds.steps import Finalizing

log = logging.getLogger(__name__)


def finalize_job(ctx: WorkerContext, job_id: uuid.UUID) -> None:
    with ctx.session() as session:
        job = repo.lock_job(session, job_id)
        if job is None or job.manifest is not None:
            return  # gone, or already finalized
        if job.status == state.QUEUED:
            return  # not planned yet
        if repo.unfinished_shard_count(session, job_id):
            return  # the last shard to settle sends us again
        shards = repo.shards_of(session, job_id)
        spec = parse_spec(job.spec)
        kind = kind_for(spec)
        target, error = _outcome(job, shards, spec, kind)
        denied = scopes.denial(session, ctx.settings, job)  # nothing written outside them
        if denied:
            target, error = state.FAILED, denied
        done = kind.finalize(
            Finalizing(ctx, session, job, shards, target, error, writes=not denied)
        )
        manifest = done.manifest
        manifest["resources"] = used_by.job_usage(session, ctx.settings, job)
        now = utcnow()  # the job's last progress sample: where it ended
        repo.add_job_sample(session, job.id, samples.slot_of(ctx.settings, now), now, replace=True)
        out = S3Uri.parse(job.output_uri).as_prefix()
        if not denied:  # nothing is written where the tenant may not write
            ctx.store.put_bytes(
                out.join("_manifest.json"), json.dumps(manifest, indent=2).encode() + b"\n"
            )
        if target == state.SUCCEEDED:
            ctx.store.put_bytes(out.join("_SUCCESS"), b"")
        job.manifest = manifest
        if job.status != target:
            state.transition(
                session,
                job,
                target,
                error=error,
                message=error or done.summary,
                data={"records": manifest["records"]},
            )
        if job.parent_id is not None and not denied:  # a retry: its parent's manifest names it
            parent = repo.get_job(session, job.parent_id)
            if parent is not None:
                retries.write_parent_manifest(session, ctx.store, parent)


def _outcome(job: Job, shards: list[Shard], spec: JobSpec, kind: JobKind) -> tuple[str, str | None]:
    if job.status == state.CANCELLING:
        return state.CANCELLED, None
    if job.status == state.FAILED:
        return state.FAILED, job.error
    failed_shards = [s for s in shards if s.status == state.SHARD_FAILED]
    if failed_shards:
        return state.FAILED, failed_shards[0].last_error or f"shard {failed_shards[0].index} failed"
    error = kind.verdict(spec, shards)
    return (state.FAILED, error) if error else (state.SUCCEEDED, None)
