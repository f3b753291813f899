"""A dry run (``POST /v1/jobs?dry_run=true``): every check a submission passes, then, without
creating a job, what the job would be: its records (counted, or estimated from a sample of a
large plain JSONL object), its tokens (a sample of records through the model's tokenizer), its
shards, and how long it would take and how many device-hours it would use, from the throughput
this model reached for this task on each kind of device in past shards (``throughput``, fed as
shards succeed). The estimate is ``None`` when the model never ran the task.

Which device: the kind of the GPU-queue workers alive now, where the model has run on it
(else the kind it ran on most); the duration assumes its shards spread over those workers.

Cold start: the throughput's seconds are processing only (a shard's imports, model fetch and
load are summed apart, ``Throughput.load_seconds``). When a worker alive holds the model warm
for the task (its presence row's models), the estimate assumes a warm fleet
(``model_warm: true``, ``cold_start_seconds: 0``); else it adds the mean cold start measured
(``cold_start_seconds``; null when no shard measured one, then nothing is added). A base held
under LoRA adapters (``kind: base``) is warm for those adapters' jobs, not for a job on the base
model itself, which loads it apart (``serves``).
"""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from barge.errors import PermanentJobError
from barge.queue import GPU_QUEUE
from barge.records import (
    Format,
    Range,
    format_of,
    images,
    iter_range,
    packs,
    plan_ranges,
    resolve_inputs,
)
from barge.records.planning import in_order
from barge.specs import BUILTIN_MODELS, FinetuneSpec, InferenceSpec, JobSpec
from barge.storage import ObjectInfo, ObjectStore, S3Uri
from db import repositories as repo
from db.base import utcnow
from db.models import Throughput
from services import submission
from services.context import ServiceContext

COUNT_BYTES = 256 << 20  # a plain JSONL object larger than this is sampled, not counted
SAMPLE_BYTES = 1 << 20  # what is read of it to estimate its records
TOKEN_SAMPLE = 200  # records read to estimate tokens
TOKENIZER_BYTES = 32 << 20  # a larger tokenizer.json is not read
WORKERS_SEEN_SECONDS = 120  # a worker seen this recently counts as alive
# How sure an estimate is, by the shards it was measured over.
CONFIDENCE = ((20, "high"), (3, "medium"), (1, "low"))


@dataclass
class Counted:
    """The records and shards of a job's input: ``exact`` unless sampled."""

    records: int = 0
    shards: int = 0
    exact: bool = True


def dry_run(ctx: ServiceContext, spec: JobSpec) -> dict[str, Any]:
    """What submitting ``spec`` would make, checked as a submission is; nothing is created."""
    model_uri, _, output = submission.check(ctx, submission.SubmitJob(spec), uuid.uuid4())
    answer: dict[str, Any] = {
        "dry_run": True,
        "type": spec.type,
        "model_uri": model_uri,
        "output": output,
    }
    if isinstance(spec, FinetuneSpec):
        counted = count(
            ctx.store, spec.train, spec.input_format, 1 << 62, ctx.settings.input_fetch_threads
        )
        answer.update(records=_records(counted), shards=1, tokens=None, estimate=None)
        return answer
    shard_records = spec.shard_size or ctx.settings.shard_records
    if spec.reads_image_objects:
        found = len(images.list_images(ctx.store, spec.input))
        counted = Counted(found, math.ceil(found / shard_records))
    else:
        counted = count(
            ctx.store,
            spec.input,
            spec.input_format,
            shard_records,
            ctx.settings.input_fetch_threads,
            1 if spec.openai_endpoint else ctx.settings.pack_max_objects,
        )
    answer.update(
        records=_records(counted),
        shards=counted.shards,
        tokens=sample_tokens(ctx, spec, model_uri, counted.records),
        estimate=estimate(ctx, model_uri, spec.task, counted),
    )
    return answer


def _records(counted: Counted) -> dict[str, Any]:
    return {"count": counted.records, "exact": counted.exact}


