"""Input formats: detect, peek, plan byte/record ranges, and stream records of one range.

Pure Python + pyarrow (no torch): the API peeks at inputs with it and the worker reads with it.

A *record* is a non-blank JSONL line, a CSV data row or a Parquet row. Lines are counted
physically (1-based, the CSV header is line 1; for Parquet "line" is the 1-based row number), so
an error can say exactly where a bad record is.

Input is bounded while it streams (:class:`Limits`): lines are read in chunks of at most
``record_bytes``, so a record over that size is skipped to its line break without being held and
becomes a per-record error; every decompressed (or plain) byte of an object counts against
``object_bytes``, and an object over it fails the job. Corrupt gzip data fails the job too, since
no retry can fix it.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from barge.errors import BargeError, InvalidSpec, PermanentJobError
from barge.settings import Settings, get_settings
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


@dataclass(frozen=True)
class Limits:
    """How much of an input is read: decompressed bytes per object, bytes of one record."""

    object_bytes: int
    record_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(object_bytes=settings.max_object_bytes, record_bytes=settings.max_record_bytes)


def _resolve(limits: Limits | None) -> Limits:
    return limits if limits is not None else Limits.from_settings(get_settings())


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


# --- bounds -------------------------------------------------------------------------------------


def _object_too_large(uri: S3Uri, limits: Limits, gz: bool) -> PermanentJobError:
    once = " once decompressed" if gz else ""
    return PermanentJobError(
        f"{uri} is larger than {limits.object_bytes} bytes{once} (BARGE_MAX_OBJECT_BYTES); "
        "split it into smaller objects"
    )


def _record_too_large(limits: Limits, line_bytes: int | None = None) -> str:
    size = f"; its line has {line_bytes} bytes" if line_bytes is not None else ""
    return f"record is larger than {limits.record_bytes} bytes (BARGE_MAX_RECORD_BYTES){size}"


def _check_plain_size(info: ObjectInfo, fmt: Format, limits: Limits) -> None:
    """A plain object's size is known before reading it: refuse it at once."""
    if not fmt.gzip and info.size > limits.object_bytes:
        raise _object_too_large(info.uri, limits, False)


_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


@contextlib.contextmanager
def _gzip_errors(info: ObjectInfo, fmt: Format, field: str | None = None) -> Iterator[None]:
    """Corrupt or truncated gzip data as a permanent error (``InvalidSpec`` when ``field``)."""
    try:
        yield
    except _GZIP_ERRORS as exc:
        if not fmt.gzip:
            raise
        message = f"invalid gzip data in {info.uri}: {exc or type(exc).__name__}"
        if field is not None:
            raise InvalidSpec(message, field=field) from exc
        raise PermanentJobError(message) from exc


# --- lines ----------------------------------------------------------------------------------------

_SKIP_CHUNK = 1 << 20  # how much of an over-long line is read at a time while skipping it


def _content_bytes(line: bytes) -> int:
    """Bytes of a line without its line break."""
    if line.endswith(b"\r\n"):
        return len(line) - 2
    if line.endswith((b"\n", b"\r")):
        return len(line) - 1
    return len(line)


