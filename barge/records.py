"""Input formats: detect, peek, plan byte/record ranges, and stream records of one range.

Pure Python + pyarrow (no torch): the API peeks at inputs with it and the worker reads with it.

A *record* is a non-blank JSONL line, a CSV data row or a Parquet row. Lines are counted
physically (1-based, the CSV header is line 1; for Parquet "line" is the 1-based row number), so
an error can say exactly where a bad record is.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from barge.errors import InvalidSpec, PermanentJobError
from barge.storage import ObjectInfo, ObjectStore, S3Uri, SeekableObject

FORMATS = ("jsonl", "csv", "parquet")
DATA_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class Format:
    name: str  # jsonl | csv | parquet
    gzip: bool


def detect_format(key: str, declared: str = "auto") -> Format | None:
    lower = key.lower()
    gz = lower.endswith(".gz")
    if gz:
        lower = lower[:-3]
    if declared != "auto":
        return Format(declared, gz)
    for suffix, name in DATA_SUFFIXES.items():
        if lower.endswith(suffix):
            return Format(name, gz and name != "parquet")
    return None


def is_data_object(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith(("_", "."))


def resolve_inputs(store: ObjectStore, input_uri: str, field: str = "input") -> list[ObjectInfo]:
    """One object, or every data object under a prefix (sorted by key)."""
    uri = S3Uri.parse(input_uri, field=field)
    if uri.key and not uri.key.endswith("/"):
        info = store.head(uri)
        if info is not None:
            return [info]
    return [o for o in store.list(uri.as_prefix()) if is_data_object(o.uri.key)]


@dataclass
class Range:
    """One shard's slice of one object."""

    start_record: int  # index of the first record within the object
    record_count: int
    first_line: int  # physical line (or row number) of the first record
    byte_start: int | None = None  # plain JSONL only: read just these bytes
    byte_end: int | None = None


@dataclass
class Record:
    line: int
    data: dict[str, Any] | None
    error: str | None = None


def _open_text_source(store: ObjectStore, info: ObjectInfo, fmt: Format) -> IO[bytes]:
    raw = store.open(info.uri)
    if fmt.gzip:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def plan_ranges(
    store: ObjectStore, info: ObjectInfo, fmt: Format, shard_records: int
) -> tuple[list[Range], int]:
    """Split one object into ranges of at most ``shard_records`` records; also count them.

    Plain JSONL is split on line boundaries into byte ranges, so each shard reads only its bytes.
    Gzip and CSV (quoted newlines) are split by record index; Parquet by row.
    """
    if fmt.name == "parquet":
        total = _parquet_file(store, info).metadata.num_rows
        ranges = [
            Range(start, min(shard_records, total - start), start + 1)
            for start in range(0, total, shard_records)
        ]
        return ranges, total
    if fmt.name == "csv":
        total = 0
        ranges = []
        with _open_text_source(store, info, fmt) as raw:
            for rec in _iter_csv(raw):
                if total % shard_records == 0:
                    ranges.append(Range(total, 0, rec.line))
                ranges[-1].record_count += 1
                total += 1
        return ranges, total
    # JSONL
    total = 0
    ranges = []
    offset = 0
    with _open_text_source(store, info, fmt) as raw:
        for line_no, line in enumerate(_iter_lines(raw), start=1):
            start = offset
            offset += len(line)
            if not line.strip():
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


def _iter_lines(raw: IO[bytes]) -> Iterator[bytes]:
    buffered = raw if isinstance(raw, io.BufferedIOBase) else io.BufferedReader(raw, 1 << 20)  # type: ignore[arg-type,type-var]
    yield from buffered


