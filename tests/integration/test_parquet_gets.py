"""The GETs a shard makes to read its rows of a Parquet object, against the moto S3 server,
counted by a hook on the boto3 client's events (what goes over the wire): the footer with the
object's tail in one GET (none when this process read it already), then the shard's row
groups as one streaming GET however many row groups it spans; the rows exactly those planned
for shards that start and end mid-object; a stream broken mid-body resumed where it broke
(no row lost or read twice); an object changed before the rows are read, or before a resumed
GET, is ``ObjectChanged``."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ResponseStreamingError

from barge.errors import ObjectChanged
from barge.records import Format, Limits, Range, iter_range
from barge.records.parquet import TAIL_BYTES, row_batches
from barge.storage import ObjectInfo, S3Store, S3Uri

ROWS, GROUP = 240_000, 20_000  # 12 row groups of about 2.6 MB: 31 MB in all


@pytest.fixture(scope="module")
def body() -> bytes:
    rng = np.random.default_rng(0)
    columns = {"id": pa.array(np.arange(ROWS))}
    columns.update({f"f{j}": pa.array(rng.normal(size=ROWS)) for j in range(16)})
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=GROUP, compression="none")
    return buf.getvalue()


@pytest.fixture
def store(settings: Any) -> S3Store:
    return S3Store(settings)  # a client of its own: the hooks below stay on it


@pytest.fixture
def gets(store: S3Store) -> list[dict[str, Any]]:
    """The parameters of each GetObject the store's client sends."""
    sent: list[dict[str, Any]] = []
    store.client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: sent.append(dict(params))
    )
    return sent


@pytest.fixture
def planned(s3: Any, bucket: str, body: bytes) -> ObjectInfo:
    s3.put_object(Bucket=bucket, Key="big.parquet", Body=body)
    etag = str(s3.head_object(Bucket=bucket, Key="big.parquet")["ETag"]).strip('"')
    assert len(body) > 16 * TAIL_BYTES
    return ObjectInfo(S3Uri(bucket, "big.parquet"), len(body), etag)  # as planning keeps it


def _ids(store: S3Store, info: ObjectInfo, rng: Range) -> list[int]:
    limits = Limits(object_bytes=1 << 30, record_bytes=1 << 20)
    batches = row_batches(store, info, rng, limits, lambda b: b)
    return [i for _, b in batches for i in b.column("id").to_pylist()]


def _first_byte(body: bytes, rg: int) -> int:
    chunk = pq.ParquetFile(io.BytesIO(body)).metadata.row_group(rg).column(0)
    offsets = [chunk.data_page_offset, chunk.dictionary_page_offset or chunk.data_page_offset]
    return min(offsets)


def _start(params: dict[str, Any]) -> int:
    return int(params["Range"].removeprefix("bytes=").split("-")[0])


