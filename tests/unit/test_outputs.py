"""Record ids as the outputs write them, and the Parquet part's schema (one id type per part)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.shard import ROW_GROUP_ROWS, JsonlPart, ParquetPart, coerce_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("r1", "r1"),
        ("", ""),
        (7, 7),
        (-(2**70), -(2**70)),
        (2.5, 2.5),
        (datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), "2024-05-06T07:08:09.123456+00:00"),
        (datetime(2024, 5, 6, 7, 8, 9), "2024-05-06T07:08:09"),
        (date(2024, 5, 6), "2024-05-06"),
        (time(7, 8, 9), "07:08:09"),
        (b"caf\xc3\xa9", "café"),
        (bytearray(b"ab"), "ab"),
        (Decimal("12.50"), "12.50"),
    ],
)
def test_an_id_is_kept_or_written_as_text(value: object, expected: object) -> None:
    coerced, problem = coerce_id(value)
    assert problem is None
    assert coerced == expected
    assert type(coerced) is type(expected)
    json.dumps(coerced)  # always JSON-safe


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "id must be a string or a number, got null"),
        (True, "id must be a string or a number, got a boolean (true)"),
        ([3], "id must be a string or a number, got list"),
        ({"a": 1}, "id must be a string or a number, got dict"),
        (float("nan"), "id must be a string or a finite number, got nan"),
        (float("inf"), "id must be a string or a finite number, got inf"),
        (Decimal("NaN"), "id must be a string or a finite number, got Decimal 'NaN'"),
        (b"\xff\xfe", "id is bytes that are not UTF-8 text (invalid start byte at byte 0)"),
    ],
)
def test_an_id_that_cannot_be_written_is_refused_with_a_reason(value: object, message: str) -> None:
    assert coerce_id(value) == (None, message)


def _write(tmp_path: Path, *batches: list[dict[str, Any]]) -> pa.Table:
    part = ParquetPart(tmp_path / "part")
    for rows in batches:
        part.write_rows(rows)
    part.close()
    assert part.count == sum(len(rows) for rows in batches)
    assert [p.name for p in tmp_path.iterdir()] == ["part"]  # the spool is gone
    return pq.read_table(tmp_path / "part")


def _embed(rec_id: object, i: int) -> dict[str, Any]:
    return {"id": rec_id, "embedding": [float(i), 0.5]}


def test_a_part_of_integer_ids_has_an_int64_id_column(tmp_path: Path) -> None:
    table = _write(tmp_path, [_embed(i, i) for i in range(3)], [_embed(2**62, 3)])
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert table.column_names == ["id", "embedding"]
    assert table.column("id").to_pylist() == [0, 1, 2, 2**62]
    assert table.column("embedding").to_pylist()[3] == [3.0, 0.5]


@pytest.mark.parametrize(
    ("ids", "texts"),
    [
        ([1, "two", 2.5], ["1", "two", "2.5"]),
        ([1, 2.0], ["1", "2.0"]),  # a float is not an integer
        ([1, 2**63], ["1", str(2**63)]),  # beyond int64
        (["a", "b"], ["a", "b"]),
    ],
)
def test_a_part_with_any_other_id_has_a_string_id_column(
    tmp_path: Path, ids: list[object], texts: list[str]
) -> None:
    # the first batch is all integers: the type is decided when the part closes
    table = _write(tmp_path, [_embed(ids[0], 0)], [_embed(i, n + 1) for n, i in enumerate(ids[1:])])
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == texts


def test_classify_and_generate_columns_keep_their_types(tmp_path: Path) -> None:
    rows = [
        {"id": i, "label": "pos", "score": 0.75, "scores": {"neg": 0.25, "pos": 0.75}}
        for i in range(4)
    ]
    (tmp_path / "clf").mkdir()
    table = _write(tmp_path / "clf", rows[:2], rows[2:])
    assert table.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("scores", pa.map_(pa.string(), pa.float64())),
        ]
    )
    assert [{**r, "scores": dict(r["scores"])} for r in table.to_pylist()] == rows
    (tmp_path / "gen").mkdir()
    gen = _write(tmp_path / "gen", [{"id": "a", "text": "out"}])
    assert gen.schema == pa.schema([("id", pa.string()), ("text", pa.string())])


def test_small_batches_are_gathered_and_large_ones_split_into_bounded_row_groups(
    tmp_path: Path,
) -> None:
    small = [[_embed(f"s{b}-{i}", i) for i in range(16)] for b in range(100)]  # batch_size 1
    (tmp_path / "small").mkdir()
    _write(tmp_path / "small", *small)
    meta = pq.ParquetFile(tmp_path / "small" / "part").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [1600]

    big = [[_embed(b * 5000 + i, i) for i in range(5000)] for b in range(3)]
    (tmp_path / "big").mkdir()
    table = _write(tmp_path / "big", *big)
    assert table.column("id").to_pylist() == list(range(15000))  # in order, once
    meta = pq.ParquetFile(tmp_path / "big" / "part").metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert sum(sizes) == 15000
    assert max(sizes) <= ROW_GROUP_ROWS


def test_an_empty_part_is_a_readable_file(tmp_path: Path) -> None:
    table = _write(tmp_path)
    assert table.num_rows == 0
    assert table.schema == pa.schema([("id", pa.string())])
    (tmp_path / "again").mkdir()
    assert _write(tmp_path / "again", [], []).num_rows == 0  # write_rows([]) is no row


def test_a_jsonl_part_writes_the_id_as_it_is(tmp_path: Path) -> None:
    part = JsonlPart(tmp_path / "part")
    part.write_rows([{"id": 1, "text": "é"}, {"id": "two", "text": "x"}, {"id": 2.5, "text": "y"}])
    part.close()
    lines = (tmp_path / "part").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [1, "two", 2.5]
    assert part.count == 3


def _columns(n: int) -> tuple[Any, dict[str, Any]]:
    rng = np.random.default_rng(3)
    return pa.array(range(7, 7 + n), pa.int64()), {
        "value": rng.normal(size=n),
        "embedding": rng.normal(size=(n, 5)).astype(np.float32),
    }


def _rows_of(ids: Any, columns: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": i, "value": v, "embedding": e}
        for i, v, e in zip(
            ids.to_pylist(),
            columns["value"].tolist(),
            columns["embedding"].tolist(),
            strict=True,
        )
    ]


def test_columns_write_the_same_jsonl_lines_as_their_rows(tmp_path: Path) -> None:
    ids, columns = _columns(50)
    by_rows, by_columns = JsonlPart(tmp_path / "rows"), JsonlPart(tmp_path / "columns")
    by_rows.write_rows(_rows_of(ids, columns))
    by_columns.write_columns(ids[:20], {k: v[:20] for k, v in columns.items()})
    by_columns.write_columns(ids[20:], {k: v[20:] for k, v in columns.items()})
    by_columns.write_columns(ids[:0], {k: v[:0] for k, v in columns.items()})
    for part in (by_rows, by_columns):
        part.close()
    assert by_columns.count == 50
    lines = (tmp_path / "columns").read_text().splitlines()
    assert lines == (tmp_path / "rows").read_text().splitlines()
    scores = pa.MapArray.from_arrays([0, 2], pa.array(["a", "b"]), pa.array([0.25, 0.75]))
    mapped = JsonlPart(tmp_path / "map")
    mapped.write_columns(pa.array([1]), {"label": pa.array(["b"]), "scores": scores})
    mapped.close()
    assert (tmp_path / "map").read_text().splitlines() == [
        '{"id": 1, "label": "b", "scores": {"a": 0.25, "b": 0.75}}'
    ]
    text = JsonlPart(tmp_path / "text")
    text.write_columns(pa.array(["a", 'q"é']), {"value": pa.array([float("nan"), 1e300])})
    text.close()
    assert (tmp_path / "text").read_text(encoding="utf-8").splitlines() == [
        '{"id": "a", "value": NaN}',
        '{"id": "q\\"é", "value": 1e+300}',
    ]


def test_columns_write_the_same_parquet_table_as_their_rows(tmp_path: Path) -> None:
    ids, columns = _columns(30)
    (tmp_path / "rows").mkdir()
    by_rows = _write(tmp_path / "rows", _rows_of(ids, columns))
    part = ParquetPart(tmp_path / "part")
    part.write_columns(ids[:10], {k: v[:10] for k, v in columns.items()})
    part.write_columns(ids[10:], {k: v[10:] for k, v in columns.items()})
    part.close()
    table = pq.read_table(tmp_path / "part")
    assert (
        table.schema
        == by_rows.schema
        == pa.schema(
            [("id", pa.int64()), ("value", pa.float64()), ("embedding", pa.list_(pa.float32(), 5))]
        )
    )
    assert table.equals(by_rows)
    text_ids = ParquetPart(tmp_path / "text")
    text_ids.write_columns(pa.array(["x", "y"]), {"value": np.asarray([1.5, 2.5])})
    text_ids.close()
    assert pq.read_table(tmp_path / "text").to_pylist() == [
        {"id": "x", "value": 1.5},
        {"id": "y", "value": 2.5},
    ]
