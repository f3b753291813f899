"""Reads of an input object conditional on the ETag planning found (``If-Match``), against the
moto S3 server: the planned object reads as before, whole or by range; an object overwritten
since is ``ObjectChanged`` naming it and both ETags, for a whole read, a byte range, a gzip
stream and a Parquet object's ranged GETs (``test_parquet_gets`` for one changed between
its footer and its rows); a deleted one is ``NotFound``; no ETag, no condition."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from barge.errors import NotFound, ObjectChanged, PermanentJobError
from barge.records import Format, Range, iter_range
from barge.storage import SINGLE_PUT_BYTES, ObjectInfo, S3Store, S3Uri


@pytest.fixture
def store(settings: Any) -> S3Store:
    return S3Store(settings)


def _etag(s3: Any, bucket: str, key: str) -> str:
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def _parquet(rows: int, offset: int = 0) -> bytes:
    buf = io.BytesIO()
    table = pa.table({"id": list(range(offset, offset + rows)), "text": ["x"] * rows})
    pq.write_table(table, buf, row_group_size=10)
    return buf.getvalue()


class TestConditionalOpen:
    def test_the_planned_object_reads_whole_and_by_range(
        self, store: S3Store, s3: Any, bucket: str
    ) -> None:
        s3.put_object(Bucket=bucket, Key="k.jsonl", Body=b"0123456789")
        uri, etag = S3Uri(bucket, "k.jsonl"), _etag(s3, bucket, "k.jsonl")
        assert store.head(uri) == ObjectInfo(uri, 10, etag)
        with store.open(uri, if_match=etag) as f:
            assert f.read() == b"0123456789"
        with store.open(uri, 2, 5, if_match=etag) as f:
            assert f.read() == b"234"
        with store.open(uri, 7, if_match=etag) as f:
            assert f.read() == b"789"

    def test_an_overwritten_object_is_refused_naming_it_and_both_etags(
        self, store: S3Store, s3: Any, bucket: str
    ) -> None:
        s3.put_object(Bucket=bucket, Key="k.jsonl", Body=b"planned\n")
        uri, then = S3Uri(bucket, "k.jsonl"), _etag(s3, bucket, "k.jsonl")
        s3.put_object(Bucket=bucket, Key="k.jsonl", Body=b"written since\n")
        now = _etag(s3, bucket, "k.jsonl")
        assert now != then
        for start, end in ((0, None), (0, 4), (3, None)):
            with pytest.raises(ObjectChanged) as caught:
                store.open(uri, start, end, if_match=then)
            err = caught.value
            assert (err.uri, err.expected, err.current) == (str(uri), then, now)
            assert err.message == (
                f'input object s3://{bucket}/k.jsonl changed after the job was planned (ETag "{then}" '
                f'then, "{now}" now); resubmit the job to read its new contents'
            )
            assert isinstance(err, PermanentJobError)  # the shard fails, no retry
        with store.open(uri, if_match=now) as f:  # the new ETag reads the new object
            assert f.read() == b"written since\n"
        with store.open(uri) as f:  # no ETag known (a shard planned before): no condition
            assert f.read() == b"written since\n"

    def test_a_put_returns_the_etag_a_read_is_then_conditional_on(
        self, store: S3Store, s3: Any, bucket: str, tmp_path: Path
    ) -> None:
        """One PutObject (its response's ETag) and a multipart upload (a HEAD's after it)."""
        uri = S3Uri(bucket, "out/_inputs/pack-1.jsonl")
        small = tmp_path / "small.jsonl"
        small.write_bytes(b"planned\n")
        large = tmp_path / "large.jsonl"
        large.write_bytes(b"x" * (SINGLE_PUT_BYTES + 1))
        for put in (
            lambda: store.put_bytes(uri, b"planned\n"),
            lambda: store.put_file(uri, small),
            lambda: store.put_file(uri, large),
        ):
            etag = put()
            assert etag == _etag(s3, bucket, uri.key)
            with store.open(uri, 0, 7, if_match=etag) as f:
                assert f.read() in (b"planned", b"x" * 7)

    def test_a_deleted_object_is_not_found(self, store: S3Store, s3: Any, bucket: str) -> None:
        s3.put_object(Bucket=bucket, Key="k.jsonl", Body=b"x\n")
        etag = _etag(s3, bucket, "k.jsonl")
        s3.delete_object(Bucket=bucket, Key="k.jsonl")
        with pytest.raises(NotFound):
            store.open(S3Uri(bucket, "k.jsonl"), if_match=etag)


class TestConditionalRecords:
    """``iter_range`` reads every format on condition of ``info.etag``."""

    @pytest.mark.parametrize(
        ("key", "fmt", "body", "rng"),
        [
            ("a.jsonl", Format("jsonl", False), b'{"t": 1}\n{"t": 2}\n', Range(1, 1, 2, 9, 18)),
            (
                "a.jsonl.gz",
                Format("jsonl", True),
                gzip.compress(b'{"t": 1}\n', mtime=0),
                Range(0, 1, 1),
            ),
            ("a.csv", Format("csv", False), b"t\n1\n2\n", Range(0, 2, 2)),
            ("a.parquet", Format("parquet", False), _parquet(50), Range(20, 10, 21)),
        ],
        # named, not from the bodies: a gzip header holds the time it was made, and two test
        # processes collecting a second apart would see different tests
        ids=["jsonl", "jsonl-gzip", "csv", "parquet"],
    )
    def test_each_format_reads_as_planned_and_refuses_a_changed_object(
        self, store: S3Store, s3: Any, bucket: str, key: str, fmt: Format, body: bytes, rng: Range
    ) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        uri, then = S3Uri(bucket, key), _etag(s3, bucket, key)
        info = ObjectInfo(uri, len(body), then)  # as planning recorded it: no HEAD
        records = list(iter_range(store, info, fmt, rng))
        assert len(records) == rng.record_count and all(r.data for r in records)
        changed = _parquet(50, 1000) if fmt.name == "parquet" else body + body
        s3.put_object(Bucket=bucket, Key=key, Body=changed)
        with pytest.raises(ObjectChanged, match=rf"input object s3://{bucket}/{key} changed"):
            list(iter_range(store, ObjectInfo(uri, len(body), then), fmt, rng))
