"""barge.records against a real LocalStore: formats, range planning, streaming, record errors."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barge.errors import InvalidSpec, PermanentJobError
from barge.records import (
    Format,
    Range,
    Record,
    detect_format,
    is_data_object,
    iter_range,
    peek_fields,
    plan_ranges,
    resolve_inputs,
)
from barge.storage import LocalStore, ObjectInfo, S3Uri

JSONL = Format("jsonl", False)
JSONL_GZ = Format("jsonl", True)
CSV = Format("csv", False)
PARQUET = Format("parquet", False)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def put(store: LocalStore, key: str, data: bytes) -> ObjectInfo:
    uri = S3Uri("bucket", key)
    store.put_bytes(uri, data)
    info = store.head(uri)
    assert info is not None
    return info


def read_all(
    store: LocalStore, info: ObjectInfo, fmt: Format, shard_records: int
) -> tuple[list[Range], list[Record]]:
    """Plan the object, then read every range; checks the counts agree."""
    ranges, total = plan_ranges(store, info, fmt, shard_records)
    records = [rec for rng in ranges for rec in iter_range(store, info, fmt, rng)]
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

    def test_not_parquet_is_a_permanent_error(self, store: LocalStore) -> None:
        info = put(store, "in/fake.parquet", b'{"text": "x"}\n')
        with pytest.raises(PermanentJobError, match=r"s3://bucket/in/fake\.parquet"):
            plan_ranges(store, info, PARQUET, 10)


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
