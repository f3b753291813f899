"""Retrying only what failed: ``POST /v1/jobs/{id}/retry`` makes a child job over exactly the
records its job did not finish (each line of its errors files, and the records of shards that
never succeeded and are not in their parts), with the job's spec or overrides. The records are
read again from the job's input and written as one JSONL object, ``retry-N.input.jsonl`` under
the job's output prefix; the child writes under ``retry-N/``. A retry of a job already retried
runs what its newest retry left failed; a retry of a retry retries its parent.

Each record keeps its id: the job's ``id_field``, or, for a job whose ids are positions, the
position written into the record as ``RETRY_ID`` (the child's ``id_field``). So across the
parent and its retries every record is counted once: the parent's view (``effective``) sums
what succeeded in each and counts as failed only what the newest retry left failed. The
parent's ``_manifest.json`` names its retries (``write_parent_manifest``, at the retry and
again when the retry finishes).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from barge.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    ObjectChanged,
    PermanentJobError,
    etags_then_now,
)
from barge.records import Format, Range, Record, iter_range, packs, planned_object
from barge.specs import IMAGE_TASKS, parse_spec
from barge.status import FINAL, SHARD_SUCCEEDED
from barge.storage import ObjectStore, S3Uri
from db import repositories as repo
from db.models import Job, Shard
from services import audit, submission
from services import scopes as scope_rules
from services.context import ServiceContext

RETRY_ID = "barge_retry_id"  # a record's position in the first job, when it had no id_field
# What a retry may change of its job's spec.
OVERRIDES = ("model", "batch_size", "shard_size", "max_failed_ratio", "params", "output_format")


@dataclass(frozen=True)
class RetryJob:
    """A retry to make: the job, and the fields of its spec to change."""

    job: Job
    overrides: dict[str, Any] = field(default_factory=dict)


def root_of(session: Session, job: Job) -> Job:
    """The job a retry retries: the job itself, or the job a retry was made for."""
    if job.parent_id is None:
        return job
    parent = repo.get_job(session, job.parent_id, job.tenant_id)
    return parent if parent is not None else job


def _check_retriable(root: Job, children: list[Job]) -> Job:
    """The job whose unfinished records the retry runs: the newest retry, else the job."""
    spec = root.spec
    if root.type != "inference":
        raise Conflict(f"job {root.id} is a fine-tune; only an inference job's records are retried")
    if spec.get("openai_endpoint"):
        raise Conflict(
            f"job {root.id} runs an OpenAI batch; retry the batch with "
            "POST /openai/v1/batches/{batch_id}/retry"
        )
    if spec.get("task") in IMAGE_TASKS and not spec.get("image_field"):
        raise Conflict(
            f"job {root.id} reads image objects, not records; submit the images to run again "
            "as a job of their own"
        )
    source = children[-1] if children else root
    if source.status not in FINAL or source.manifest is None:
        raise Conflict(f"job {source.id} is {source.status}; a retry is made once it has finished")
    return source


def offers_retry(session: Session, job: Job) -> bool:
    """Whether a retry of ``job`` can be made now: it (or the job it retries) reads records,
    its newest run has finished, and that run left records failed or unprocessed (what the
    console's "Retry failed records" button offers; the retry itself checks again)."""
    root = root_of(session, job)
    children = repo.retries_of(session, [root.id]).get(root.id, [])
    try:
        source = _check_retriable(root, children)
    except Conflict:
        return False
    done = repo.progress_for(session, [source.id])[source.id]
    return (source.records_total or 0) > done.records_succeeded


def retry(ctx: ServiceContext, command: RetryJob) -> Job:
    """Make the child job over the records its job left unfinished (409 when there are none,
    or while the job or its newest retry still runs); audited as ``job.retry`` on the job
    and as the child's ``job.submit``."""
    session = ctx.session
    root = root_of(session, command.job)
    children = repo.retries_of(session, [root.id]).get(root.id, [])
    source = _check_retriable(root, children)
    bad = sorted(set(command.overrides) - set(OVERRIDES))
    if bad:
        raise InvalidSpec(f"a retry may change only {', '.join(OVERRIDES)}", field=bad[0])
    number = len(children) + 1
    out = S3Uri.parse(root.output_uri).as_prefix()
    target = out.join(f"retry-{number}.input.jsonl")
    threads = ctx.settings.input_fetch_threads
    held = scope_rules.scopes_for(session, ctx.settings, root.tenant_id)
    count = write_unfinished(session, ctx.store, root, source, target, threads, held.may_read)
    if not count:
        raise Conflict(f"job {source.id} has no failed or unprocessed records to retry")
    spec = _child_spec(root, command.overrides, str(target), str(out.join(f"retry-{number}/")))
    data = {"retry_of": str(root.id), "retry": number}
    child, _ = submission.submit(
        ctx, submission.SubmitJob(spec, audit_data=data, parent_id=root.id, retry_index=number)
    )
    audit.record(ctx, "job.retry", f"job:{root.id}", child=str(child.id), records=count)
    write_parent_manifest(session, ctx.store, root)
    return child


def _child_spec(root: Job, overrides: dict[str, Any], input_uri: str, output: str) -> Any:
    data = {**root.spec, **overrides}
    data.update(
        input=input_uri,
        input_format="jsonl",
        output=output,
        id_field=root.spec.get("id_field") or RETRY_ID,
        metadata={**(root.meta or {}), "retry_of": str(root.id)},
    )
    try:
        return parse_spec(data)
    except ValueError as exc:  # a pydantic ValidationError: an override out of bounds
        raise InvalidSpec(f"the retry's spec is refused: {exc}"[:600]) from None
    except PermanentJobError as exc:
        raise InvalidSpec(f"the retry's spec is refused: {exc.message}"[:600]) from None


def write_unfinished(
    session: Session,
    store: ObjectStore,
    root: Job,
    source: Job,
    target: S3Uri,
    threads: int = 1,
    may_read: Callable[[str], bool] | None = None,
) -> int:
    """Write the records ``source`` left unfinished as JSONL at ``target``; how many (a packed
    shard's objects read ``threads`` at a time, each checked against ``may_read``, the
    tenant's read scopes)."""
    positions = root.spec.get("id_field") is None
    count = 0
    with tempfile.TemporaryDirectory(prefix="barge-retry-") as tmp:
        path = Path(tmp) / "records.jsonl"
        with path.open("wb") as f:
            for shard in repo.shards_of(session, source.id):
                for data in unfinished_records(store, source, shard, positions, threads, may_read):
                    f.write(json.dumps(data, default=str).encode() + b"\n")
                    count += 1
        if count:
            store.put_file(target, path)
    return count


def unfinished_records(
    store: ObjectStore,
    job: Job,
    shard: Shard,
    positions: bool,
    threads: int = 1,
    may_read: Callable[[str], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """The shard's records that did not succeed: its errors file's lines when the shard
    succeeded; else every record of its range not in its part. ``positions``: the first
    job's ids are positions, written into each record as ``RETRY_ID``."""
    if shard.status == SHARD_SUCCEEDED:
        if not shard.errors_key:
            return
        # (object, line): a packed shard's records come from several objects
        failed = {
            (row.get("source"), row.get("line")) for row in _rows(store, job, shard.errors_key)
        }
        wanted = lambda rec, _pos: (rec.source or shard.source_uri, rec.line) in failed  # noqa: E731
    else:
        done = {row.get("id") for row in _rows(store, job, shard.output_key)}
        id_field = job.spec.get("id_field")
        wanted = lambda rec, pos: _id_of(rec.data, id_field, pos) not in done  # noqa: E731
    for i, rec in enumerate(_records_of(store, shard, threads, may_read)):
        position = shard.record_offset + i
        if not wanted(rec, position):
            continue
        data: dict[str, Any] = (
            dict(rec.data) if isinstance(rec.data, dict) else unreadable(job, rec)
        )
        if positions:
            data.setdefault(RETRY_ID, position)
        yield data


def _records_of(
    store: ObjectStore, shard: Shard, threads: int, may_read: Callable[[str], bool] | None
) -> Iterator[Record]:
    """The shard's records read again: its range of its object, or a packed shard's objects
    (each record naming its object), every read conditional on the ETag planning recorded
    (a pack's listing too: an edited one is ``ListingChanged``); 409 when one is gone or
    changed since (its records are not the ones the job read)."""
    rng = Range(
        shard.start_record, shard.record_count, shard.first_line, shard.byte_start, shard.byte_end
    )
    try:
        if shard.input_format == packs.PACK_FORMAT:
            listing = S3Uri.parse(shard.source_uri)
            yield from packs.iter_pack(
                store, listing, rng, threads=threads, may_read=may_read, etag=shard.source_etag
            )
            return
        fmt = Format(shard.input_format, shard.compressed)
        uri = S3Uri.parse(shard.source_uri)
        info = planned_object(store, uri, shard.source_etag, shard.source_size, fmt, rng)
        yield from iter_range(store, info, fmt, rng)
    except ObjectChanged as exc:
        raise Conflict(
            f"the job's input object {exc.uri} changed after the job was planned "
            f"({etags_then_now(exc.expected, exc.current)}): its failed records cannot be read "
            "again as the job read them; submit a new job to run its new contents",
            uri=exc.uri,
        ) from None
    except NotFound:
        raise Conflict(
            f"the job's input {shard.source_uri} is gone; its records cannot be read"
        ) from None
    except PermanentJobError as exc:
        raise Conflict(f"{exc.message}; the job's records cannot be read again") from None


def unreadable(job: Job, rec: Record) -> dict[str, Any]:
    """What a record Barge could not read is retried as: why, and the fields the job reads
    (and its id_field) as null, so the retry's checks pass and the record fails again, alone."""
    spec = job.spec
    read = spec.get("messages_field") or spec.get("image_field") or spec.get("text_field")
    out: dict[str, Any] = {"barge_unreadable": rec.error, str(read or "text"): None}
    if spec.get("id_field"):
        out[spec["id_field"]] = None  # unknown: its error row has a null id, as before
    return out


def _id_of(data: dict[str, Any] | None, id_field: str | None, position: int) -> Any:
    if id_field is None:
        return position
    return (data or {}).get(id_field)


def _rows(store: ObjectStore, job: Job, key: str | None) -> Iterator[dict[str, Any]]:
    """The rows of one of the job's JSONL files (a part or an errors file); nothing for a
    Parquet part (its ids are read with pyarrow)."""
    if not key:
        return
    uri = S3Uri(S3Uri.parse(job.output_uri).bucket, key)
    if key.endswith(".parquet"):
        yield from _parquet_ids(store, uri)
        return
    if store.head(uri) is None:
        return
    with store.open(uri) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _parquet_ids(store: ObjectStore, uri: S3Uri) -> Iterator[dict[str, Any]]:
    import io

    import pyarrow.parquet as pq

    if store.head(uri) is None:
        return
    with store.open(uri) as f:
        table = pq.read_table(io.BytesIO(f.read()), columns=["id"])
    for value in table.column("id").to_pylist():
        yield {"id": value}


def effective(root: Job, chain: list[Job], progress: dict[Any, repo.Progress]) -> dict[str, Any]:
    """A retried job's records across it and its finished retries, each counted once: what
    succeeded in any, what the newest finished one left failed, and the rest not processed."""
    finished = [root]
    for child in chain:
        if child.status not in FINAL or child.manifest is None:
            break
        finished.append(child)
    ok = sum(progress[j.id].records_succeeded for j in finished if j.id in progress)
    last = progress.get(finished[-1].id)
    failed = last.records_failed if last is not None else 0
    total = root.records_total or 0
    return {
        "total": total,
        "succeeded": ok,
        "failed": failed,
        "not_processed": max(0, total - ok - failed),
    }


def retries_view(session: Session, job: Job, children: list[Job]) -> dict[str, Any] | None:
    """What a job's view says of retries: a retried job's children and effective counts; a
    retry's parent and number; None for a job that is neither."""
    if job.parent_id is not None:
        return {"parent": str(job.parent_id), "retry": job.retry_index}
    if not children:
        return None
    progress = repo.progress_for(session, [job.id, *(c.id for c in children)])
    return {
        "children": [
            {"id": str(c.id), "retry": c.retry_index, "status": c.status, "output": c.output_uri}
            for c in children
        ],
        "records": effective(job, children, progress),
    }


def write_parent_manifest(session: Session, store: ObjectStore, root: Job) -> None:
    """The retried job's ``_manifest.json`` again, naming its retries and the effective
    counts (``retries``); nothing before the job's own manifest exists."""
    if root.manifest is None:
        return
    children = repo.retries_of(session, [root.id]).get(root.id, [])
    manifest = {**root.manifest, "retries": retries_view(session, root, children)}
    root.manifest = manifest
    out = S3Uri.parse(root.output_uri).as_prefix()
    store.put_bytes(out.join("_manifest.json"), json.dumps(manifest, indent=2).encode() + b"\n")
