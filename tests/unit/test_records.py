"""barge.records against a real LocalStore: formats, range planning, streaming, record errors."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barge.errors import InvalidSpec, PermanentJobError
from barge.records import (
    EVERYTHING,
    Format,
    Limits,
    Range,
    Record,
    detect_format,
    is_data_object,
    iter_range,
    peek_fields,
    plan_objects_ranges,
    plan_ranges,
    resolve_inputs,
)
from barge.records.parquet import TAIL_BYTES, row_batches
from barge.records.planning import in_order
from barge.settings import Settings, get_settings
from barge.storage import LocalStore, ObjectInfo, S3Uri

JSONL = Format("jsonl", False)
JSONL_GZ = Format("jsonl", True)
CSV = Format("csv", False)
PARQUET = Format("parquet", False)


def put(store: LocalStore, key: str, data: bytes) -> ObjectInfo:
    uri = S3Uri("bucket", key)
    store.put_bytes(uri, data)
    info = store.head(uri)
    assert info is not None
    return info


def read_all(
    store: LocalStore,
    info: ObjectInfo,
    fmt: Format,
    shard_records: int,
    limits: Limits | None = None,
) -> tuple[list[Range], list[Record]]:
    """Plan the object, then read every range; checks the counts agree."""
    ranges, total = plan_ranges(store, info, fmt, shard_records, limits=limits)
    records = [rec for rng in ranges for rec in iter_range(store, info, fmt, rng, limits=limits)]
    assert total == len(records) == sum(r.record_count for r in ranges)
    assert all(0 < r.record_count <= shard_records for r in ranges)
    return ranges, records


def jsonl_bytes(lines: list[str], trailing_newline: bool = True) -> bytes:
    return ("\n".join(lines) + ("\n" if trailing_newline else "")).encode()


# Eight physical lines, five records; lines 2, 4 and 7 are blank (4 is whitespace only).
JSONL_LINES = [
    '{"id": 1, "text": "a"}',
    "",
    '{"id": 2, "text": "b"}',
    "   \t",
    '{"id": 3, "text": "c"}',
    '{"id": 4, "text": "d"}',
    "",
    '{"id": 5, "text": "e"}',
]
JSONL_EXPECTED = [(1, 1), (3, 2), (5, 3), (6, 4), (8, 5)]  # (line, id)


def lines_and_ids(records: list[Record]) -> list[tuple[int, Any]]:
    assert all(r.error is None and r.data is not None for r in records), records
    return [(r.line, r.data["id"]) for r in records if r.data is not None]


class TestDetectFormat:
    @pytest.mark.parametrize(
        ("key", "declared", "expected"),
        [
            ("in/a.jsonl", "auto", Format("jsonl", False)),
            ("in/a.ndjson", "auto", Format("jsonl", False)),
            ("in/a.json", "auto", Format("jsonl", False)),
            ("in/A.JSONL.GZ", "auto", Format("jsonl", True)),
            ("in/a.csv", "auto", Format("csv", False)),
            ("in/a.csv.gz", "auto", Format("csv", True)),
            ("in/a.parquet", "auto", Format("parquet", False)),
            ("in/a.pq", "auto", Format("parquet", False)),
            ("in/a.txt", "csv", Format("csv", False)),
            ("in/a.gz", "jsonl", Format("jsonl", True)),
        ],
    )
    def test_known_suffixes_and_declared_formats(
        self, key: str, declared: str, expected: Format
    ) -> None:
        assert detect_format(key, declared) == expected

    @pytest.mark.parametrize("key", ["in/a.txt", "in/README", "in/a.gz", "in/"])
    def test_unknown_suffix_is_none(self, key: str) -> None:
        assert detect_format(key) is None


class TestIsDataObject:
    @pytest.mark.parametrize("key", ["a.jsonl", "in/a.jsonl", "in/sub/part-0.parquet"])
    def test_data_objects(self, key: str) -> None:
        assert is_data_object(key)

    @pytest.mark.parametrize(
        "key", ["in/_SUCCESS", "_manifest.json", "in/.DS_Store", "in/.hidden.jsonl", "in/", ""]
    )
    def test_markers_dotfiles_and_folders_are_not_data(self, key: str) -> None:
        assert not is_data_object(key)


class TestResolveInputs:
    @pytest.fixture
    def populated(self, store: LocalStore) -> LocalStore:
        for key in [
            "data/b.csv",
            "data/a.jsonl",
            "data/_SUCCESS",
            "data/.DS_Store",
            "data/sub/c.jsonl",
            "data2/not-mine.jsonl",  # shares the string prefix "data" but not the folder
            "other/d.jsonl",
        ]:
            put(store, key, b'{"text": "x"}\n')
        return store

    def keys(self, infos: list[ObjectInfo]) -> list[str]:
        return [i.uri.key for i in infos]

    def test_prefix_lists_data_objects_sorted(self, populated: LocalStore) -> None:
        infos = resolve_inputs(populated, "s3://bucket/data/")
        assert self.keys(infos) == ["data/a.jsonl", "data/b.csv", "data/sub/c.jsonl"]
        assert all(i.size == len(b'{"text": "x"}\n') for i in infos)

    def test_prefix_without_trailing_slash_is_a_folder(self, populated: LocalStore) -> None:
        infos = resolve_inputs(populated, "s3://bucket/data")
        assert self.keys(infos) == ["data/a.jsonl", "data/b.csv", "data/sub/c.jsonl"]

    def test_single_object(self, populated: LocalStore) -> None:
        infos = resolve_inputs(populated, "s3://bucket/data/a.jsonl")
        assert self.keys(infos) == ["data/a.jsonl"]

    def test_missing_prefix_is_empty(self, populated: LocalStore) -> None:
        assert resolve_inputs(populated, "s3://bucket/nothing/") == []
        assert resolve_inputs(populated, "s3://no-such-bucket/data/") == []

    def test_non_s3_uri_is_rejected(self, populated: LocalStore) -> None:
        with pytest.raises(InvalidSpec) as exc:
            resolve_inputs(populated, "/data/a.jsonl")
        assert exc.value.field == "input"
        assert "s3://" in exc.value.message


class TestJsonl:
    def test_byte_ranges_on_line_boundaries(self, store: LocalStore) -> None:
        data = jsonl_bytes(JSONL_LINES)
        info = put(store, "in/a.jsonl", data)
        ranges, records = read_all(store, info, JSONL, 2)

        assert lines_and_ids(records) == JSONL_EXPECTED
        assert [(r.start_record, r.record_count, r.first_line) for r in ranges] == [
            (0, 2, 1),
            (2, 2, 5),
            (4, 1, 8),
        ]
        # Contiguous byte ranges covering the file, each starting at the start of a line.
        assert ranges[0].byte_start == 0
        assert ranges[-1].byte_end == len(data)
        for prev, nxt in itertools.pairwise(ranges):
            assert prev.byte_end == nxt.byte_start
        for rng in ranges:
            assert rng.byte_start is not None and rng.byte_end is not None
            assert rng.byte_start == 0 or data[rng.byte_start - 1 : rng.byte_start] == b"\n"
            chunk = data[rng.byte_start : rng.byte_end]
            ids = [json.loads(line)["id"] for line in chunk.splitlines() if line.strip()]
            assert len(ids) == rng.record_count

    def test_each_range_alone_reads_only_its_records(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", jsonl_bytes(JSONL_LINES))
        ranges, _ = plan_ranges(store, info, JSONL, 2)
        assert lines_and_ids(list(iter_range(store, info, JSONL, ranges[1]))) == [(5, 3), (6, 4)]
        assert lines_and_ids(list(iter_range(store, info, JSONL, ranges[2]))) == [(8, 5)]

    def test_leading_blank_lines_and_no_trailing_newline(self, store: LocalStore) -> None:
        lines = ["", "  ", *JSONL_LINES]
        info = put(store, "in/a.jsonl", jsonl_bytes(lines, trailing_newline=False))
        ranges, records = read_all(store, info, JSONL, 3)
        assert lines_and_ids(records) == [(line + 2, i) for line, i in JSONL_EXPECTED]
        assert ranges[0].byte_start == 4  # the first record's line, after "\n  \n"
        assert ranges[0].first_line == 3

    def test_crlf_line_endings(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", "\r\n".join(JSONL_LINES).encode() + b"\r\n")
        _, records = read_all(store, info, JSONL, 2)
        assert lines_and_ids(records) == JSONL_EXPECTED

    def test_one_big_range(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", jsonl_bytes(JSONL_LINES))
        ranges, records = read_all(store, info, JSONL, 10_000)
        assert len(ranges) == 1
        assert lines_and_ids(records) == JSONL_EXPECTED

    def test_empty_and_blank_only_objects_have_no_ranges(self, store: LocalStore) -> None:
        for key, data in [("in/empty.jsonl", b""), ("in/blank.jsonl", b"\n  \n\n")]:
            info = put(store, key, data)
            assert plan_ranges(store, info, JSONL, 5) == ([], 0)

    def test_bad_records_are_error_records_in_place(self, store: LocalStore) -> None:
        lines = [
            b'{"id": 1, "text": "ok"}',
            b'{"id": 2, "text": }',
            b"[1, 2, 3]",
            b'"just a string"',
            b'{"id": 5, "text": "caf\xe9"}',
            b"",
            b'{"id": 7, "text": "still read"}',
        ]
        info = put(store, "in/bad.jsonl", b"\n".join(lines) + b"\n")
        _, records = read_all(store, info, JSONL, 2)

        assert [r.line for r in records] == [1, 2, 3, 4, 5, 7]
        assert records[0].data == {"id": 1, "text": "ok"}
        assert records[-1].data == {"id": 7, "text": "still read"}
        bad = {r.line: r for r in records[1:-1]}
        assert all(r.data is None for r in bad.values())
        assert bad[2].error is not None and bad[2].error.startswith("invalid JSON: ")
        assert "column 19" in bad[2].error  # the 1-based column of "}"
        assert bad[3].error == "expected a JSON object, got list"
        assert bad[4].error == "expected a JSON object, got str"
        assert bad[5].error is not None and "not valid UTF-8" in bad[5].error
        assert "at byte 22" in bad[5].error  # the offset of \xe9 in that line


class TestGzipJsonl:
    def test_record_index_ranges(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl.gz", gzip.compress(jsonl_bytes(JSONL_LINES)))
        fmt = detect_format(info.uri.key)
        assert fmt == JSONL_GZ
        ranges, records = read_all(store, info, JSONL_GZ, 2)

        assert lines_and_ids(records) == JSONL_EXPECTED
        assert [(r.start_record, r.record_count, r.first_line) for r in ranges] == [
            (0, 2, 1),
            (2, 2, 5),
            (4, 1, 8),
        ]
        assert all(r.byte_start is None and r.byte_end is None for r in ranges)
        assert lines_and_ids(list(iter_range(store, info, JSONL_GZ, ranges[1]))) == [
            (5, 3),
            (6, 4),
        ]


CSV_BODY = (
    b"id,text\n"  # 1
    b"1,hello\n"  # 2
    b'2,"multi\nline"\n'  # 3-4
    b"3,too,many\n"  # 5
    b"\n"  # 6 (blank, skipped)
    b'4,"say ""hi"", ok"\n'  # 7
    b"5,last\n"  # 8
)


class TestCsv:
    def expected(self) -> list[Record]:
        return [
            Record(2, {"id": "1", "text": "hello"}),
            Record(3, {"id": "2", "text": "multi\nline"}),
            Record(5, None, "row has 3 columns, the header has 2"),
            Record(7, {"id": "4", "text": 'say "hi", ok'}),
            Record(8, {"id": "5", "text": "last"}),
        ]

    @pytest.mark.parametrize("shard_records", [1, 2, 3, 100])
    def test_quoted_newline_and_wrong_column_count(
        self, store: LocalStore, shard_records: int
    ) -> None:
        info = put(store, "in/a.csv", CSV_BODY)
        ranges, records = read_all(store, info, CSV, shard_records)
        assert records == self.expected()
        assert [r.start_record for r in ranges] == list(range(0, 5, shard_records))
        assert [r.first_line for r in ranges] == [
            rec.line for rec in self.expected()[::shard_records]
        ]

    def test_range_in_the_middle(self, store: LocalStore) -> None:
        info = put(store, "in/a.csv", CSV_BODY)
        ranges, _ = plan_ranges(store, info, CSV, 2)
        assert list(iter_range(store, info, CSV, ranges[1])) == self.expected()[2:4]

    def test_crlf_and_gzip(self, store: LocalStore) -> None:
        body = CSV_BODY.replace(b"\n", b"\r\n").replace(b'multi\r\nline"', b'multi\nline"')
        info = put(store, "in/a.csv.gz", gzip.compress(body))
        fmt = detect_format(info.uri.key)
        assert fmt == Format("csv", True)
        _, records = read_all(store, info, fmt, 2)
        assert records == self.expected()

    def test_header_only_and_empty(self, store: LocalStore) -> None:
        for key, data in [("in/h.csv", b"id,text\n"), ("in/e.csv", b"")]:
            info = put(store, key, data)
            assert plan_ranges(store, info, CSV, 2) == ([], 0)

    def test_invalid_utf8_header_fails_the_object(self, store: LocalStore) -> None:
        info = put(store, "in/a.csv", b"id,t\xe9xt\n1,hello\n")
        with pytest.raises(PermanentJobError, match="not valid UTF-8"):
            plan_ranges(store, info, CSV, 2)

    def test_invalid_utf8_row_is_an_error_record(self, store: LocalStore) -> None:
        # The header is valid; only the row on line 4 has a bad byte. A bad record must not kill
        # the job (DESIGN.md), and the JSONL reader already turns such a line into an error record.
        info = put(store, "in/a.csv", b"id,text\n1,hello\n2,world\n3,caf\xe9\n4,ok\n")
        _, records = read_all(store, info, CSV, 10)
        assert [r.line for r in records] == [2, 3, 4, 5]
        assert records[2].data is None
        assert records[2].error is not None and "UTF-8" in records[2].error
        assert records[3].data == {"id": "4", "text": "ok"}


class TestParquet:
    ROWS = 23

    @pytest.fixture
    def info(self, store: LocalStore, tmp_path: Path) -> ObjectInfo:
        table = pa.table(
            {
                "id": list(range(self.ROWS)),
                "text": [f"row {i}" if i % 5 else None for i in range(self.ROWS)],
            }
        )
        path = tmp_path / "a.parquet"
        pq.write_table(table, path, row_group_size=4)
        assert pq.ParquetFile(path).metadata.num_row_groups == 6
        store.put_file(S3Uri("bucket", "in/a.parquet"), path)
        found = store.head(S3Uri("bucket", "in/a.parquet"))
        assert found is not None
        return found

    def expected(self) -> list[Record]:
        return [
            Record(i + 1, {"id": i, "text": f"row {i}" if i % 5 else None})
            for i in range(self.ROWS)
        ]

    @pytest.mark.parametrize("shard_records", [1, 3, 4, 6, 23, 100])
    def test_rows_across_row_groups(
        self, store: LocalStore, info: ObjectInfo, shard_records: int
    ) -> None:
        ranges, records = read_all(store, info, PARQUET, shard_records)
        assert records == self.expected()
        assert [(r.start_record, r.first_line) for r in ranges] == [
            (s, s + 1) for s in range(0, self.ROWS, shard_records)
        ]

    def test_range_straddling_row_groups(self, store: LocalStore, info: ObjectInfo) -> None:
        ranges, _ = plan_ranges(store, info, PARQUET, 6)
        assert (ranges[1].start_record, ranges[1].record_count) == (6, 6)  # row groups 1 and 2
        assert list(iter_range(store, info, PARQUET, ranges[1])) == self.expected()[6:12]

    def test_nanosecond_timestamps_are_read_as_microseconds(
        self, store: LocalStore, tmp_path: Path
    ) -> None:
        import datetime

        stamps = pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns", "UTC"))
        path = tmp_path / "ns.parquet"
        pq.write_table(pa.table({"id": stamps, "text": ["a", "b"]}), path)
        store.put_file(S3Uri("bucket", "in/ns.parquet"), path)
        info = store.head(S3Uri("bucket", "in/ns.parquet"))
        assert info is not None
        _, records = read_all(store, info, PARQUET, 10)
        first = records[0].data
        assert first is not None
        assert first["id"] == datetime.datetime(
            2023, 11, 14, 22, 13, 20, 123456, tzinfo=datetime.UTC
        )
        assert records[1].data == {"id": None, "text": "b"}

    def test_not_parquet_is_a_permanent_error(self, store: LocalStore) -> None:
        info = put(store, "in/fake.parquet", b'{"text": "x"}\n')
        with pytest.raises(PermanentJobError, match=r"s3://bucket/in/fake\.parquet"):
            plan_ranges(store, info, PARQUET, 10)


class CountingStore(LocalStore):
    """A LocalStore that keeps the byte ranges read from it (each one a GET on S3)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.reads: list[tuple[int, int | None]] = []

    def open(
        self, uri: S3Uri, start: int = 0, end: int | None = None, *, if_match: str = ""
    ) -> Any:
        self.reads.append((start, end))
        return super().open(uri, start, end, if_match=if_match)