def count(
    store: ObjectStore,
    uri: str,
    declared: str,
    shard_records: int,
    threads: int = 1,
    pack_max_objects: int = 1,
) -> Counted:
    """The records and shards of the objects at ``uri``, as planning would split them (small
    objects packed, at most ``pack_max_objects`` a shard); a plain JSONL object over
    ``COUNT_BYTES`` is estimated from its first ``SAMPLE_BYTES``. The objects are read
    ``threads`` at a time (BARGE_INPUT_FETCH_THREADS), as the planner reads them."""
    out = Counted()
    objects = [(info, format_of(info.uri, declared)) for info in resolve_inputs(store, uri)]

    def one(item: tuple[ObjectInfo, Format]) -> tuple[int, bool]:
        info, fmt = item
        if fmt.name == "jsonl" and not fmt.gzip and info.size > COUNT_BYTES:
            return sampled_lines(store, info), False
        try:
            return plan_ranges(store, info, fmt, shard_records)[1], True
        except PermanentJobError:
            return 0, True  # planning will say so; a dry run counts what it can read

    counts: list[int] = []
    with ThreadPoolExecutor(max(1, min(threads, len(objects)))) as pool:
        for n, exact in in_order(pool, one, objects, 2 * threads):
            out.exact = out.exact and exact
            out.records += n
            counts.append(n)
    out.shards = packs.shards_of(counts, shard_records, pack_max_objects)
    return out


def sampled_lines(store: ObjectStore, info: ObjectInfo) -> int:
    """Records in a large plain JSONL object, from the lines of its first ``SAMPLE_BYTES``."""
    with store.open(info.uri, 0, SAMPLE_BYTES) as f:
        head = f.read(SAMPLE_BYTES)
    cut = head.rfind(b"\n") + 1 or len(head)
    lines = sum(1 for line in head[:cut].split(b"\n") if line.strip())
    return round(lines * info.size / max(cut, 1))


def _tokenizer(ctx: ServiceContext, model_uri: str) -> Any:
    """The model directory's tokenizer.json (``tokenizers``, no torch), or None."""
    if model_uri in BUILTIN_MODELS or "://" not in model_uri:
        return None
    uri = S3Uri.parse(model_uri).as_prefix().join("tokenizer.json")
    info = ctx.store.head(uri)
    if info is None or info.size > TOKENIZER_BYTES:
        return None
    from tokenizers import Tokenizer

    with ctx.store.open(uri) as f:
        return Tokenizer.from_str(f.read().decode("utf-8"))


def sample_tokens(
    ctx: ServiceContext, spec: InferenceSpec, model_uri: str, records: int
) -> dict[str, Any] | None:
    """The input tokens of the job, from the first ``TOKEN_SAMPLE`` records' text through
    the model's tokenizer; None without a tokenizer.json or text records."""
    if spec.reads_image_objects or spec.image_field or spec.messages_field:
        return None
    try:
        tokenizer = _tokenizer(ctx, model_uri)
    except Exception:  # a tokenizer this library cannot read: no figure, never a refusal
        return None
    if tokenizer is None:
        return None
    info = resolve_inputs(ctx.store, spec.input)[0]
    fmt = format_of(info.uri, spec.input_format)
    texts = []
    try:
        for rec in iter_range(ctx.store, info, fmt, Range(0, TOKEN_SAMPLE, 1)):
            text = (rec.data or {}).get(spec.text_field)
            if isinstance(text, str):
                texts.append(text)
    except PermanentJobError:
        return None  # unreadable: planning will say so
    if not texts:
        return None
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    mean = sum(lengths) / len(lengths)
    return {
        "input": round(mean * records),
        "per_record": round(mean, 1),
        "sampled_records": len(texts),
    }


