"""CSV rows, fed one bounded physical line at a time."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import Any

from barge.errors import PermanentJobError
from barge.records.base import Limits, Record, record_too_large
from barge.records.lines import Lines, content_bytes
from barge.storage import S3Uri

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

    def __init__(self, lines: Lines, limits: Limits):
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
            self._record_bytes - (len(piece) - content_bytes(piece)) > self._limit
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


def csv_reader(lines: Lines, limits: Limits) -> tuple[Any, _CsvFeed]:
    # The record limit is what bounds a field: the csv module's own (131,072) must not come first.
    if csv.field_size_limit() < limits.record_bytes:
        csv.field_size_limit(limits.record_bytes)
    feed = _CsvFeed(lines, limits)
    return csv.reader(feed), feed


def csv_header(reader: Any, feed: _CsvFeed, uri: S3Uri, limits: Limits) -> list[str] | None:
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


def iter_csv(lines: Lines, uri: S3Uri, limits: Limits) -> Iterator[Record]:
    reader, feed = csv_reader(lines, limits)
    header = csv_header(reader, feed, uri, limits)
    if header is None:
        return
    while True:
        feed.start_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _RecordTooLarge as exc:
            yield Record(feed.record_line, None, record_too_large(limits, exc.line_bytes))
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