class _Lines:
    """The physical lines (ending in ``\\n``) of one object's bytes, each read in bounded chunks.

    ``next()`` gives ``(line, size)``: the line with its line break and its size in bytes. A line
    over ``limits.record_bytes`` (without its line break) comes as ``(None, size)``: it is read
    past in chunks and never held. Every byte read counts against ``limits.object_bytes``.
    """

    def __init__(self, raw: IO[bytes], uri: S3Uri, limits: Limits, gz: bool):
        if not isinstance(raw, io.BufferedIOBase):
            raw = io.BufferedReader(raw, 1 << 20)  # type: ignore[arg-type,type-var,assignment]
        self._f = raw
        self._uri = uri
        self._limits = limits
        self._gz = gz
        self.bytes_read = 0
        self.count_quotes = False  # CSV: count the '"' of the lines read past...
        self.long_line_quotes = 0  # ... here, for the last one

    def _count(self, n: int) -> None:
        self.bytes_read += n
        if self.bytes_read > self._limits.object_bytes:
            raise _object_too_large(self._uri, self._limits, self._gz)

    def next(self, skip_long: bool = True) -> tuple[bytes | None, int] | None:
        """The next line, or None at the end. With ``skip_long=False`` an over-long line is not
        read to its end (its size is then what was read of it): for callers that stop there."""
        line = self._f.readline(self._limits.record_bytes + 2)  # room for b"\r\n"
        if not line:
            return None
        self._count(len(line))
        return self._checked(line, skip_long)

    def _checked(self, line: bytes, skip_long: bool) -> tuple[bytes | None, int]:
        size = len(line)
        limit = self._limits.record_bytes
        if size <= limit:
            return line, size
        if size < limit + 2 or line.endswith(b"\n"):  # a whole line (or the last, unterminated)
            return (line if _content_bytes(line) <= limit else None), size
        quotes = line.count(b'"') if self.count_quotes else 0
        while skip_long:
            chunk = self._f.readline(_SKIP_CHUNK)
            self._count(len(chunk))
            size += len(chunk)
            if self.count_quotes:
                quotes += chunk.count(b'"')
            if not chunk or chunk.endswith(b"\n"):
                break
        self.long_line_quotes = quotes
        return None, size

    def __iter__(self) -> Iterator[tuple[bytes | None, int]]:
        # next() in a loop, with the common case (a line well under the limit) kept short
        readline = self._f.readline
        limit = self._limits.record_bytes
        cap = limit + 2
        while line := readline(cap):
            size = len(line)
            self._count(size)
            yield (line, size) if size <= limit else self._checked(line, True)


def _open_text_source(store: ObjectStore, info: ObjectInfo, fmt: Format) -> IO[bytes]:
    raw = store.open(info.uri)
    if fmt.gzip:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


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
    limits = _resolve(limits)
    with _gzip_errors(info, fmt):
        if fmt.name == "parquet":
            total = _parquet_file(store, info, limits).metadata.num_rows
            ranges = [
                Range(start, min(shard_records, total - start), start + 1)
                for start in range(0, total, shard_records)
            ]
            return ranges, total
        _check_plain_size(info, fmt, limits)
        if fmt.name == "csv":
            total = 0
            ranges = []
            with _open_text_source(store, info, fmt) as raw:
                for rec in _iter_csv(_Lines(raw, info.uri, limits, fmt.gzip), info.uri, limits):
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
            lines = _Lines(raw, info.uri, limits, fmt.gzip)
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


def iter_range(
    store: ObjectStore,
    info: ObjectInfo,
    fmt: Format,
    rng: Range,
    *,
    limits: Limits | None = None,
) -> Iterator[Record]:
    """Stream the records of one range, in order, with their line numbers."""
    limits = _resolve(limits)
    with _gzip_errors(info, fmt):
        if fmt.name == "parquet":
            yield from _iter_parquet(store, info, rng, limits)
            return
        _check_plain_size(info, fmt, limits)
        if fmt.name == "csv":
            with _open_text_source(store, info, fmt) as raw:
                records = _iter_csv(_Lines(raw, info.uri, limits, fmt.gzip), info.uri, limits)
                for i, rec in enumerate(records):
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
            for line, size in _Lines(raw, info.uri, limits, fmt.gzip):
                this_line = line_no
                line_no += 1
                if line is not None and not line.strip():
                    continue
                if seen < skip:
                    seen += 1
                    continue
                if line is None:
                    yield Record(this_line, None, _record_too_large(limits, size))
                else:
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
    except RecursionError:
        return Record(line_no, None, "invalid JSON: nested too deeply")
    if not isinstance(data, dict):
        return Record(line_no, None, f"expected a JSON object, got {type(data).__name__}")
    return Record(line_no, data)


# --- CSV ----------------------------------------------------------------------------------------


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # the point after a "\r" that is a line break of its own
_BOM = b"\xef\xbb\xbf"


def _split_lone_cr(line: bytes) -> list[bytes]:
    """A ``\\n``-terminated line split after each lone ``\\r``: the lines ``newline=""`` reads."""
    return [part for part in _LONE_CR.split(line) if part]


class _RecordTooLarge(Exception):
    """Out of ``csv.reader``: the record being parsed is over the record limit (read past)."""

    def __init__(self, line_bytes: int | None):
        super().__init__(line_bytes)
        self.line_bytes = line_bytes