class TestShardGets:
    @pytest.mark.parametrize(
        ("start", "count"),
        [(0, ROWS), (30_001, 100_000), (ROWS - 10, 10), (GROUP, GROUP)],
    )
    def test_the_footer_then_one_get_for_the_row_groups(
        self,
        store: S3Store,
        gets: list[dict[str, Any]],
        planned: ObjectInfo,
        body: bytes,
        start: int,
        count: int,
    ) -> None:
        assert _ids(store, planned, Range(start, count, start + 1)) == list(
            range(start, start + count)
        )
        tail, rows = gets  # the footer (the object's last MiB), then the rows: one stream
        assert _start(tail) == planned.size - TAIL_BYTES
        assert _start(rows) == _first_byte(body, start // GROUP)  # none before the shard's
        assert all(g["IfMatch"] == f'"{planned.etag}"' for g in gets)
        gets.clear()  # the footer is known now: a second shard of the object reads rows only
        assert _ids(store, planned, Range(start, count, start + 1)) == list(
            range(start, start + count)
        )
        assert [_start(g) for g in gets] == [_start(rows)]

    def test_records_of_a_shard_mid_object(
        self, store: S3Store, gets: list[dict[str, Any]], planned: ObjectInfo
    ) -> None:
        rng = Range(GROUP * 3 + 7, GROUP * 5, GROUP * 3 + 8)
        records = list(iter_range(store, planned, Format("parquet", False), rng))
        assert [r.data["id"] for r in records] == list(range(rng.start_record, 8 * GROUP + 7))
        assert [r.line for r in records[:2]] == [rng.first_line, rng.first_line + 1]
        assert len(gets) <= 2


class _Breaking:
    """A GET's body that fails, as a reset connection does, after ``after`` bytes."""

    def __init__(self, body: Any, after: int):
        self._body = body
        self._left = after

    def read(self, amt: int | None = None) -> bytes:
        if self._left <= 0:
            raise ResponseStreamingError(error="Connection broken: reset by peer")
        data = self._body.read(min(amt or self._left, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._body.close()


def _break_get(store: S3Store, number: int, after: int, then: Any = None) -> None:
    """Make the ``number``-th GET's body (counting from 1) break after ``after`` bytes; then
    call ``then``."""
    seen = [0]

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        seen[0] += 1
        if seen[0] == number:
            parsed["Body"] = _Breaking(parsed["Body"], after)
            if then is not None:
                then()

    store.client.meta.events.register("after-call.s3.GetObject", hook)


class TestBrokenStreams:
    def test_a_broken_stream_resumes_where_it_broke(
        self, store: S3Store, gets: list[dict[str, Any]], planned: ObjectInfo
    ) -> None:
        _break_get(store, 2, after=int(2.5 * planned.size / (ROWS // GROUP)))
        assert _ids(store, planned, Range(0, ROWS, 1)) == list(range(ROWS))  # each row once
        _tail, rows, resumed = gets
        assert _start(rows) < _start(resumed) < planned.size
        assert resumed["IfMatch"] == f'"{planned.etag}"'

    def test_a_stream_breaking_again_and_again_fails(
        self, store: S3Store, planned: ObjectInfo
    ) -> None:
        _break_get(store, 2, after=1000)
        for number in range(3, 7):  # then each resumed GET breaks before its first byte
            _break_get(store, number, after=0)
        with pytest.raises(ResponseStreamingError):
            _ids(store, planned, Range(0, ROWS, 1))

    def test_an_object_changed_before_the_resumed_get(
        self, store: S3Store, s3: Any, planned: ObjectInfo, body: bytes
    ) -> None:
        def overwrite() -> None:
            s3.put_object(Bucket=planned.uri.bucket, Key=planned.uri.key, Body=body[:-8] + body)

        _break_get(store, 2, after=planned.size // 4, then=overwrite)
        with pytest.raises(ObjectChanged, match="changed after the job was planned"):
            _ids(store, planned, Range(0, ROWS, 1))


class TestChangedObjects:
    def test_changed_between_the_footer_and_the_rows(
        self, store: S3Store, s3: Any, planned: ObjectInfo, body: bytes
    ) -> None:
        """The footer's GET and the rows' GET are one object: one overwritten between them is
        refused, not read as a mix of two files."""

        def overwrite(**_: Any) -> None:
            s3.put_object(Bucket=planned.uri.bucket, Key=planned.uri.key, Body=body + b"x")

        calls: list[int] = []

        def before(**_: Any) -> None:
            calls.append(1)
            if len(calls) == 2:  # after the footer's GET, before the rows'
                overwrite()

        store.client.meta.events.register("before-call.s3.GetObject", before)
        with pytest.raises(ObjectChanged):
            _ids(store, planned, Range(0, ROWS, 1))

    def test_changed_after_its_footer_was_kept(
        self, store: S3Store, s3: Any, planned: ObjectInfo, body: bytes
    ) -> None:
        assert _ids(store, planned, Range(0, 10, 1)) == list(range(10))  # the footer is kept
        s3.put_object(Bucket=planned.uri.bucket, Key=planned.uri.key, Body=body + b"x")
        with pytest.raises(ObjectChanged):
            _ids(store, planned, Range(0, ROWS, 1))
