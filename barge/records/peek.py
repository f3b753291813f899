"""Peeking at the first record's fields at submit, cheaply on hostile input."""

from __future__ import annotations

from barge.errors import InvalidSpec, PermanentJobError
from barge.records.base import Format, Limits, check_plain_size, gzip_errors, resolve_limits
from barge.records.csvrows import csv_header, csv_reader
from barge.records.lines import Lines, open_text_source, parse_json_line
from barge.records.parquet import parquet_file
from barge.storage import ObjectInfo, ObjectStore

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
    limits = resolve_limits(limits)
    try:
        with gzip_errors(info, fmt, field):
            if fmt.name == "parquet":
                return list(parquet_file(store, info, limits).schema_arrow.names)
            check_plain_size(info, fmt, limits)
            with open_text_source(store, info, fmt) as raw:
                lines = Lines(raw, info.uri, limits, fmt.gzip)
                if fmt.name == "csv":
                    reader, feed = csv_reader(lines, limits)
                    return csv_header(reader, feed, info.uri, limits) or []
                return _peek_jsonl(lines, limits)
    except PermanentJobError as exc:
        raise InvalidSpec(exc.message, field=field) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise InvalidSpec(f"cannot read {info.uri}: {exc}", field=field) from exc


def _peek_jsonl(lines: Lines, limits: Limits) -> list[str]:
    budget = PEEK_RECORDS * limits.record_bytes
    for line_no in range(1, PEEK_LINES + 1):
        item = lines.next(skip_long=False)
        if item is None:
            break
        line, _ = item
        if line is None:
            return []  # over the record limit: stop here rather than read past it
        if line.strip():
            rec = parse_json_line(line, line_no)
            if rec.data is not None:
                return list(rec.data)
        if lines.bytes_read >= budget:
            break
    return []
