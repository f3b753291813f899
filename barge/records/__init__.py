"""Input formats: detect, peek, plan byte/record ranges, and stream records of one range.

- ``base``: formats, records, ranges and the bounds every reader enforces;
- ``lines``: bounded line reading; ``csvrows``: CSV rows; ``parquet``: Parquet rows by row group;
- ``planning``: planning the ranges of an object (of many objects, read concurrently) and
  streaming one range; ``peek``: the first
  record's fields at submit;
- ``tabular``: records as numeric features (ONNX ``feature_fields``); ``images``: images as
  records (listings, sources, bounded decoding);
- ``packs``: many small objects as one shard (grouping, the pack listing, reading a pack's
  objects concurrently, each record naming its object).

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

from barge.records.base import (
    DATA_SUFFIXES,
    EVERYTHING,
    FORMATS,
    Format,
    Limits,
    Range,
    Record,
    detect_format,
    format_of,
    is_data_object,
    resolve_inputs,
)
from barge.records.peek import peek_fields
from barge.records.planning import (
    iter_range,
    plan_objects_ranges,
    plan_objects_read,
    plan_ranges,
    planned_object,
)

__all__ = [
    "DATA_SUFFIXES",
    "EVERYTHING",
    "FORMATS",
    "Format",
    "Limits",
    "Range",
    "Record",
    "detect_format",
    "format_of",
    "is_data_object",
    "iter_range",
    "peek_fields",
    "plan_objects_ranges",
    "plan_objects_read",
    "plan_ranges",
    "planned_object",
    "resolve_inputs",
]
