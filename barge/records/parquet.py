"""Parquet rows, read by row group through range reads.

A shard's rows are read in few, large GETs (``row_batches``): the object's last
``TAIL_BYTES`` at once (the footer; all of a small object), then the column chunks it reads of
consecutive row groups, up to about ``SPAN_BYTES`` at a time (less for the first few), each
run of them one GET (``HeldObject``). Planning and peeking read the footer in one GET too
(``footer_bytes``). Every GET of an object costs a round trip, and on some S3 servers (moto's)
it costs a pass over the whole object.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

from barge.errors import BargeError, PermanentJobError
from barge.records.base import Limits, Range, Record
from barge.storage import ObjectInfo, ObjectStore, SeekableObject

T = TypeVar("T")

SPAN_BYTES = 64 * 2**20  # column chunks of consecutive row groups read ahead together, at most
HOLE_BYTES = 2**20  # unread bytes between two wanted column chunks read through, not a new GET
TAIL_BYTES = 2**20  # an object's last bytes read at once: its footer, or all of a small object

# --- Parquet ------------------------------------------------------------------------------------


def _is_parquet_content_error(exc: Exception) -> bool:
    """pyarrow failed on the file's bytes (its own errors), not on reading them: pyarrow re-raises
    the reader's own exceptions (storage, network) as they were."""
    import pyarrow as pa

    return isinstance(exc, pa.ArrowException) or type(exc) is OSError


class HeldObject(io.RawIOBase):
    """A read-only seekable view of an object (``SeekableObject``) whose reads come from memory
    where byte ranges read ahead (``hold``) cover them, else from a range read; every GET is
    conditional on the object's ETag (``info.etag``, when known)."""

    def __init__(self, store: ObjectStore, info: ObjectInfo):
        self._raw = SeekableObject(store, info)
        self._store = store
        self._info = info
        self._held: list[tuple[int, bytes]] = []  # (offset in the object, its bytes)

    def hold(self, ranges: list[tuple[int, int]]) -> None:
        """Read each [start, end) of ``ranges`` now (one GET each, unless held already); only
        these stay held."""
        held = []
        for start, end in ranges:
            end = min(end, self._info.size)
            found = next((h for h in self._held if h[0] <= start and end <= h[0] + len(h[1])), None)
            if found is None and start < end:
                with self._store.open(self._info.uri, start, end, if_match=self._info.etag) as f:
                    found = (start, f.read())
            if found is not None and found not in held:
                held.append(found)
        self._held = held

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def size(self) -> int:
        return self._info.size

    def read(self, size: int = -1) -> bytes:
        pos = self._raw.tell()
        end = self._info.size if size < 0 else min(pos + size, self._info.size)
        for start, data in self._held:
            if start <= pos and end <= start + len(data):
                self._raw.seek(end)
                return data[pos - start : end - start]
        return self._raw.read(end - pos) if end > pos else b""

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        memoryview(b)[: len(data)] = data
        return len(data)


