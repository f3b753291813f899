"""Planning ranges of an object (or of many objects, read by a bounded pool of concurrent
GETs), and streaming the records of one range."""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from barge.errors import NotFound, ObjectChanged
from barge.records.base import (
    Format,
    Limits,
    Range,
    Record,
    check_plain_size,
    gzip_errors,
    record_too_large,
    resolve_limits,
)
from barge.records.csvrows import iter_csv
from barge.records.lines import Lines, open_text_source, parse_json_line
from barge.records.parquet import iter_parquet, parquet_file
from barge.storage import HeldObjects, ObjectInfo, ObjectStore, S3Uri

T = TypeVar("T")
R = TypeVar("R")

# --- planning and streaming ---------------------------------------------------------------------


def plan_ranges(
    store: ObjectStore,
    info: ObjectInfo,
    fmt: Format,
    shard_records: int,
    *,
    limits: Limits | None = None,
) -> tuple[list[Range], int]:
    """Split one object into ranges of at most ``shard_records`` records; also count them.

    Plain JSONL is split on line boundaries into byte ranges, so each shard reads only its bytes.
    Gzip and CSV (quoted newlines) are split by record index; Parquet by row. A line over the
    record limit counts as a record (it is read as an error record), so counts, ranges and line
    numbers agree with :func:`iter_range`.
    """
    limits = resolve_limits(limits)
    with gzip_errors(info, fmt):
        if fmt.name == "parquet":
            total = parquet_file(store, info, limits).metadata.num_rows
            ranges = [
                Range(start, min(shard_records, total - start), start + 1)
                for start in range(0, total, shard_records)
            ]
            return ranges, total
        check_plain_size(info, fmt, limits)
        if fmt.name == "csv":
            total = 0
            ranges = []
            with open_text_source(store, info, fmt) as raw:
                for rec in iter_csv(Lines(raw, info.uri, limits, fmt.gzip), info.uri, limits):
                    if total % shard_records == 0:
                        ranges.append(Range(total, 0, rec.line))
                    ranges[-1].record_count += 1
                    total += 1
            return ranges, total
        # JSONL
        total = 0
        ranges = []
        offset = 0
        with open_text_source(store, info, fmt) as raw:
            lines = Lines(raw, info.uri, limits, fmt.gzip)
            for line_no, (line, size) in enumerate(lines, start=1):
                start = offset
                offset += size
                if line is not None and not line.strip():
                    continue
                if total % shard_records == 0:
                    if ranges and not fmt.gzip:
                        ranges[-1].byte_end = start
                    ranges.append(Range(total, 0, line_no, None if fmt.gzip else start, None))
                ranges[-1].record_count += 1
                total += 1
        if ranges and not fmt.gzip:
            ranges[-1].byte_end = offset
        return ranges, total


def planned_object(
    store: ObjectStore, uri: S3Uri, etag: str, size: int | None, fmt: Format, rng: Range
) -> ObjectInfo:
    """What reading a planned range needs to know of its object: its ETag and size as planning
    found them (every read then conditional on that ETag), with no HEAD.

    A range planned before sizes were kept (``size`` None) still knows its bytes exactly when
    it is plain JSONL (planning split the object on line boundaries and checked its size: its
    byte range is all it reads); other formats need the object's real size (a Parquet footer,
    the size check of a CSV object read from its start): one HEAD, whose ETag must still be
    ``etag`` (``ObjectChanged``); ``NotFound`` when the object is gone."""
    if etag and size is not None:
        return ObjectInfo(uri, size, etag)
    if fmt == Format("jsonl", False) and rng.byte_start is not None and rng.byte_end:
        return ObjectInfo(uri, rng.byte_end, etag)
    info = store.head(uri)
    if info is None:
        raise NotFound(f"no object at {uri}")
    if etag and info.etag != etag:
        raise ObjectChanged(uri, etag, info.etag)
    return info


