"""Parquet rows, read by row group through range reads.

A shard's rows are read in as few GETs as its bytes allow (``row_batches``): the footer with
the object's last ``TAIL_BYTES`` in one GET (all of a small object), unless this process read
it already (``footer_of``: the same URI, ETag and size); then the column chunks it reads, as
one streaming GET per run of them (``ChunkStream``: chunks less than ``HOLE_BYTES`` apart are
one run; a shard reading every column of consecutive row groups is one GET), consumed a row
group at a time so memory stays about one row group's chunks, and resumed where it broke if
the stream fails (``barge.storage.ResumedRead``). Planning and peeking read the footer in one
GET too (``footer_bytes``). Every GET of an object costs a round trip, and on some S3 servers
(moto's) it costs a pass over the whole object; every one is conditional on the planned ETag.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, TypeVar

from barge.errors import BargeError, PermanentJobError
from barge.records.base import Limits, Range, Record
from barge.storage import ObjectInfo, ObjectStore, ResumedRead, SeekableObject

T = TypeVar("T")

HOLE_BYTES = 2**20  # unread bytes between two wanted column chunks read through, not a new GET
TAIL_BYTES = 2**20  # an object's last bytes read at once: its footer, or all of a small object
FOOTERS_BYTES = 16 * 2**20  # the footers a process keeps of the objects it read last, at most

_FOOTERS: OrderedDict[tuple[str, str, int], Any] = OrderedDict()  # (uri, etag, size): footer
_FOOTERS_LOCK = threading.Lock()

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

    @property
    def store(self) -> ObjectStore:
        return self._store

    @property
    def info(self) -> ObjectInfo:
        return self._info

    def hold(self, ranges: list[tuple[int, int]]) -> None:
        """Read each [start, end) of ``ranges`` now (one GET each, unless held already); only
        these stay held."""
        held = []
        for start, end in ranges:
            end = min(end, self._info.size)
            found = self.held(start, end)
            if found is None and start < end:
                with self._store.open(self._info.uri, start, end, if_match=self._info.etag) as f:
                    found = (start, f.read())
            if found is not None:
                held.append(found)
        self.keep(held)

    def held(self, start: int, end: int) -> tuple[int, bytes] | None:
        """The held bytes (offset, bytes) that hold all of [start, end), if any."""
        end = min(end, self._info.size)
        return next((h for h in self._held if h[0] <= start and end <= h[0] + len(h[1])), None)

    def keep(self, held: list[tuple[int, bytes]]) -> None:
        """Hold these (offset in the object, its bytes) only."""
        self._held = list({id(h): h for h in held}.values())

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
    checked against the limit. A footer this process read before for the same object (URI,
    ETag and size: ``footer_of``) is not read again."""
    import pyarrow.parquet as pq

    known = footer_of(info)
    if source is None:
        source = HeldObject(store, info)
        if known is None:
            source.hold([(max(0, info.size - footer_bytes(info.size)), info.size)])
    try:
        pf = pq.ParquetFile(source, metadata=known)
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
    if known is None:
        _remember_footer(info, meta)
    return pf


def footer_of(info: ObjectInfo) -> Any:
    """The footer (``pyarrow.parquet.FileMetaData``) this process last read of the object
    ``info`` names, if it is among the last read (``FOOTERS_BYTES`` of them, serialized) and
    the object had an ETag then and now (None otherwise). The ETag names the object's bytes;
    every read of its rows is still conditional on it (``If-Match``), so an object written
    since fails as before."""
    if not info.etag:
        return None
    key = (str(info.uri), info.etag, info.size)
    with _FOOTERS_LOCK:
        meta = _FOOTERS.get(key)
        if meta is not None:
            _FOOTERS.move_to_end(key)
        return meta