def footer_bytes(size: int) -> int:
    """How much of the end of an object of ``size`` bytes to read for its footer: 1/64 of it,
    at least 64 KiB (what pyarrow reads first) and at most ``TAIL_BYTES``. A footer grows with
    row groups times columns, so with the object: one GET reads it, not two."""
    return min(TAIL_BYTES, max(64 * 2**10, size // 64))


def parquet_file(store: ObjectStore, info: ObjectInfo, limits: Limits, source: Any = None) -> Any:
    """The object as a ``pyarrow.parquet.ParquetFile`` read through ``source`` (by default
    its footer in one GET: ``footer_bytes`` of its end, then range reads), its decoded size
    checked against the limit."""
    import pyarrow.parquet as pq

    if source is None:
        source = HeldObject(store, info)
        source.hold([(max(0, info.size - footer_bytes(info.size)), info.size)])
    try:
        pf = pq.ParquetFile(source)
    except BargeError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and not _is_parquet_content_error(exc):
            raise  # a read that failed (timeout, connection): retrying may fix it
        raise PermanentJobError(f"{info.uri} is not a readable Parquet file: {exc}") from exc
    meta = pf.metadata
    data_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if data_bytes > limits.object_bytes:
        raise PermanentJobError(
            f"{info.uri} holds {data_bytes} bytes of data once decoded, more than "
            f"{limits.object_bytes} (BARGE_MAX_OBJECT_BYTES); split it into smaller objects"
        )
    return pf


def _microseconds(batch: Any) -> Any:
    """Nanosecond timestamps (pandas writes them by default) as microseconds, which Python's
    datetime holds: the sub-microsecond digits are dropped rather than failing the read."""
    import pyarrow as pa

    changed = False
    columns = []
    for column in batch.columns:
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
            changed = True
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names) if changed else batch


def row_batches(
    store: ObjectStore,
    info: ObjectInfo,
    rng: Range,
    limits: Limits,
    convert: Callable[[Any], T],
    wanted: Collection[str] | None = None,
    batch_size: int = 4096,
) -> Iterator[tuple[int, T]]:
    """(index in the object of its first row, ``convert`` of an Arrow record batch) for the
    rows of ``rng``, in order. Only the row groups that hold them are read, and with
    ``wanted`` only those of its columns the file has (every column when it has none), in
    GETs of many row groups' column chunks at once (``HeldObject``); nanosecond timestamps
    come as microseconds. Bytes pyarrow cannot read as Parquet are a PermanentJobError naming
    the row near which it broke."""
    source = HeldObject(store, info)
    source.hold([(max(0, info.size - TAIL_BYTES), info.size)])
    pf = parquet_file(store, info, limits, source)
    meta = pf.metadata
    columns = None
    if wanted is not None:
        names = set(pf.schema_arrow.names)
        columns = sorted({c for c in wanted if c in names}) or None
    end = rng.start_record + rng.record_count
    first_rows: dict[int, int] = {}  # the row groups the range reads: each one's first row
    row = 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if row < end and row + n > rng.start_record:
            first_rows[rg] = row
        row += n
    row = min(first_rows.values(), default=0)
    try:
        for group, ranges in _spans(meta, list(first_rows), columns):
            if info.size > TAIL_BYTES:  # a small object is held whole already
                source.hold(ranges)
            for rg in group:
                row = first_rows[rg]
                for batch in pf.iter_batches(
                    row_groups=[rg], batch_size=batch_size, columns=columns
                ):
                    lo = max(rng.start_record - row, 0)
                    hi = min(end - row, batch.num_rows)
                    if lo < hi:
                        yield row + lo, convert(_microseconds(batch.slice(lo, hi - lo)))
                    row += batch.num_rows
                    if row >= end:
                        break
    except BargeError:
        raise
    except Exception as exc:
        if not _is_parquet_content_error(exc):
            raise
        raise PermanentJobError(
            f"{info.uri} is not a readable Parquet file (near row {row + 1}): {exc}"
        ) from exc


def _spans(
    meta: Any, row_groups: list[int], columns: Collection[str] | None
) -> Iterator[tuple[list[int], list[tuple[int, int]]]]:
    """``row_groups`` in runs of consecutive ones whose column chunks (of ``columns``, else
    all) come to about ``SPAN_BYTES`` at most (one row group at least; the first runs an
    eighth, a quarter, a half of it, so the first rows come soon), each with the byte ranges
    that hold them: chunks less than ``HOLE_BYTES`` apart in one range."""
    group: list[int] = []
    ranges: list[tuple[int, int]] = []
    size = spans = 0
    for rg in row_groups:
        chunks = []
        row_group = meta.row_group(rg)
        for i in range(row_group.num_columns):
            chunk = row_group.column(i)
            if columns is not None and chunk.path_in_schema.split(".")[0] not in columns:
                continue
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
                start = chunk.dictionary_page_offset
            chunks.append((start, start + chunk.total_compressed_size))
        bytes_ = sum(e - s for s, e in chunks)
        if group and size + bytes_ > SPAN_BYTES >> max(0, 3 - spans):
            yield group, ranges
            group, ranges, size, spans = [], [], 0, spans + 1
        group.append(rg)
        size += bytes_
        for start, stop in sorted(chunks):
            if ranges and start - ranges[-1][1] < HOLE_BYTES:
                ranges[-1] = (ranges[-1][0], max(ranges[-1][1], stop))
            else:
                ranges.append((start, stop))
    if group:
        yield group, ranges


def iter_parquet(
    store: ObjectStore, info: ObjectInfo, rng: Range, limits: Limits
) -> Iterator[Record]:
    for first, rows in row_batches(store, info, rng, limits, lambda batch: batch.to_pylist()):
        for i, rec in enumerate(rows):
            yield Record(first + i + 1, rec)