def iter_range(store: ObjectStore, info: ObjectInfo, fmt: Format, rng: Range) -> Iterator[Record]:
    """Stream the records of one range, in order, with their line numbers."""
    if fmt.name == "parquet":
        yield from _iter_parquet(store, info, rng)
        return
    if fmt.name == "csv":
        with _open_text_source(store, info, fmt) as raw:
            for i, rec in enumerate(_iter_csv(raw)):
                if i < rng.start_record:
                    continue
                if i >= rng.start_record + rng.record_count:
                    break
                yield rec
        return
    if rng.byte_start is not None:
        raw = store.open(info.uri, rng.byte_start, rng.byte_end)
        skip = 0
    else:
        raw = _open_text_source(store, info, fmt)
        skip = rng.start_record
    with raw:
        seen = 0
        line_no = rng.first_line if rng.byte_start is not None else 1
        for line in _iter_lines(raw):
            this_line = line_no
            line_no += 1
            if not line.strip():
                continue
            if seen < skip:
                seen += 1
                continue
            yield _parse_json_line(line, this_line)
            seen += 1
            if seen >= skip + rng.record_count:
                break


EVERYTHING = Range(0, 2**62, 1)  # a range covering a whole object


def _parse_json_line(line: bytes, line_no: int) -> Record:
    if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]  # a byte-order mark is not part of the record
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return Record(line_no, None, f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(line_no, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(data, dict):
        return Record(line_no, None, f"expected a JSON object, got {type(data).__name__}")
    return Record(line_no, data)


def _has_undecodable(cells: list[str]) -> bool:
    return any(_SURROGATES.search(c) for c in cells)


_SURROGATES = re.compile("[\udc80-\udcff]")


def _iter_csv(raw: IO[bytes]) -> Iterator[Record]:
    # surrogateescape: a bad byte marks its own row as an error instead of failing the read;
    # utf-8-sig: a leading byte-order mark (spreadsheet exports) is not part of the first column.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")  # type: ignore[arg-type]
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    if _has_undecodable(header):
        raise PermanentJobError("CSV header (line 1) is not valid UTF-8")
    prev_end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(prev_end + 1, None, f"invalid CSV: {exc}")
            prev_end = reader.line_num
            continue
        start = prev_end + 1
        prev_end = reader.line_num
        if not row or (all(not c for c in row) and len(row) == 1):
            continue
        if _has_undecodable(row):
            yield Record(start, None, "row is not valid UTF-8")
            continue
        if len(row) != len(header):
            yield Record(start, None, f"row has {len(row)} columns, the header has {len(header)}")
            continue
        yield Record(start, dict(zip(header, row, strict=True)))


def _parquet_file(store: ObjectStore, info: ObjectInfo) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(io.BufferedReader(SeekableObject(store, info), 1 << 20))
    except Exception as exc:
        raise PermanentJobError(f"{info.uri} is not a readable Parquet file: {exc}") from exc


def _iter_parquet(store: ObjectStore, info: ObjectInfo, rng: Range) -> Iterator[Record]:
    pf = _parquet_file(store, info)
    row = 0
    end = rng.start_record + rng.record_count
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if row + n <= rng.start_record:
            row += n
            continue
        if row >= end:
            break
        for batch in pf.iter_batches(row_groups=[rg], batch_size=4096):
            for rec in batch.to_pylist():
                if rng.start_record <= row < end:
                    yield Record(row + 1, rec)
                row += 1


def peek_fields(
    store: ObjectStore, info: ObjectInfo, fmt: Format, field: str = "input"
) -> list[str]:
    """The field names of the first readable record (the columns, for CSV and Parquet)."""
    try:
        if fmt.name == "parquet":
            return list(_parquet_file(store, info).schema_arrow.names)
        if fmt.name == "csv":
            with _open_text_source(store, info, fmt) as raw:
                header = next(
                    csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")), []
                )  # type: ignore[arg-type]
            return list(header)
        with _open_text_source(store, info, fmt) as raw:
            for i, line in enumerate(_iter_lines(raw)):
                if i >= 100:
                    break
                if not line.strip():
                    continue
                rec = _parse_json_line(line, i + 1)
                if rec.data is not None:
                    return list(rec.data)
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise InvalidSpec(f"cannot read {info.uri}: {exc}", field=field) from exc
    return []