def _remember_footer(info: ObjectInfo, meta: Any) -> None:
    if not info.etag or meta.serialized_size > TAIL_BYTES:
        return
    with _FOOTERS_LOCK:
        _FOOTERS[(str(info.uri), info.etag, info.size)] = meta
        kept = sum(m.serialized_size for m in _FOOTERS.values())
        while kept > FOOTERS_BYTES:
            kept -= _FOOTERS.popitem(last=False)[1].serialized_size


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
    ``wanted`` only those of its columns the file has (every column when it has none), as one
    streaming GET per run of them (``ChunkStream``), a row group at a time; the footer comes
    from this process's last read of the same object (``footer_of``) or with the object's last
    ``TAIL_BYTES`` (all of a small object) in one GET. Nanosecond timestamps come as
    microseconds. Bytes pyarrow cannot read as Parquet are a PermanentJobError naming the row
    near which it broke."""
    source = HeldObject(store, info)
    if footer_of(info) is None:
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
    chunks = ChunkStream(
        source, {rg: _chunk_ranges(meta.row_group(rg), columns) for rg in first_rows}
    )
    try:
        for rg, row in first_rows.items():
            chunks.hold(rg)
            for batch in pf.iter_batches(row_groups=[rg], batch_size=batch_size, columns=columns):
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
    finally:
        chunks.close()


def _chunk_ranges(row_group: Any, columns: Collection[str] | None) -> list[tuple[int, int]]:
    """The byte ranges of a row group's column chunks (of ``columns``, else all), in order,
    chunks less than ``HOLE_BYTES`` apart in one range."""
    chunks = []
    for i in range(row_group.num_columns):
        chunk = row_group.column(i)
        if columns is not None and chunk.path_in_schema.split(".")[0] not in columns:
            continue
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset
        chunks.append((start, start + chunk.total_compressed_size))
    return _merged(chunks)


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` in order, those less than ``HOLE_BYTES`` apart (or overlapping) as one."""
    out: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if out and start - out[-1][1] < HOLE_BYTES:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


class ChunkStream:
    """The column chunks of a shard's row groups (``ranges``: each one's byte ranges), held in
    its ``HeldObject`` a row group at a time (``hold``), read through one streaming GET per
    run of them: ranges less than ``HOLE_BYTES`` apart are one run, whose bytes between them
    are read and dropped; ranges the source holds already (its tail) are not read again. A
    GET broken while read is resumed where it broke (``ResumedRead``); each is conditional on
    the object's ETag."""

    def __init__(self, source: HeldObject, ranges: dict[int, list[tuple[int, int]]]):
        self._source = source
        size = source.info.size  # a chunk said to lie past the end: pyarrow will say so
        self._ranges = {
            rg: [(max(0, s), min(e, size)) for s, e in rs if max(0, s) < min(e, size)]
            for rg, rs in ranges.items()
        }
        self._found = {r: source.held(*r) for rs in self._ranges.values() for r in rs}
        self._runs = _merged(r for r, found in self._found.items() if found is None)
        self._stream: ResumedRead | None = None
        self._run_end = 0

    def hold(self, rg: int) -> None:
        """Hold the ranges of row group ``rg`` (only them: the source's tail too while they
        lie in it)."""
        held = []
        for start, end in self._ranges[rg]:
            found = self._found[(start, end)]
            held.append(found if found is not None else (start, self._read(start, end)))
        self._source.keep(held)

    def _read(self, start: int, end: int) -> bytes:
        stream = self._stream
        if stream is None or not stream.tell() <= start < self._run_end:
            self.close()
            run = next(r for r in self._runs if r[0] <= start < r[1])
            stream = self._stream = ResumedRead(self._source.store, self._source.info, *run)
            self._run_end = run[1]
        _read_exactly(stream, start - stream.tell())  # a hole: dropped
        return _read_exactly(stream, end - start)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _read_exactly(stream: ResumedRead, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise EOFError(f"the object ended {n - got} bytes early")
        got += k
    return bytes(buf)


def iter_parquet(
    store: ObjectStore, info: ObjectInfo, rng: Range, limits: Limits
) -> Iterator[Record]:
    for first, rows in row_batches(store, info, rng, limits, lambda batch: batch.to_pylist()):
        for i, rec in enumerate(rows):
            yield Record(first + i + 1, rec)
