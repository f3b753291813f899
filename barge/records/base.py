"""Formats, records, ranges and the bounds every reader enforces."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from barge.errors import InvalidSpec, PermanentJobError
from barge.settings import Settings, get_settings
from barge.storage import ObjectInfo, ObjectStore, S3Uri

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


def resolve_limits(limits: Limits | None) -> Limits:
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


def format_of(uri: S3Uri, declared: str = "auto") -> Format:
    """The object's format, or PermanentJobError saying how to name it."""
    fmt = detect_format(uri.key, declared)
    if fmt is None:
        raise PermanentJobError(
            f"cannot tell the format of {uri}: name it .jsonl, .csv or .parquet (optionally .gz) "
            "or set input_format"
        )
    return fmt


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
    # The object the record was read from, when a shard reads several (a pack); None: the
    # shard's own object.
    source: str | None = None


# --- bounds -------------------------------------------------------------------------------------


def object_too_large(uri: S3Uri, limits: Limits, gz: bool) -> PermanentJobError:
    once = " once decompressed" if gz else ""
    return PermanentJobError(
        f"{uri} is larger than {limits.object_bytes} bytes{once} (BARGE_MAX_OBJECT_BYTES); "
        "split it into smaller objects"
    )


def record_too_large(limits: Limits, line_bytes: int | None = None) -> str:
    size = f"; its line has {line_bytes} bytes" if line_bytes is not None else ""
    return f"record is larger than {limits.record_bytes} bytes (BARGE_MAX_RECORD_BYTES){size}"


def check_plain_size(info: ObjectInfo, fmt: Format, limits: Limits) -> None:
    """A plain object's size is known before reading it: refuse it at once."""
    if not fmt.gzip and info.size > limits.object_bytes:
        raise object_too_large(info.uri, limits, False)


_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


@contextlib.contextmanager
def gzip_errors(info: ObjectInfo, fmt: Format, field: str | None = None) -> Iterator[None]:
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


EVERYTHING = Range(0, 2**62, 1)  # a range covering a whole object