def iter_range(
    store: ObjectStore,
    info: ObjectInfo,
    fmt: Format,
    rng: Range,
    *,
    limits: Limits | None = None,
) -> Iterator[Record]:
    """Stream the records of one range, in order, with their line numbers. Every GET is
    conditional on ``info.etag`` (when it is not empty): an object that is another one now
    raises ``ObjectChanged`` rather than give records that were never planned."""
    limits = resolve_limits(limits)
    with gzip_errors(info, fmt):
        if fmt.name == "parquet":
            yield from iter_parquet(store, info, rng, limits)
            return
        check_plain_size(info, fmt, limits)
        if fmt.name == "csv":
            with open_text_source(store, info, fmt) as raw:
                records = iter_csv(Lines(raw, info.uri, limits, fmt.gzip), info.uri, limits)
                for i, rec in enumerate(records):
                    if i < rng.start_record:
                        continue
                    if i >= rng.start_record + rng.record_count:
                        break
                    yield rec
            return
        if rng.byte_start is not None:
            raw = store.open(info.uri, rng.byte_start, rng.byte_end, if_match=info.etag)
            skip = 0
        else:
            raw = open_text_source(store, info, fmt)
            skip = rng.start_record
        with raw:
            seen = 0
            line_no = rng.first_line if rng.byte_start is not None else 1
            for line, size in Lines(raw, info.uri, limits, fmt.gzip):
                this_line = line_no
                line_no += 1
                if line is not None and not line.strip():
                    continue
                if seen < skip:
                    seen += 1
                    continue
                if line is None:
                    yield Record(this_line, None, record_too_large(limits, size))
                else:
                    yield parse_json_line(line, this_line)
                seen += 1
                if seen >= skip + rng.record_count:
                    break


def plan_objects_ranges(
    store: ObjectStore,
    objects: Sequence[tuple[ObjectInfo, Format]],
    shard_records: int,
    *,
    threads: int = 1,
    limits: Limits | None = None,
) -> Iterator[tuple[list[Range], int]]:
    """:func:`plan_ranges` of each object, in the objects' order. Counting the records of an
    object (other than Parquet) reads it whole, so a prefix of many small objects is read by a
    bounded pool of ``threads`` concurrent GETs (each with the store's retries), at most
    ``2 × threads`` objects ahead of the caller (backpressure). An object that cannot be read
    raises when its turn comes, as it would read one at a time."""
    for ranges, count, _ in plan_objects_read(
        store, objects, shard_records, threads=threads, limits=limits
    ):
        yield ranges, count


def plan_objects_read(
    store: ObjectStore,
    objects: Sequence[tuple[ObjectInfo, Format]],
    shard_records: int,
    *,
    threads: int = 1,
    limits: Limits | None = None,
    keep_bytes: int = 0,
) -> Iterator[tuple[list[Range], int, bytes | None]]:
    """:func:`plan_objects_ranges`, each object with the bytes planning read of it: an object
    of at most ``keep_bytes`` (other than Parquet, whose footer alone is read) is read with one
    GET, conditional on its listed ETag, and counted from those bytes, which come back with
    its ranges (so a packed shard can read planning's copy rather than GET it again); None for
    any other object."""
    limits = resolve_limits(limits)

    def plan(item: tuple[ObjectInfo, Format]) -> tuple[list[Range], int, bytes | None]:
        info, fmt = item
        if fmt.name == "parquet" or info.size > keep_bytes:
            return (*plan_ranges(store, info, fmt, shard_records, limits=limits), None)
        with store.open(info.uri, if_match=info.etag) as f:
            body = f.read()
        held = HeldObjects({str(info.uri): (body, info.etag)})
        return (*plan_ranges(held, info, fmt, shard_records, limits=limits), body)

    if threads <= 1 or len(objects) <= 1:
        yield from map(plan, objects)
        return
    with ThreadPoolExecutor(min(threads, len(objects)), thread_name_prefix="barge-plan") as pool:
        yield from in_order(pool, plan, objects, 2 * threads)


def in_order(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int
) -> Generator[R, None, None]:
    """``fn`` over ``items`` on ``pool``, in order, with at most ``ahead`` results pending: the
    pool works on the next items while the consumer takes this one. Closing it (or an item's
    error) cancels what has not started."""
    pending: collections.deque[Future[R]] = collections.deque()
    source = iter(items)
    try:
        while True:
            while len(pending) < ahead:
                try:
                    item = next(source)
                except StopIteration:
                    break
                pending.append(pool.submit(fn, item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
