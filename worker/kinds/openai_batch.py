"""The OpenAI batch kind's finalize step: the records manifest, and the batch's two files.
The shards' parts are joined into one output and one error file under the job's output
(``assemble``, streamed through a local file, never whole in memory) and registered as the
batch's files with its token totals; the requests of an expired or cancelled batch that never
ran get an error line each (code ``batch_expired`` or ``batch_cancelled``), so each custom_id
appears exactly once across the two files. ``line_id`` makes the lines' ids, here and in the run step
(``worker.runners.openai_batch``), deterministic: a re-run shard writes the very same lines.

No torch, nothing of the runners. Imports: ``barge``, ``db``, ``services.openai_batches``,
``worker.context``, ``worker.kinds``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from sqlalchemy.orm import Session

from barge.errors import NotFound, ObjectChanged
from barge.records import Format, Range, iter_range, plan_ranges
from barge.status import CANCELLED, SHARD_SUCCEEDED
from barge.storage import ObjectInfo, S3Uri
from db.models import Job, Shard
from services import openai_batches
from worker.context import WorkerContext
from worker.kinds import records
from worker.kinds.steps import Finalizing, Finished


def finalize(done: Finalizing) -> Finished:
    """The records manifest, with the batch's token totals once its files are written."""
    finished = records.finalize(done)
    if done.writes:  # an OpenAI batch: its two files
        finished.manifest["usage"] = assemble(
            done.ctx, done.session, done.job, done.shards, done.status
        )
    return finished


def line_id(job_id: uuid.UUID, custom_id: str, kind: str) -> str:
    """Deterministic ids, so a re-run shard writes the very same lines."""
    return uuid.uuid5(job_id, f"{kind}:{custom_id}").hex


def unrun_error(session: Session, job: Job, status: str) -> dict[str, str] | None:
    """The error each request that never ran gets: ``batch_expired`` when the batch's window
    ended, ``batch_cancelled`` when it was cancelled; None when every request ran."""
    batch = openai_batches.batch_for_job(session, job.id)
    if batch is not None and batch.expired_at is not None:
        return {"code": "batch_expired", "message": openai_batches.EXPIRED_MESSAGE}
    if status == CANCELLED:
        return {"code": "batch_cancelled", "message": openai_batches.CANCELLED_MESSAGE}
    return None


def assemble(
    ctx: WorkerContext, session: Session, job: Job, shards: list[Shard], status: str
) -> dict[str, int]:
    """Join the shards' parts into ``output.jsonl`` and ``errors.jsonl`` under the job's
    output (streamed through a local file, never whole in memory), register them as the
    batch's files, and return the token totals read from the responses. A batch ending
    ``status`` cancelled (or expired) lists each request that never ran in its error file."""
    out = S3Uri.parse(job.output_uri).as_prefix()
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    joined: dict[str, tuple[S3Uri, int, int] | None] = {}
    unrun_as = unrun_error(session, job, status)
    expired = unrun_as is not None
    seen: set[str] = set()  # custom_ids with a line (kept only when some never ran)
    unrun = 0
    ordered = sorted(shards, key=lambda s: s.index)
    with ctx.scratch() as tmp:
        for name, keys in (
            ("output.jsonl", [s.output_key for s in ordered]),
            ("errors.jsonl", [s.errors_key for s in ordered]),
        ):
            path = tmp / name
            lines = 0
            with path.open("wb") as f:
                for key in keys:
                    if not key:
                        continue
                    with ctx.store.open(S3Uri(out.bucket, key)) as src:
                        for line in src:
                            f.write(line)
                            lines += 1
                            parsed = json.loads(line)
                            if expired:
                                seen.add(parsed.get("custom_id"))
                            body = (parsed.get("response") or {}).get("body") or {}
                            for k, v in (body.get("usage") or {}).items():
                                if k in usage and isinstance(v, int):
                                    usage[k] += v
                if name == "errors.jsonl" and unrun_as is not None:
                    for line_bytes in _unrun_lines(ctx, job, ordered, seen, unrun_as):
                        f.write(line_bytes)
                        lines += 1
                        unrun += 1
            target = out.join(name)
            ctx.store.put_file(target, path)
            joined[name] = (target, path.stat().st_size, lines)
    openai_batches.attach_outputs(
        session, job, joined["output.jsonl"], joined["errors.jsonl"], usage, unrun
    )
    return usage


def _unrun_ranges(
    ctx: WorkerContext, job: Job, shards: list[Shard]
) -> Iterator[tuple[ObjectInfo, Format, Range]]:
    """(object, format, range) of every request that may not have run: the ranges of the
    shards that did not succeed, or, for a batch cancelled before it was planned, its whole
    input file."""
    if not shards:
        info = ctx.store.head(S3Uri.parse(job.spec["input"]))
        if info is None:
            return  # the input is gone: nothing to name
        fmt = Format("jsonl", False)
        ranges, _ = plan_ranges(ctx.store, info, fmt, 1 << 62)
        for rng in ranges:
            yield info, fmt, rng
        return
    for shard in shards:
        if shard.status == SHARD_SUCCEEDED:
            continue
        uri = S3Uri.parse(shard.source_uri)
        if shard.source_etag and shard.source_size is not None:  # as planned, with no HEAD
            found: ObjectInfo | None = ObjectInfo(uri, shard.source_size, shard.source_etag)
        else:
            found = ctx.store.head(uri)
        if found is None:
            continue  # the input is gone: nothing to name
        rng = Range(
            shard.start_record,
            shard.record_count,
            shard.first_line,
            shard.byte_start,
            shard.byte_end,
        )
        yield found, Format(shard.input_format, shard.compressed), rng


def _unrun_lines(
    ctx: WorkerContext, job: Job, shards: list[Shard], seen: set[str], error: dict[str, str]
) -> Iterator[bytes]:
    """An error-file line (``error``: batch_expired or batch_cancelled) for each request of
    the unfinished shards that has no line yet: read again from their input ranges, in input
    order."""
    for info, fmt, rng in _unrun_ranges(ctx, job, shards):
        try:
            for rec in iter_range(ctx.store, info, fmt, rng):
                custom_id = (rec.data or {}).get("custom_id")
                if not isinstance(custom_id, str) or custom_id in seen:
                    continue
                seen.add(custom_id)
                line = {
                    "id": f"batch_req_{line_id(job.id, custom_id, 'line')}",
                    "custom_id": custom_id,
                    "response": None,
                    "error": error,
                }
                yield json.dumps(line).encode() + b"\n"
        except (NotFound, ObjectChanged):
            continue  # the input is gone, or another file now: nothing more to name from it
