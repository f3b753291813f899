"""Record ids of any type and over-long texts never fail a job: an id is written as it is or as
text (dates, bytes), one that cannot be written is a per-record error, and every input record
appears exactly once, in a part or in the errors."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import inference_spec, manifest, put_jsonl, read_jsonl, read_parquet, wait_job

pytestmark = pytest.mark.e2e

# line → id; lines 1-7 are shard 0 (shard_size 7), lines 8-10 shard 1
IDS: list[Any] = [1, "two", [3], None, True, 2.5, {"a": 1}, 10, 11, 12]
INVALID = {
    3: "id must be a string or a number, got list (id_field 'id')",
    4: "id must be a string or a number, got null (id_field 'id')",
    5: "id must be a string or a number, got a boolean (true) (id_field 'id')",
    7: "id must be a string or a number, got dict (id_field 'id')",
}


def _run(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, model: str, data: str, **extra: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Run a job to its end: (manifest, error rows, rows of each part)."""
    spec = inference_spec(model, data, f"s3://{bucket}/out/", max_failed_ratio=0.9, **extra)
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    m = manifest(s3, bucket, "out")
    read = read_parquet if extra.get("output_format") == "parquet" else read_jsonl
    parts = [read(s3, bucket, p["key"]) for p in m["parts"]]
    errors = [e for p in m["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert m["records"]["succeeded"] == sum(map(len, parts))
    assert m["records"]["failed"] == len(errors)
    return m, errors, parts


def _parquet_part_schema(s3: Any, bucket: str, key: str) -> pa.Schema:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_schema(io.BytesIO(body))


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_jsonl_ids_of_every_json_type(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    output_format: str,
) -> None:
    rows = [{"id": rec_id, "text": f"record on line {n}"} for n, rec_id in enumerate(IDS, 1)]
    data = put_jsonl(s3, bucket, "in/ids.jsonl", rows)
    m, errors, parts = _run(
        api,
        auth,
        s3,
        bucket,
        minilm_uri,
        data,
        id_field="id",
        shard_size=7,
        output_format=output_format,
    )
    assert [{e["line"]: e["error"]} for e in errors] == [{k: v} for k, v in INVALID.items()]
    assert all(e["id"] is None and e["source"] == data for e in errors)
    ids = [[row["id"] for row in part] for part in parts]
    if output_format == "jsonl":
        assert ids == [[1, "two", 2.5], [10, 11, 12]]  # as they are
    else:
        # one id type per part: int64 when every id is an integer, else string
        assert ids == [["1", "two", "2.5"], [10, 11, 12]]
        types = [_parquet_part_schema(s3, bucket, p["key"]).field("id").type for p in m["parts"]]
        assert types == [pa.string(), pa.int64()]
        assert all(len(row["embedding"]) == 384 for part in parts for row in part)
    # every input record exactly once, in a part or in the errors
    assert sum(map(len, parts)) + len(errors) == len(IDS)
    assert sorted(e["line"] for e in errors) == sorted(INVALID)


def _put_parquet(s3: Any, bucket: str, key: str, table: pa.Table) -> str:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def test_parquet_bytes_ids_are_written_as_utf8_text(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    table = pa.table(
        {
            "id": pa.array([b"a1", "café".encode(), b"\xff\xfe", b"z"], pa.binary()),
            "text": ["first", "second", "third", "fourth"],
        }
    )
    data = _put_parquet(s3, bucket, "in/bytes.parquet", table)
    m, errors, parts = _run(
        api, auth, s3, bucket, minilm_uri, data, id_field="id", output_format="parquet"
    )
    assert [row["id"] for part in parts for row in part] == ["a1", "café", "z"]
    assert _parquet_part_schema(s3, bucket, m["parts"][0]["key"]).field("id").type == pa.string()
    assert errors == [
        {
            "id": None,
            "source": data,
            "line": 3,
            "error": "id is bytes that are not UTF-8 text (invalid start byte at byte 0) "
            "(id_field 'id')",
        }
    ]


def test_parquet_timestamp_and_date_ids_are_written_as_iso_8601(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    stamps = [datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), datetime(2025, 12, 31, 23, 59)]
    table = pa.table(
        {
            "at": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
            "naive": pa.array([s.replace(tzinfo=None) for s in stamps], pa.timestamp("us")),
            "day": pa.array([date(2024, 1, 2), date(2025, 12, 31)], pa.date32()),
            "text": ["first", "second"],
        }
    )
    data = _put_parquet(s3, bucket, "in/stamps.parquet", table)
    expected = {
        "at": ["2024-01-02T03:04:05.678000+00:00", "2025-12-31T23:59:00+00:00"],
        "naive": ["2024-01-02T03:04:05.678000", "2025-12-31T23:59:00"],
        "day": ["2024-01-02", "2025-12-31"],
    }
    for n, (field, ids) in enumerate(expected.items()):
        out = f"s3://{bucket}/out-{n}/"
        spec = inference_spec(minilm_uri, data, out, id_field=field)
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        job = wait_job(api, auth, r.json()["id"])
        assert job["status"] == "succeeded", job
        m = manifest(s3, bucket, f"out-{n}")
        assert m["records"]["failed"] == 0
        assert [row["id"] for p in m["parts"] for row in read_jsonl(s3, bucket, p["key"])] == ids


def test_a_text_over_the_limit_is_a_per_record_error(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    settings: Any,
) -> None:
    # The shared worker has this run's settings: the default BARGE_MAX_TEXT_CHARS, 1,000,000.
    limit = settings.max_text_chars
    rows = [
        {"id": "a", "text": "short"},
        {"id": "b", "text": "x" * (limit + 1)},
        {"id": "c", "text": "also short"},
    ]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3.put_object(Bucket=bucket, Key="in/long.jsonl", Body=body)
    data = f"s3://{bucket}/in/long.jsonl"
    _m, errors, parts = _run(api, auth, s3, bucket, minilm_uri, data, id_field="id")
    assert [row["id"] for part in parts for row in part] == ["a", "c"]
    assert errors == [
        {
            "id": "b",
            "source": data,
            "line": 2,
            "error": f"field 'text' has {limit + 1} characters, more than the limit of {limit} "
            "(BARGE_MAX_TEXT_CHARS)",
        }
    ]