class _CsvFeed:
    """What ``csv.reader`` reads: one decoded physical line at a time from bounded lines.

    It numbers the lines it gives and counts the bytes of the record being parsed. A line or a
    record (quoted line breaks) over the record limit is read past to the record's end (the end
    of a line outside quotes, by the parity of its '"'s, exact for RFC 4180 data) and raises
    :class:`_RecordTooLarge` out of the reader, which then starts afresh on the next line.
    """

    def __init__(self, lines: _Lines, limits: Limits):
        self._lines = lines
        self._iter = iter(lines)
        lines.count_quotes = True
        self._limit = limits.record_bytes
        self._pending: list[bytes] = []  # pieces of the last line read, last first
        self.skip_long = True  # False: stop at an over-long line (the header; peek)
        self.line_no = 0  # physical lines read so far
        self.record_line = 1  # first line of the record being parsed
        self._record_bytes = 0
        self._in_quotes = False  # whether the record so far has an odd number of '"'
        self.undecodable = False  # whether the record so far has bytes that are not UTF-8
        self._long_size = 0

    def start_record(self) -> None:
        self.record_line = self.line_no + 1
        self._record_bytes = 0
        self._in_quotes = False
        self.undecodable = False

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        piece = self._next_piece()
        if piece is None:
            alone = self.line_no == self.record_line  # the record is this one line
            self._skip_record()
            raise _RecordTooLarge(self._long_size if alone else None)
        if self.line_no == 1 and piece.startswith(_BOM):
            piece = piece[3:]  # spreadsheet exports: not part of the first column
        self._record_bytes += len(piece)
        if piece.count(b'"') & 1:
            self._in_quotes = not self._in_quotes
        if self._record_bytes > self._limit and (
            self._record_bytes - (len(piece) - _content_bytes(piece)) > self._limit
        ):
            self._skip_record()
            raise _RecordTooLarge(None)
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            # a bad byte marks its own row as an error instead of failing the read
            self.undecodable = True
            return piece.decode("utf-8", "surrogateescape")

    def _next_piece(self) -> bytes | None:
        """The next physical line (``\\n``, ``\\r\\n`` or a lone ``\\r`` ends one, as with
        ``newline=""``); None for one over the limit, read past. StopIteration at the end."""
        self.line_no += 1
        if self._pending:
            return self._pending.pop()
        item = next(self._iter, None) if self.skip_long else self._lines.next(skip_long=False)
        if item is None:
            self.line_no -= 1
            raise StopIteration
        line, size = item
        if line is None:
            self._long_size = size
            if self._lines.long_line_quotes & 1:
                self._in_quotes = not self._in_quotes
            return None
        first = line.find(b"\r")
        if first < 0 or (first == len(line) - 2 and line.endswith(b"\r\n")):
            return line  # no lone "\r": one line
        pieces = _split_lone_cr(line)
        self._pending = pieces[:0:-1]  # the others, last first
        return pieces[0]

    def _skip_record(self) -> None:
        """Read past the rest of a record over the limit, without keeping it."""
        if not self.skip_long:
            return  # the caller gives up on the object
        while self._in_quotes:
            try:
                piece = self._next_piece()
            except StopIteration:
                return
            if piece is not None and piece.count(b'"') & 1:
                self._in_quotes = not self._in_quotes


def _csv_reader(lines: _Lines, limits: Limits) -> tuple[Any, _CsvFeed]:
    # The record limit is what bounds a field: the csv module's own (131,072) must not come first.
    if csv.field_size_limit() < limits.record_bytes:
        csv.field_size_limit(limits.record_bytes)
    feed = _CsvFeed(lines, limits)
    return csv.reader(feed), feed


def _csv_header(reader: Any, feed: _CsvFeed, uri: S3Uri, limits: Limits) -> list[str] | None:
    """The header row (None for an empty object); fails the object if it is unreadable."""
    feed.skip_long = False  # an over-long header fails the object: no need to read past it
    feed.start_record()
    try:
        header: list[str] = next(reader)
    except StopIteration:
        return None
    except _RecordTooLarge:
        raise PermanentJobError(
            f"CSV header (line 1) of {uri} is longer than {limits.record_bytes} bytes "
            "(BARGE_MAX_RECORD_BYTES)"
        ) from None
    except csv.Error as exc:
        raise PermanentJobError(f"CSV header (line 1) of {uri} is not valid CSV: {exc}") from exc
    finally:
        feed.skip_long = True
    if feed.undecodable:
        raise PermanentJobError(f"CSV header (line 1) of {uri} is not valid UTF-8")
    return header