class TestParquetSpans:
    """``row_batches`` reads a shard's rows in few GETs: the tail, then one stream over its
    row groups' column chunks, leaving out columns it does not read (a GET per run of the
    chunks it reads); a second read of the object needs no tail."""

    ROWS, GROUP = 100_000, 10_000

    @pytest.fixture
    def table(self) -> pa.Table:
        import numpy as np

        rng = np.random.default_rng(0)
        features = {f"f{j}": rng.normal(size=self.ROWS) for j in range(16)}
        blob = [bytes(b).hex() for b in rng.integers(0, 256, (self.ROWS, 75), dtype=np.uint8)]
        return pa.table({"id": range(self.ROWS), **features, "blob": blob})

    @pytest.fixture
    def counted(self, tmp_path: Path, table: pa.Table) -> tuple[CountingStore, ObjectInfo]:
        store = CountingStore(tmp_path / "store")
        path = tmp_path / "big.parquet"
        pq.write_table(table, path, row_group_size=self.GROUP)
        store.put_file(S3Uri("bucket", "in/big.parquet"), path)
        info = store.head(S3Uri("bucket", "in/big.parquet"))
        assert info is not None and info.size > 20 * 2**20
        store.reads.clear()
        return store, info

    @pytest.mark.parametrize(
        ("start", "count"), [(0, ROWS), (25_000, 30_000), (99_990, 10), (10_000, 10_000)]
    )
    @pytest.mark.parametrize("wanted", [None, ["id", "f3", "f0"]])
    def test_rows_as_pyarrow_reads_them(
        self,
        counted: tuple[CountingStore, ObjectInfo],
        table: pa.Table,
        start: int,
        count: int,
        wanted: list[str] | None,
    ) -> None:
        store, info = counted
        got = list(
            row_batches(
                store,
                info,
                Range(start, count, start + 1),
                Limits.from_settings(get_settings()),
                lambda b: b,
                wanted,
            )
        )
        firsts = [first for first, _ in got]
        assert firsts == list(itertools.accumulate([start, *[b.num_rows for _, b in got][:-1]]))
        columns = sorted(wanted) if wanted else table.column_names
        rows = pa.Table.from_batches([b for _, b in got]).select(columns)
        assert rows.equals(table.slice(start, count).select(columns))
        groups = -(-(start + count) // self.GROUP) - start // self.GROUP
        read = sum((end or info.size) - begin for begin, end in store.reads)
        if wanted:  # the blob column (most of the bytes, between row groups) is never read
            assert read < info.size / 4
            assert len(store.reads) <= 1 + groups  # the tail, then a GET per row group at most
        else:  # the tail, then one stream (none when the tail holds them)
            assert len(store.reads) <= 2
        store.reads.clear()  # again: the footer is known, the rows are one stream again
        again = row_batches(
            store,
            info,
            Range(start, count, start + 1),
            Limits.from_settings(get_settings()),
            lambda b: b.num_rows,
            wanted,
        )
        assert sum(n for _, n in again) == count
        assert len(store.reads) <= (groups if wanted else 1)

    @pytest.mark.parametrize("start", [0, 27_500])
    def test_row_groups_before_in_and_across_the_tail(
        self, tmp_path: Path, table: pa.Table, start: int
    ) -> None:
        """The tail's GET holds the last row groups (the one it cuts is streamed): they are
        read from it, after others were streamed, not read again."""
        store = CountingStore(tmp_path / "store")
        path = tmp_path / "mid.parquet"
        pq.write_table(table.slice(0, 30_000), path, row_group_size=1_000)
        store.put_file(S3Uri("bucket", "in/mid.parquet"), path)
        info = store.head(S3Uri("bucket", "in/mid.parquet"))
        assert info is not None and info.size > 4 * TAIL_BYTES
        store.reads.clear()
        rng = Range(start, 30_000 - start, start + 1)
        got = row_batches(store, info, rng, Limits.from_settings(get_settings()), lambda b: b)
        ids = [i for _, b in got for i in b.column("id").to_pylist()]
        assert ids == list(range(start, 30_000))
        assert len(store.reads) == (2 if start == 0 else 1)  # the tail, one stream up to it

    def test_a_small_object_is_one_get(self, tmp_path: Path, table: pa.Table) -> None:
        store = CountingStore(tmp_path / "store")
        path = tmp_path / "small.parquet"
        pq.write_table(table.slice(0, 50), path, row_group_size=8)
        store.put_file(S3Uri("bucket", "in/small.parquet"), path)
        info = store.head(S3Uri("bucket", "in/small.parquet"))
        assert info is not None
        store.reads.clear()
        got = list(
            row_batches(
                store,
                info,
                Range(3, 40, 4),
                Limits.from_settings(get_settings()),
                lambda b: b,
                ["id"],
            )
        )
        assert pa.Table.from_batches([b for _, b in got])["id"].to_pylist() == list(range(3, 43))
        assert len(store.reads) == 1


class TestPeekFields:
    def test_jsonl_first_readable_record(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", b'\n{"broken\n[1]\n{"id": 1, "text": "x", "lang": "en"}\n')
        assert peek_fields(store, info, JSONL) == ["id", "text", "lang"]

    def test_gzip_jsonl(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl.gz", gzip.compress(b'{"text": "x", "id": 2}\n'))
        assert peek_fields(store, info, JSONL_GZ) == ["text", "id"]

    def test_jsonl_without_records(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", b"\n\n")
        assert peek_fields(store, info, JSONL) == []

    def test_csv_header(self, store: LocalStore) -> None:
        info = put(store, "in/a.csv", CSV_BODY)
        assert peek_fields(store, info, CSV) == ["id", "text"]

    def test_parquet_schema(self, store: LocalStore, tmp_path: Path) -> None:
        path = tmp_path / "p.parquet"
        pq.write_table(pa.table({"doc_id": [1], "body": ["x"], "score": [0.5]}), path)
        store.put_file(S3Uri("bucket", "in/p.parquet"), path)
        info = store.head(S3Uri("bucket", "in/p.parquet"))
        assert info is not None
        assert peek_fields(store, info, PARQUET) == ["doc_id", "body", "score"]

    def test_unreadable_gzip_is_invalid_spec(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl.gz", b"this is not gzip")
        with pytest.raises(InvalidSpec) as exc:
            peek_fields(store, info, JSONL_GZ)
        assert exc.value.field == "input"
        assert "s3://bucket/in/a.jsonl.gz" in exc.value.message


# --- bounded input: record and object limits, corrupt gzip, hostile objects at submit ---------

TINY = Limits(object_bytes=10**9, record_bytes=64)  # lines over 64 bytes are records too large
TOO_LARGE = "record is larger than 64 bytes (BARGE_MAX_RECORD_BYTES)"


def small(i: int) -> str:
    return json.dumps({"id": i, "text": "ok"})


def big(i: int, size: int = 200) -> str:
    return json.dumps({"id": i, "text": "x" * size})


def ids_or_errors(records: list[Record]) -> list[tuple[int, Any]]:
    """(line, id) for a record, (line, the error) for an error record."""
    return [(r.line, r.data["id"] if r.data is not None else r.error) for r in records]


def put_stream(store: LocalStore, key: str, parts: Iterator[bytes], compress: bool) -> ObjectInfo:
    """Write an object from ``parts`` (gzip-compressed on the fly), never holding all of it."""
    uri = S3Uri("bucket", key)
    path = store.root / "bucket" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits=31: a gzip stream
    with path.open("wb") as f:
        for part in parts:
            f.write(comp.compress(part) if compress else part)
        if compress:
            f.write(comp.flush())
    info = store.head(uri)
    assert info is not None
    return info


def huge_line(size: int, record_id: int = 2) -> Iterator[bytes]:
    """One JSONL line of about ``size`` bytes, in 1 MiB parts."""
    yield b'{"id": %d, "text": "' % record_id
    chunk = b"a" * (1 << 20)
    for start in range(0, size, len(chunk)):
        yield chunk[: min(len(chunk), size - start)]
    yield b'"}\n'


def peak_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak of Python memory allocated while it ran."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


OVERSIZE_LINES = [small(1), big(2), "", small(3), big(4), big(5), small(6)]
OVERSIZE_EXPECTED = [(1, 1), (2, TOO_LARGE), (4, 3), (5, TOO_LARGE), (6, TOO_LARGE), (7, 6)]


class TestLimits:
    def test_from_settings(self) -> None:
        limits = Limits.from_settings(Settings(max_object_bytes=5000, max_record_bytes=2048))
        assert limits == Limits(object_bytes=5000, record_bytes=2048)

    def test_no_limits_means_the_settings(
        self, store: LocalStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BARGE_MAX_RECORD_BYTES", "1024")
        get_settings.cache_clear()
        try:
            info = put(store, "in/a.jsonl", jsonl_bytes([small(1), big(2, 2000), small(3)]))
            _, records = read_all(store, info, JSONL, 10)
        finally:
            get_settings.cache_clear()
        assert [r.line for r in records] == [1, 2, 3]
        assert records[1].error is not None
        assert records[1].error.startswith("record is larger than 1024 bytes")


class TestOversizeJsonl:
    @pytest.mark.parametrize("shard_records", [1, 2, 3, 100])
    def test_plain_byte_ranges_agree_with_records(
        self, store: LocalStore, shard_records: int
    ) -> None:
        data = jsonl_bytes(OVERSIZE_LINES)
        info = put(store, "in/a.jsonl", data)
        ranges, records = read_all(store, info, JSONL, shard_records, TINY)

        line_bytes = len(big(0)) + 1
        assert ids_or_errors(records) == [
            (line, e if isinstance(e, int) else f"{e}; its line has {line_bytes} bytes")
            for line, e in OVERSIZE_EXPECTED
        ]
        # Exact byte ranges: contiguous, covering the file, each on line starts, each holding its
        # records (the oversized lines included), each with its first line's number.
        assert ranges[0].byte_start == 0 and ranges[-1].byte_end == len(data)
        for prev, nxt in itertools.pairwise(ranges):
            assert prev.byte_end == nxt.byte_start
        for rng in ranges:
            assert rng.byte_start is not None and rng.byte_end is not None
            assert data[: rng.byte_start].count(b"\n") + 1 == rng.first_line
            chunk = data[rng.byte_start : rng.byte_end]
            assert len([x for x in chunk.splitlines() if x.strip()]) == rng.record_count
            alone = list(iter_range(store, info, JSONL, rng, limits=TINY))
            start = rng.start_record
            assert alone == records[start : start + rng.record_count]

    @pytest.mark.parametrize("shard_records", [1, 2, 4, 100])
    def test_gzip(self, store: LocalStore, shard_records: int) -> None:
        info = put(store, "in/a.jsonl.gz", gzip.compress(jsonl_bytes(OVERSIZE_LINES)))
        _, records = read_all(store, info, JSONL_GZ, shard_records, TINY)
        got = [
            (line, e if isinstance(e, int) else e[: len(TOO_LARGE)])
            for line, e in ids_or_errors(records)
        ]
        assert got == OVERSIZE_EXPECTED

    def test_limit_is_on_the_line_without_its_line_break(self, store: LocalStore) -> None:
        limits = Limits(object_bytes=10**9, record_bytes=32)
        at = '{"id": 1, "t": "' + "a" * 14 + '"}'
        over = at.replace('"}', 'a"}')
        assert (len(at), len(over)) == (32, 33)
        for data in [
            f"{at}\n{at}\r\n{over}\n{at}".encode(),  # the last line has no line break
            f"{at}\n{at}\r\n{over}\r\n{at}\n".encode(),
        ]:
            info = put(store, "in/edge.jsonl", data)
            _, records = read_all(store, info, JSONL, 2, limits)
            assert [(r.line, r.data is not None) for r in records] == [
                (1, True),
                (2, True),
                (3, False),
                (4, True),
            ]
        info = put(store, "in/last.jsonl", f"{at}\n{over}".encode())
        _, records = read_all(store, info, JSONL, 1, limits)
        assert [(r.line, r.error) for r in records] == [
            (1, None),
            (2, "record is larger than 32 bytes (BARGE_MAX_RECORD_BYTES); its line has 33 bytes"),
        ]

    @pytest.mark.parametrize("compressed", [False, True])
    def test_a_huge_line_is_streamed_past_in_bounded_memory(
        self, store: LocalStore, compressed: bool
    ) -> None:
        size = 32 * 2**20
        parts = itertools.chain(
            [small(1).encode() + b"\n"], huge_line(size), [small(3).encode() + b"\n"]
        )
        key = "in/huge.jsonl" + (".gz" if compressed else "")
        info = put_stream(store, key, parts, compressed)
        fmt = Format("jsonl", compressed)
        limits = Limits(object_bytes=10**10, record_bytes=2**20)

        (ranges, records), peak = peak_bytes(lambda: read_all(store, info, fmt, 2, limits))

        assert [(r.line, r.data) for r in records] == [
            (1, {"id": 1, "text": "ok"}),
            (2, None),
            (3, {"id": 3, "text": "ok"}),
        ]
        assert records[1].error == (
            f"record is larger than {2**20} bytes (BARGE_MAX_RECORD_BYTES); "
            f"its line has {size + 22} bytes"
        )
        assert len(ranges) == 2
        assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"

    def test_deeply_nested_json_is_an_error_record(self, store: LocalStore) -> None:
        info = put(store, "in/deep.jsonl", b"[" * 200_000 + b"\n" + small(2).encode() + b"\n")
        _, records = read_all(store, info, JSONL, 10, Limits(10**9, 2**20))
        assert [(r.line, r.error) for r in records] == [
            (1, "invalid JSON: nested too deeply"),
            (2, None),
        ]


class TestOversizeCsv:
    BODY = (
        b"id,text\n"  # 1
        b"1,ok\n"  # 2
        b"2," + b"x" * 100 + b"\n"  # 3: one physical line over the limit
        b'3,"two\nlines"\n'  # 4-5
        b'4,"' + b"quoted line\n" * 10 + b'end"\n'  # 6-16: a record over it, over lines
        b'5,"a ""quoted"" word"\n'  # 17
        b'6,"starts small\n' + b"y" * 100 + b'\nends"\n'  # 18-20: an over-long line inside
        b"7,last\n"  # 21
    )

    @pytest.mark.parametrize("variant", ["plain", "gzip", "crlf"])
    @pytest.mark.parametrize("shard_records", [1, 3, 100])
    def test_records_over_the_limit_are_error_records_in_place(
        self, store: LocalStore, variant: str, shard_records: int
    ) -> None:
        body = self.BODY.replace(b"\n", b"\r\n") if variant == "crlf" else self.BODY
        data = gzip.compress(body) if variant == "gzip" else body
        info = put(store, "in/a.csv" + (".gz" if variant == "gzip" else ""), data)
        fmt = Format("csv", variant == "gzip")

        _, records = read_all(store, info, fmt, shard_records, TINY)

        line_bytes = 104 if variant == "crlf" else 103
        assert ids_or_errors(records) == [
            (2, "1"),
            (3, f"{TOO_LARGE}; its line has {line_bytes} bytes"),
            (4, "3"),
            (6, TOO_LARGE),  # read past to its closing quote
            (17, "5"),
            (18, TOO_LARGE),
            (21, "7"),
        ]
        assert records[4].data == {"id": "5", "text": 'a "quoted" word'}

    def test_fields_over_the_csv_modules_default_limit_are_read(self, store: LocalStore) -> None:
        name, text = "n" * 150_000, "z" * 200_000  # csv's own field_size_limit is 131,072
        info = put(store, "in/wide.csv", f"id,{name}\n1,{text}\n".encode())
        limits = Limits(10**9, 2**20)
        _, records = read_all(store, info, CSV, 10, limits)
        assert records == [Record(2, {"id": "1", name: text})]
        assert peek_fields(store, info, CSV, limits=limits) == ["id", name]

    @pytest.mark.parametrize("compressed", [False, True])
    def test_header_over_the_limit(self, store: LocalStore, compressed: bool) -> None:
        body = ",".join(f"column_{i}" for i in range(20)).encode() + b"\n1,2\n"
        key = "in/wide.csv" + (".gz" if compressed else "")
        info = put(store, key, gzip.compress(body) if compressed else body)
        fmt = Format("csv", compressed)
        message = f"CSV header (line 1) of s3://bucket/{key} is longer than 64 bytes"
        with pytest.raises(PermanentJobError, match=re.escape(message)):
            plan_ranges(store, info, fmt, 10, limits=TINY)
        with pytest.raises(PermanentJobError, match=re.escape(message)):
            list(iter_range(store, info, fmt, EVERYTHING, limits=TINY))
        with pytest.raises(InvalidSpec, match=re.escape(message)) as exc:
            peek_fields(store, info, fmt, "train", limits=TINY)
        assert exc.value.field == "train"

    def test_bom_and_lone_carriage_returns(self, store: LocalStore) -> None:
        # A spreadsheet export: byte-order mark, and old-Mac line breaks (a lone "\r") still split
        # lines as csv's newline="" did.
        info = put(store, "in/mac.csv", b'\xef\xbb\xbfid,text\r1,a\r2,"b\rc"\r3,d\r')
        _, records = read_all(store, info, CSV, 2)
        assert records == [
            Record(2, {"id": "1", "text": "a"}),
            Record(3, {"id": "2", "text": "b\rc"}),
            Record(5, {"id": "3", "text": "d"}),
        ]
        assert peek_fields(store, info, CSV) == ["id", "text"]


class TestObjectLimit:
    LIMITS = Limits(object_bytes=1000, record_bytes=1024)

    def data(self) -> bytes:
        return jsonl_bytes([small(i) for i in range(100)])  # about 2,600 bytes

    def test_plain_jsonl_is_refused_before_reading(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", self.data())
        message = (
            "s3://bucket/in/a.jsonl is larger than 1000 bytes (BARGE_MAX_OBJECT_BYTES); "
            "split it into smaller objects"
        )
        with pytest.raises(PermanentJobError) as exc:
            plan_ranges(store, info, JSONL, 10, limits=self.LIMITS)
        assert exc.value.message == message
        with pytest.raises(PermanentJobError, match=re.escape(message)):
            list(iter_range(store, info, JSONL, Range(0, 1, 1, 0, 30), limits=self.LIMITS))
        with pytest.raises(InvalidSpec, match=re.escape(message)):
            peek_fields(store, info, JSONL, limits=self.LIMITS)

    @pytest.mark.parametrize("fmt", [JSONL_GZ, Format("csv", True)])
    def test_gzip_counts_decompressed_bytes(self, store: LocalStore, fmt: Format) -> None:
        data = self.data() if fmt.name == "jsonl" else b"id,text\n" + b"1,abc\n" * 500
        info = put(store, f"in/a.{fmt.name}.gz", gzip.compress(data))
        assert info.size < 1000
        message = (
            f"s3://bucket/in/a.{fmt.name}.gz is larger than 1000 bytes once decompressed "
            "(BARGE_MAX_OBJECT_BYTES)"
        )
        with pytest.raises(PermanentJobError, match=re.escape(message)):
            plan_ranges(store, info, fmt, 10, limits=self.LIMITS)
        with pytest.raises(PermanentJobError, match=re.escape(message)):
            list(iter_range(store, info, fmt, EVERYTHING, limits=self.LIMITS))
        # At submit only the first records are read: under the limit, nothing to refuse yet.
        assert peek_fields(store, info, fmt, limits=self.LIMITS) == ["id", "text"]

    def test_parquet_by_its_metadata(self, store: LocalStore, tmp_path: Path) -> None:
        path = tmp_path / "p.parquet"
        pq.write_table(pa.table({"id": list(range(2000)), "text": ["x" * 20] * 2000}), path)
        store.put_file(S3Uri("bucket", "in/p.parquet"), path)
        info = store.head(S3Uri("bucket", "in/p.parquet"))
        assert info is not None
        limits = Limits(object_bytes=10_000, record_bytes=1024)
        with pytest.raises(PermanentJobError, match="BARGE_MAX_OBJECT_BYTES") as exc:
            plan_ranges(store, info, PARQUET, 100, limits=limits)
        assert "s3://bucket/in/p.parquet holds " in exc.value.message
        with pytest.raises(PermanentJobError, match="BARGE_MAX_OBJECT_BYTES"):
            list(iter_range(store, info, PARQUET, EVERYTHING, limits=limits))
        with pytest.raises(InvalidSpec, match="BARGE_MAX_OBJECT_BYTES"):
            peek_fields(store, info, PARQUET, limits=limits)
        assert plan_ranges(store, info, PARQUET, 1000)[1] == 2000  # under the default limit


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _corrupt_first_block(data: bytes) -> bytes:
    return data[:10] + b"\xff" * 8 + data[18:]  # the 10-byte header, then deflate data


def _bad_crc(data: bytes) -> bytes:
    return data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:]


class TestCorruptGzip:
    BODIES: ClassVar[dict[str, bytes]] = {
        "jsonl": jsonl_bytes([small(i) for i in range(2000)]),
        "csv": b"id,text\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(2000)),
    }

    @pytest.mark.parametrize("name", ["jsonl", "csv"])
    @pytest.mark.parametrize("damage", [_truncated, _corrupt_first_block, _bad_crc])
    def test_is_a_permanent_error(
        self, store: LocalStore, name: str, damage: Callable[[bytes], bytes]
    ) -> None:
        data = damage(gzip.compress(self.BODIES[name]))
        info = put(store, f"in/a.{name}.gz", data)
        fmt = Format(name, True)
        needle = f"invalid gzip data in s3://bucket/in/a.{name}.gz: "
        with pytest.raises(PermanentJobError, match=re.escape(needle)):
            plan_ranges(store, info, fmt, 100)
        with pytest.raises(PermanentJobError, match=re.escape(needle)):
            list(iter_range(store, info, fmt, EVERYTHING))

    @pytest.mark.parametrize("name", ["jsonl", "csv"])
    @pytest.mark.parametrize("damage", [_truncated, _corrupt_first_block])
    def test_is_invalid_spec_at_submit(
        self, store: LocalStore, name: str, damage: Callable[[bytes], bytes]
    ) -> None:
        # Small enough that peeking reaches the damage (a truncated object's first records may be
        # readable: then only the job fails, when planning reads all of it).
        body = b"id,text\n1,x\n" if name == "csv" else b'{"id": 1, "text": "x"}\n'
        info = put(store, f"in/a.{name}.gz", damage(gzip.compress(body)))
        with pytest.raises(InvalidSpec) as exc:
            peek_fields(store, info, Format(name, True), "input")
        assert exc.value.field == "input"
        assert exc.value.message.startswith(f"invalid gzip data in s3://bucket/in/a.{name}.gz: ")

    def test_plain_object_named_gz_is_invalid(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl.gz", b'{"id": 1, "text": "not compressed"}\n')
        with pytest.raises(PermanentJobError, match=r"invalid gzip data in .*Not a gzipped file"):
            plan_ranges(store, info, JSONL_GZ, 10)


class TestCorruptParquet:
    def test_damaged_pages_are_a_permanent_error(self, store: LocalStore, tmp_path: Path) -> None:
        path = tmp_path / "p.parquet"
        table = pa.table({"id": list(range(5000)), "text": [f"text {i}" * 5 for i in range(5000)]})
        pq.write_table(table, path, row_group_size=1000, compression="snappy")
        data = bytearray(path.read_bytes())
        data[2000:2200] = b"\xff" * 200  # inside the first row group's pages
        info = put(store, "in/p.parquet", bytes(data))
        ranges, total = plan_ranges(store, info, PARQUET, 10_000)  # the footer is intact
        assert total == 5000
        with pytest.raises(PermanentJobError, match=r"s3://bucket/in/p\.parquet is not a readable"):
            list(iter_range(store, info, PARQUET, ranges[0]))


class TestPeekIsBounded:
    def test_gzip_bomb_single_line(self, store: LocalStore) -> None:
        """~200 MB of one line in ~200 KB of gzip: peek reads one record limit of it, quickly."""
        size = 200 * 10**6
        info = put_stream(store, "in/bomb.jsonl.gz", huge_line(size, 1), compress=True)
        assert info.size < 2 * 10**6
        limits = Limits(object_bytes=16 * 2**30, record_bytes=4 * 2**20)  # the defaults

        started = time.perf_counter()
        fields, peak = peak_bytes(lambda: peek_fields(store, info, JSONL_GZ, limits=limits))
        elapsed = time.perf_counter() - started

        assert fields == []  # the first record is over the limit: nothing to check at submit
        assert elapsed < 1.0, elapsed
        assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"

    def test_gzip_bomb_csv_header(self, store: LocalStore) -> None:
        parts = itertools.chain([b"id,"], (b"t" * 2**20 for _ in range(100)), [b"\n1,x\n"])
        info = put_stream(store, "in/bomb.csv.gz", parts, compress=True)
        started = time.perf_counter()
        with pytest.raises(InvalidSpec, match=r"CSV header \(line 1\) .* is longer than"):
            peek_fields(store, info, Format("csv", True), limits=Limits(2**34, 2**20))
        assert time.perf_counter() - started < 1.0

    def test_at_most_100_lines(self, store: LocalStore) -> None:
        lines = ["[1]"] * 100 + [small(1)]
        info = put(store, "in/a.jsonl", jsonl_bytes(lines))
        assert peek_fields(store, info, JSONL) == []
        info = put(store, "in/b.jsonl", jsonl_bytes(lines[1:]))
        assert peek_fields(store, info, JSONL) == ["id", "text"]

    def test_at_most_two_record_limits_of_bytes(self, store: LocalStore) -> None:
        filler = json.dumps(["x" * 1000])  # a readable line but not a record with fields
        lines = [filler] * 3 + [small(1)]
        info = put(store, "in/a.jsonl", jsonl_bytes(lines))
        limits = Limits(object_bytes=10**9, record_bytes=1024)
        assert peek_fields(store, info, JSONL, limits=limits) == []
        info = put(store, "in/b.jsonl", jsonl_bytes(lines[1:]))
        assert peek_fields(store, info, JSONL, limits=limits) == ["id", "text"]

    def test_a_first_record_over_the_limit_is_no_fields(self, store: LocalStore) -> None:
        info = put(store, "in/a.jsonl", jsonl_bytes([big(1), small(2)]))
        assert peek_fields(store, info, JSONL, limits=TINY) == []
        assert peek_fields(store, info, JSONL) == ["id", "text"]  # under the default limit


# --- property: planning + streaming reads every record exactly once, in order ------------------

json_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False)
)
records_or_blanks = st.lists(
    st.one_of(
        st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        st.sampled_from(["", "  ", "\t", "\r"]),  # blank lines
    ),
    max_size=40,
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=records_or_blanks,
    shard_records=st.integers(min_value=1, max_value=45),
    compressed=st.booleans(),
    ascii_only=st.booleans(),
    trailing_newline=st.booleans(),
)
def test_every_record_read_exactly_once_in_order(
    store: LocalStore,
    items: list[dict[str, Any] | str],
    shard_records: int,
    compressed: bool,
    ascii_only: bool,
    trailing_newline: bool,
) -> None:
    lines = [i if isinstance(i, str) else json.dumps(i, ensure_ascii=ascii_only) for i in items]
    data = jsonl_bytes(lines, trailing_newline)
    fmt = Format("jsonl", compressed)
    info = put(store, "prop/in.jsonl", gzip.compress(data) if compressed else data)

    _, records = read_all(store, info, fmt, shard_records)

    expected = [(n, i) for n, i in enumerate(items, start=1) if not isinstance(i, str)]
    assert [(r.line, r.data) for r in records] == expected
    assert all(r.error is None for r in records)


# --- property: with lines over the record limit, planning and streaming stay in step -----------

LIMITED = Limits(object_bytes=10**9, record_bytes=48)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(
        st.one_of(
            st.dictionaries(st.text(max_size=12), json_values, max_size=4),
            st.sampled_from(["", "  "]),
            st.integers(min_value=1, max_value=120).map(lambda n: "x" * n),  # not JSON
        ),
        max_size=30,
    ),
    shard_records=st.integers(min_value=1, max_value=35),
    compressed=st.booleans(),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
)
def test_oversize_lines_keep_planning_and_reading_in_step(
    store: LocalStore,
    items: list[dict[str, Any] | str],
    shard_records: int,
    compressed: bool,
    crlf: bool,
    trailing_newline: bool,
) -> None:
    lines = [i if isinstance(i, str) else json.dumps(i) for i in items]
    data = (("\r\n" if crlf else "\n").join(lines) + ("\n" if trailing_newline else "")).encode()
    fmt = Format("jsonl", compressed)
    info = put(store, "prop/in.jsonl", gzip.compress(data) if compressed else data)

    _, records = read_all(store, info, fmt, shard_records, LIMITED)

    expected: list[tuple[int, dict[str, Any] | None, str]] = []
    for n, (item, line) in enumerate(zip(items, lines, strict=True), start=1):
        if len(line.encode()) > LIMITED.record_bytes:
            expected.append((n, None, "large"))
        elif line.strip():
            expected.append(
                (
                    n,
                    None if isinstance(item, str) else item,
                    "bad" if isinstance(item, str) else "ok",
                )
            )
    got = [
        (
            r.line,
            r.data,
            "ok"
            if r.error is None
            else "large"
            if r.error.startswith("record is larger")
            else "bad",
        )
        for r in records
    ]
    assert got == expected


def test_token_budget_batches_run_short_records_wide_and_long_ones_narrow() -> None:
    """``cut_batches`` with a token budget: each batch's padded size (records x its longest)
    within the budget, short records in wide batches, long ones in narrow ones, one over the
    budget alone; every record once; with no budget, fixed batches of ``batch_size``."""
    from types import SimpleNamespace

    from barge.specs import EmbedParams
    from worker.runners.records import cut_batches

    params = EmbedParams()
    lengths = [5, 300, 12, 8, 90, 7, 1000, 6, 95, 10, 11, 9]
    todo: list[Any] = [
        SimpleNamespace(at=i, text="x" * (len(lengths) - i), params=params)
        for i in range(len(lengths))
    ]
    batches = list(cut_batches(todo, 4, 200, lengths))
    sizes = [[lengths[t.at] for t in b] for b in batches]
    assert sizes == [[5, 6, 7, 8, 9, 10, 11, 12], [90, 95], [300], [1000]]
    assert all(len(b) * max(s) <= 200 for b, s in zip(batches, sizes, strict=True) if len(b) > 1)
    assert sorted(t.at for b in batches for t in b) == list(range(len(lengths)))
    fixed = list(cut_batches(todo, 4, 0, lengths))
    assert [len(b) for b in fixed] == [4, 4, 4]


class TestManyObjects:
    """Planning a prefix of many small objects with a bounded pool of concurrent reads."""

    def test_same_ranges_in_the_same_order_as_one_at_a_time(self, store: LocalStore) -> None:
        objects = []
        for i in range(60):
            lines = [json.dumps({"id": f"{i}-{j}"}) for j in range(i % 4)] + [""] * (i % 2)
            objects.append((put(store, f"in/{i:03d}.jsonl", "\n".join(lines).encode()), JSONL))
        gz = put(store, "in/z.jsonl.gz", gzip.compress(jsonl_bytes(JSONL_LINES)))
        objects.append((gz, JSONL_GZ))
        one_by_one = [plan_ranges(store, info, fmt, 2) for info, fmt in objects]
        pooled = list(plan_objects_ranges(store, objects, 2, threads=8))
        assert pooled == one_by_one
        assert [n for _, n in pooled][:5] == [0, 1, 2, 3, 0]

    def test_the_first_unreadable_object_in_order_is_the_error(self, store: LocalStore) -> None:
        objects = [(put(store, f"in/{i:02d}.jsonl", b'{"a": 1}\n'), JSONL) for i in range(20)]
        for i in (7, 13):
            bad = put(store, f"in/{i:02d}x.jsonl.gz", b"\x1f\x8bnot gzip")
            objects[i] = (bad, JSONL_GZ)
        planned = plan_objects_ranges(store, objects, 5, threads=4)
        taken = [next(planned) for _ in range(7)]
        assert [n for _, n in taken] == [1] * 7
        with pytest.raises(PermanentJobError, match=r"invalid gzip data in s3://bucket/in/07x"):
            next(planned)

    def test_in_order_keeps_order_and_at_most_ahead_pending(self) -> None:
        started: list[int] = []
        lock = threading.Lock()

        def work(i: int) -> int:
            with lock:
                started.append(i)
            time.sleep(0.001 * (i % 3))  # later items often finish first
            return i * i

        with ThreadPoolExecutor(4) as pool:
            out = in_order(pool, work, range(50), 6)
            first = next(out)
            # nothing past the first 6 was submitted before the consumer took one
            assert first == 0 and max(started) < 6
            assert [first, *out] == [i * i for i in range(50)]

    def test_in_order_cancels_what_has_not_started_when_closed(self) -> None:
        ran: list[int] = []
        release = threading.Event()

        def work(i: int) -> int:
            if i:
                release.wait(5)
            ran.append(i)
            return i

        with ThreadPoolExecutor(1) as pool:
            out = in_order(pool, work, range(100), 10)
            assert next(out) == 0
            out.close()  # 2-9 (and 1, unless it started) are pending, and cancelled
            release.set()
        assert ran in ([0], [0, 1])
