"""Bounded line reading: no line is ever held past ``Limits.record_bytes``."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from typing import IO

from barge.records.base import Format, Limits, Record, object_too_large
from barge.storage import ObjectInfo, ObjectStore, S3Uri

# --- lines ----------------------------------------------------------------------------------------

_SKIP_CHUNK = 1 << 20  # how much of an over-long line is read at a time while skipping it


def content_bytes(line: bytes) -> int:
    """Bytes of a line without its line break."""
    if line.endswith(b"\r\n"):
        return len(line) - 2
    if line.endswith((b"\n", b"\r")):
        return len(line) - 1
    return len(line)


class Lines:
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
            raise object_too_large(self._uri, self._limits, self._gz)

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
            return (line if content_bytes(line) <= limit else None), size
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


def open_text_source(store: ObjectStore, info: ObjectInfo, fmt: Format) -> IO[bytes]:
    """The object's bytes (decompressed), read on condition that its ETag is still
    ``info.etag`` (when known): else ``ObjectChanged``."""
    raw = store.open(info.uri, if_match=info.etag)
    if fmt.gzip:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def parse_json_line(line: bytes, line_no: int) -> Record:
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