def _iter_csv(lines: _Lines, uri: S3Uri, limits: Limits) -> Iterator[Record]:
    reader, feed = _csv_reader(lines, limits)
    header = _csv_header(reader, feed, uri, limits)
    if header is None:
        return
    while True:
        feed.start_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _RecordTooLarge as exc:
            yield Record(feed.record_line, None, _record_too_large(limits, exc.line_bytes))
            continue
        except csv.Error as exc:
            yield Record(feed.record_line, None, f"invalid CSV: {exc}")
            continue
        start = feed.record_line
        if not row or (all(not c for c in row) and len(row) == 1):
            continue
        if feed.undecodable:
            yield Record(start, None, "row is not valid UTF-8")
            continue
        if len(row) != len(header):
            yield Record(start, None, f"row has {len(row)} columns, the header has {len(header)}")
            continue
        yield Record(start, dict(zip(header, row, strict=True)))


# --- Parquet ------------------------------------------------------------------------------------


def _is_parquet_content_error(exc: Exception) -> bool:
    """pyarrow failed on the file's bytes (its own errors), not on reading them: pyarrow re-raises
    the reader's own exceptions (storage, network) as they were."""
    import pyarrow as pa

    return isinstance(exc, pa.ArrowException) or type(exc) is OSError


def _parquet_file(store: ObjectStore, info: ObjectInfo, limits: Limits) -> Any:
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


def _iter_parquet(
    store: ObjectStore, info: ObjectInfo, rng: Range, limits: Limits
) -> Iterator[Record]:
    pf = _parquet_file(store, info, limits)
    row = 0
    end = rng.start_record + rng.record_count
    try:
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row + n <= rng.start_record:
                row += n
                continue
            if row >= end:
                break
            for batch in pf.iter_batches(row_groups=[rg], batch_size=4096):
                for rec in _microseconds(batch).to_pylist():
                    if rng.start_record <= row < end:
                        yield Record(row + 1, rec)
                    row += 1
    except Exception as exc:
        if not _is_parquet_content_error(exc):
            raise
        raise PermanentJobError(
            f"{info.uri} is not a readable Parquet file (near row {row + 1}): {exc}"
        ) from exc


# --- peek ---------------------------------------------------------------------------------------

PEEK_LINES = 100  # JSONL lines looked at for a first readable record
PEEK_RECORDS = 2  # ... and at most this many record limits' worth of bytes


def peek_fields(
    store: ObjectStore,
    info: ObjectInfo,
    fmt: Format,
    field: str = "input",
    *,
    limits: Limits | None = None,
) -> list[str]:
    """The field names of the first readable record (the columns, for CSV and Parquet).

    Runs at submit, so it reads little: a line at most up to the record limit, and in all at most
    ``PEEK_LINES`` lines or ``PEEK_RECORDS`` record limits of bytes. A first record over the limit
    gives ``[]`` (nothing to check fields against; the record is reported when the job runs).
    An unreadable object (corrupt gzip, bad CSV header, over a limit) is ``InvalidSpec``.
    """
    limits = _resolve(limits)
    try:
        with _gzip_errors(info, fmt, field):
            if fmt.name == "parquet":
                return list(_parquet_file(store, info, limits).schema_arrow.names)
            _check_plain_size(info, fmt, limits)
            with _open_text_source(store, info, fmt) as raw:
                lines = _Lines(raw, info.uri, limits, fmt.gzip)
                if fmt.name == "csv":
                    reader, feed = _csv_reader(lines, limits)
                    return _csv_header(reader, feed, info.uri, limits) or []
                return _peek_jsonl(lines, limits)
    except PermanentJobError as exc:
        raise InvalidSpec(exc.message, field=field) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise InvalidSpec(f"cannot read {info.uri}: {exc}", field=field) from exc


def _peek_jsonl(lines: _Lines, limits: Limits) -> list[str]:
    budget = PEEK_RECORDS * limits.record_bytes
    for line_no in range(1, PEEK_LINES + 1):
        item = lines.next(skip_long=False)
        if item is None:
            break
        line, _ = item
        if line is None:
            return []  # over the record limit: stop here rather than read past it
        if line.strip():
            rec = _parse_json_line(line, line_no)
            if rec.data is not None:
                return list(rec.data)
        if lines.bytes_read >= budget:
            break
    return []
