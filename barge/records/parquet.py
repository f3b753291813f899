"""Parquet rows, read by row group through range reads."""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

from barge.errors import BargeError, PermanentJobError
from barge.records.base import Limits, Range, Record
from barge.storage import ObjectInfo, ObjectStore, SeekableObject

T = TypeVar("T")

# --- Parquet ------------------------------------------------------------------------------------


def _is_parquet_content_error(exc: Exception) -> bool:
    """pyarrow failed on the file's bytes (its own errors), not on reading them: pyarrow re-raises
    the reader's own exceptions (storage, network) as they were."""
    import pyarrow as pa

    return isinstance(exc, pa.ArrowException) or type(exc) is OSError


def parquet_file(store: ObjectStore, info: ObjectInfo, limits: Limits) -> Any:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BufferedReader(SeekableObject(store, info), 1 << 20))
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
    ``wanted`` only those of its columns the file has (every column when it has none);
    nanosecond timestamps come as microseconds. Bytes pyarrow cannot read as Parquet are a
    PermanentJobError naming the row near which it broke."""
    pf = parquet_file(store, info, limits)
    columns = None
    if wanted is not None:
        names = set(pf.schema_arrow.names)
        columns = sorted({c for c in wanted if c in names}) or None
    end = rng.start_record + rng.record_count
    row = 0
    try:
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row + n <= rng.start_record:
                row += n
                continue
            if row >= end:
                break
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


def iter_parquet(
    store: ObjectStore, info: ObjectInfo, rng: Range, limits: Limits
) -> Iterator[Record]:
    for first, rows in row_batches(store, info, rng, limits, lambda batch: batch.to_pylist()):
        for i, rec in enumerate(rows):
            yield Record(first + i + 1, rec)
