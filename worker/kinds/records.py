"""The steps of the kinds over records (text, text2text, ONNX, images, OpenAI batches):
planning splits the job's input objects into shards of ``shard_size`` records
(``BARGE_SHARD_RECORDS``), finalizing fails a job whose failed records are over its
``max_failed_ratio`` and writes the records manifest (counts, parts, errors files, tokens).

No torch, nothing of the runners. Imports: ``barge``, ``db``, ``worker.context``,
``worker.kinds.steps``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import uuid
from typing import Any

from barge.errors import ObjectChanged, PermanentJobError
from barge.modeldirs import check_model_files, list_model_files
from barge.records import Format, Range, format_of, packs, plan_objects_read, resolve_inputs
from barge.specs import BUILTIN_MODELS, InferenceSpec
from barge.storage import ObjectInfo
from db import state
from db.models import Job, Shard
from worker.context import WorkerContext
from worker.kinds.steps import Finalizing, Finished, Plan, timings


def plan(
    ctx: WorkerContext, spec: InferenceSpec, job_id: uuid.UUID, model_ref: str, output: str
) -> Plan:
    """Check the model directory, then split the input objects into shards (small objects
    packed, but an OpenAI batch's requests: its input is one file)."""
    check_model(ctx, model_ref or spec.model)
    objects = resolve_inputs(ctx.store, spec.input)
    pack_into = None if spec.openai_endpoint else (output or spec.output)
    return plan_objects(
        ctx, spec, job_id, objects, spec.input_format, len(objects), pack_into=pack_into
    )


def check_model(ctx: WorkerContext, model_ref: str) -> None:
    """Refuse a model directory that cannot run (a built-in model has none)."""
    if model_ref not in BUILTIN_MODELS:
        check_model_files(model_ref, list_model_files(ctx.settings, ctx.store, model_ref))


def plan_objects(
    ctx: WorkerContext,
    spec: InferenceSpec,
    job_id: uuid.UUID,
    objects: list[ObjectInfo],
    declared: str,
    n_objects: int,
    *,
    pack_into: str | None = None,
) -> Plan:
    """The shards of ``objects`` (read as ``declared``, or as each one's suffix says), in
    order; ``n_objects`` is what the planning message counts as the job's objects. With
    ``pack_into`` (the job's output) consecutive small objects are packed
    (``barge.records.packs``), their listing written there."""
    if not objects:
        raise PermanentJobError(f"no input objects at {spec.input}")
    shard_records = spec.shard_size or ctx.settings.shard_records
    formats = [format_of(info.uri, declared) for info in objects]
    max_objects = ctx.settings.pack_max_objects if pack_into else 1
    budget = _CopyBudget(ctx.settings.pack_copy_bytes if max_objects > 1 else 0)
    planned = plan_objects_read(
        ctx.store,
        list(zip(objects, formats, strict=True)),
        shard_records,
        threads=ctx.settings.input_fetch_threads,
        keep_bytes=min(budget.limit, packs.COPY_OBJECT_BYTES),
    )
    counted = (
        ((info, fmt, ranges, budget.keep(body)), count)
        for info, fmt, (ranges, count, body) in zip(objects, formats, planned, strict=True)
    )
    planner = _Shards(job_id)
    listing = packs.ListingWriter(pack_into) if pack_into else None
    try:
        for members in packs.group(counted, shard_records, max_objects):
            bodies = [body for (_, _, _, body), _ in members]
            budget.release(bodies)
            if len(members) == 1:
                (info, fmt, ranges, _), _ = members[0]
                planner.add_object(info, fmt, ranges)
                continue
            assert listing is not None
            entries = [packs.entry_of(i, f, r[0]) for (i, f, r, _), _ in members]
            entries = listing.copy(ctx.store, entries, bodies, budget.limit)
            planner.add_pack(listing, entries)
    except BaseException as exc:
        if listing is not None:
            listing.discard(ctx.store)
        if isinstance(exc, ObjectChanged):  # between its listing and its read
            raise PermanentJobError(
                f"input object {exc.uri} changed while the job was being planned; resubmit "
                "the job once its input is written"
            ) from None
        raise
    if listing is not None:  # PUT before any shard reading it is committed
        planner.listed(listing.close(ctx.store))
    return planner.plan(n_objects)


class _CopyBudget:
    """The bytes of small objects planning keeps for the packs' copies (``limit``:
    ``BARGE_PACK_COPY_BYTES``, 0 keeps none): a body is kept while those read and not yet
    packed stay within the limit, so planning holds at most ``limit`` bytes of them at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def keep(self, body: bytes | None) -> bytes | None:
        if body is None or self.held + len(body) > self.limit:
            return None
        self.held += len(body)
        return body

    def release(self, bodies: list[bytes | None]) -> None:
        self.held -= sum(len(b) for b in bodies if b is not None)


class _Shards:
    """The shards of a plan as they are made, in order, with the job-wide record offset."""

    def __init__(self, job_id: uuid.UUID):
        self.job_id = job_id
        self.shards: list[Shard] = []
        self.offset = 0
        self.packed = 0  # objects in packs
        self.packs = 0

    def plan(self, n_objects: int) -> Plan:
        """The plan of these shards, its message and event data counting ``n_objects``."""
        shards, offset = self.shards, self.offset
        message = f"planned {len(shards)} shards over {n_objects} objects, {offset} records"
        if self.packed:
            message += f" ({self.packed} objects packed into {self.packs} shards)"
        data = {"shards": len(shards), "objects": n_objects, "records": offset}
        if self.packed:
            data.update(packed_objects=self.packed, packs=self.packs)
        return Plan(shards, offset, message, data)

    def add_object(self, info: ObjectInfo, fmt: Format, ranges: list[Range]) -> None:
        """An object's own shards, one per range."""
        for rng in ranges:
            shard = self._add(str(info.uri), info.etag, fmt, rng)
            shard.source_size = info.size
        self.offset += sum(rng.record_count for rng in ranges)

    def add_pack(self, listing: packs.ListingWriter, entries: list[packs.PackEntry]) -> None:
        """One shard reading ``entries``: their byte range of the listing."""
        pack = listing.add(entries)
        rng = Range(
            pack.first_entry, pack.records, pack.first_entry + 1, pack.byte_start, pack.byte_end
        )
        shard = self._add(str(listing.uri), "", Format(packs.PACK_FORMAT, False), rng, 0)
        shard.pack_objects, shard.pack_first, shard.pack_last = pack.objects, pack.first, pack.last
        self.offset += pack.records
        self.packed += pack.objects
        self.packs += 1

    def listed(self, written: ObjectInfo | None) -> None:
        """The pack listing as its PUT wrote it: each packed shard reads it on condition of
        its ETag (the listing lies under the job's output, where the tenant can write)."""
        if written is None:
            return
        for shard in self.shards:
            if shard.input_format == packs.PACK_FORMAT:
                shard.source_etag, shard.source_size = written.etag, written.size

    def _add(self, uri: str, etag: str, fmt: Format, rng: Range, start: int | None = None) -> Shard:
        shard = Shard(
            id=uuid.uuid4(),
            job_id=self.job_id,
            index=len(self.shards),
            source_uri=uri,
            source_etag=etag,
            input_format=fmt.name,
            compressed=fmt.gzip,
            start_record=rng.start_record,
            record_count=rng.record_count,
            record_offset=self.offset + (rng.start_record if start is None else start),
            first_line=rng.first_line,
            byte_start=rng.byte_start,
            byte_end=rng.byte_end,
        )
        self.shards.append(shard)
        return shard


def verdict(spec: InferenceSpec, shards: list[Shard]) -> str | None:
    """Why a job whose shards all settled without failing fails: more failed records than its
    ``max_failed_ratio``; None when it succeeded."""
    ok = sum(s.records_succeeded for s in shards)
    bad = sum(s.records_failed for s in shards)
    limit = spec.max_failed_ratio
    if ok + bad and bad / (ok + bad) > limit:
        return (
            f"{bad} of {ok + bad} records failed ({bad / (ok + bad):.1%}), more than "
            f"max_failed_ratio {limit:.1%}; see the errors/ files"
        )
    return None


def finalize(done: Finalizing) -> Finished:
    """The records manifest; the summary counts the records."""
    written = manifest(done.job, done.shards, done.status, done.error)
    counts = written["records"]
    return Finished(written, f"{counts['succeeded']} records succeeded, {counts['failed']} failed")


def manifest(job: Job, shards: list[Shard], status: str, error: str | None) -> dict[str, Any]:
    """The manifest of a job over records: its counts, its parts and errors files, its token
    usage (when it counted tokens)."""
    ok = sum(s.records_succeeded for s in shards)
    bad = sum(s.records_failed for s in shards)
    spec = job.spec
    return {
        "job_id": str(job.id),
        "status": status,
        "error": error,
        "task": spec.get("task"),
        "model": spec.get("model"),
        "model_uri": job.model_uri,
        "input": spec.get("input"),
        "output": job.output_uri,
        "output_format": spec.get("output_format", "jsonl"),
        "records": {
            "total": job.records_total or 0,
            "succeeded": ok,
            "failed": bad,
            "not_processed": max(0, (job.records_total or 0) - ok - bad),
        },
        "parts": [
            {
                "key": s.output_key,
                "shard": s.index,
                "source": s.source_uri,
                **_pack_of(s),
                "records": s.records_succeeded,
                "complete": s.status == state.SHARD_SUCCEEDED,
            }
            for s in shards
            if s.output_key
        ],
        "errors": [
            {"key": s.errors_key, "shard": s.index, "records": s.records_failed}
            for s in shards
            if s.errors_key
        ],
        "timings": timings(job),
        **_usage(shards),
    }


def _pack_of(shard: Shard) -> dict[str, Any]:
    """What a packed shard's part says of its objects (its ``source`` is the pack listing,
    one line per object): how many, the first and the last; {} for an object's own shard."""
    if shard.pack_objects is None:
        return {}
    return {
        "packed": {
            "objects": shard.pack_objects,
            "first": shard.pack_first,
            "last": shard.pack_last,
        }
    }


def _usage(shards: list[Shard]) -> dict[str, Any]:
    """``{"usage": token totals}`` over the shards that counted tokens (generate), else {}."""
    counted = [s.usage for s in shards if s.usage]
    if not counted:
        return {}
    totals: dict[str, int] = {}
    for usage in counted:
        for k, n in usage.items():
            totals[k] = totals.get(k, 0) + int(n)
    return {"usage": totals}