def _pick(rows: list[Throughput], alive: dict[str, int]) -> Throughput:
    """The kind of device the job would run on: one alive now where the model ran (the
    fastest of them), else the one it ran most on."""
    live = [r for r in rows if r.device in alive]
    if live:
        return max(live, key=lambda r: r.records / r.seconds)
    return rows[0]


@dataclass
class Fleet:
    """The GPU-queue worker processes alive now, by the name of their device, and how many of
    them hold the job's model warm for its task."""

    alive: dict[str, int]
    warm: int = 0


def _fleet(ctx: ServiceContext, model_uri: str, task: str) -> Fleet:
    """The GPU-queue workers seen in the last ``WORKERS_SEEN_SECONDS`` and those holding
    ``model_uri`` warm for ``task`` (as their presence rows say: a worker notes a model it
    loaded as the unit that loaded it ends)."""
    since = utcnow() - timedelta(seconds=WORKERS_SEEN_SECONDS)
    fleet = Fleet({})
    for worker in repo.workers_seen_since(ctx.session, since):
        if GPU_QUEUE in (worker.queues or []):
            name = worker.device_name or worker.device or "unknown"
            fleet.alive[name] = fleet.alive.get(name, 0) + 1
            if any(serves(m, model_uri, task) for m in worker.models or []):
                fleet.warm += 1
    return fleet


def serves(held: dict[str, Any], model_uri: str, task: str) -> bool:
    """Whether a model a worker holds warm (an entry of its presence row) runs a job on
    ``model_uri`` for ``task`` with no load: a model or an adapter of that URI and task. A
    ``base`` (loaded under LoRA adapters, with their head and layers) serves its adapters
    only: a job on the base model itself loads it apart."""
    return (
        held.get("model") == model_uri
        and held.get("task") == task
        and held.get("kind", "model") != "base"
    )


def cold_start(row: Throughput, fleet: Fleet) -> float | None:
    """The seconds a worker spends loading the model before its first records: none when a
    worker alive holds it warm, else the mean cold start of the past shards that paid one
    (None when none did: not measured, left out of the duration)."""
    if fleet.warm:
        return 0.0
    return row.load_seconds / row.loads if row.loads else None


def estimate(
    ctx: ServiceContext, model_uri: str, task: str, counted: Counted
) -> dict[str, Any] | None:
    """Duration and device-hours from what ``model_uri`` reached for ``task``; None when it
    never ran it. Records take the processing throughput; a cold start is added when no
    worker alive holds the model warm (once to the duration: the workers load at once; once
    per worker to the device-hours)."""
    rows = [r for r in repo.throughput_of(ctx.session, model_uri, task) if r.seconds > 0]
    if not rows:
        return None
    fleet = _fleet(ctx, model_uri, task)
    row = _pick(rows, fleet.alive)
    rate = row.records / row.seconds  # records per device-second of processing
    device_seconds = counted.records / rate
    workers = max(1, min(counted.shards or 1, fleet.alive.get(row.device, 1)))
    # Shards run whole on one worker: the busiest worker runs ceil(shards / workers) of them.
    per_shard = device_seconds / max(counted.shards, 1)
    duration = per_shard * math.ceil(max(counted.shards, 1) / workers)
    cold = cold_start(row, fleet)
    confidence = next(name for least, name in CONFIDENCE if row.shards >= least)
    if row.device not in fleet.alive and confidence != "low":
        confidence = "low" if confidence == "medium" else "medium"
    return {
        "duration_seconds": round(duration + (cold or 0.0), 1),
        "device_hours": round((device_seconds + (cold or 0.0) * workers) / 3600, 4),
        "device": row.device,
        "workers": workers,
        "records_per_second": round(rate, 2),
        "model_warm": fleet.warm > 0,
        "cold_start_seconds": None if cold is None else round(cold, 1),
        "confidence": confidence,
        "measured": {
            "shards": row.shards,
            "records": row.records,
            "seconds": round(row.seconds, 1),
            "loads": row.loads,
            "load_seconds": round(row.load_seconds, 1),
        },
    }
