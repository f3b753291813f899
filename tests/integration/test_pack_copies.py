"""Barge's copy of a pack's small objects, against the moto S3 server: planning keeps what it
read of each small object (to count its records) and PUTs a pack's as one copy object beside
the listing; the packed shard reads them from it with one GET instead of one per object, the
same records as reading the objects; an object overwritten or deleted after planning reads as
planned; an edited copy fails the shard naming it as Barge's copy; objects past the limit
(``BARGE_PACK_COPY_BYTES``) and Parquet objects are read from their own URI."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from barge.errors import ListingChanged, PermanentJobError
from barge.records import Range, Record, format_of, packs, plan_objects_read
from barge.storage import ObjectInfo, S3Store, S3Uri


@pytest.fixture
def store(settings: Any) -> S3Store:
    return S3Store(settings)


def _objects(s3: Any, bucket: str, n: int) -> None:
    for i in range(n):
        lines = [json.dumps({"id": f"{i}-{j}", "text": f"t{j}"}) for j in range(3)]
        if i == 4:
            lines.append("{not json")
        body = ("\n".join(lines) + "\n").encode()
        if i == 7:
            s3.put_object(Bucket=bucket, Key=f"in/{i:03d}.jsonl.gz", Body=gzip.compress(body))
        else:
            s3.put_object(Bucket=bucket, Key=f"in/{i:03d}.jsonl", Body=body)
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["p0", "p1"]}), buf)
    s3.put_object(Bucket=bucket, Key="in/010p.parquet", Body=buf.getvalue())
    s3.put_object(Bucket=bucket, Key="in/020c.csv", Body=b"id,text\nc0,a\nc1,b\n")


def _plan(store: S3Store, bucket: str, copy_bytes: int) -> tuple[S3Uri, str, list[packs.Pack]]:
    """Plan the prefix as the planner does (``worker.kinds.records``): count each object
    (keeping the small ones' bytes), group them into packs of at most 20 records, copy each
    pack's kept objects, write the listing."""
    infos = store.list(S3Uri(bucket, "in/"))
    objects = [(info, format_of(info.uri, "auto")) for info in infos]
    planned = plan_objects_read(store, objects, 20, threads=4, keep_bytes=copy_bytes)
    counted = (
        ((info, fmt, ranges, body), n)
        for (info, fmt), (ranges, n, body) in zip(objects, planned, strict=True)
    )
    listing = packs.ListingWriter(f"s3://{bucket}/out/")
    made = []
    for members in packs.group(counted, 20, 1000):
        if len(members) == 1:
            continue  # planned on its own
        entries = [packs.entry_of(i, f, r[0]) for (i, f, r, _), _ in members]
        bodies = [body for (_, _, _, body), _ in members]
        made.append(listing.add(listing.copy(store, entries, bodies, copy_bytes)))
    written = listing.close(store)
    assert written is not None
    return listing.uri, written.etag, made


def _read(store: S3Store, uri: S3Uri, etag: str, made: list[packs.Pack]) -> list[Record]:
    out = []
    for p in made:
        rng = Range(p.first_entry, p.records, p.first_entry + 1, p.byte_start, p.byte_end)
        out += list(packs.iter_pack(store, uri, rng, threads=4, etag=etag))
    return out


def _gets(store: S3Store) -> list[str]:
    """The keys of the GETs ``store`` sends from now on (boto3's own event hook)."""
    seen: list[str] = []
    store.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: seen.append(params["url_path"])
    )
    return seen


def _seen(records: list[Record]) -> list[tuple[str | None, int, Any]]:
    return [(r.source, r.line, r.data) for r in records]


def test_a_packs_objects_are_read_from_its_copy_with_one_get_as_the_objects_read(
    store: S3Store, s3: Any, bucket: str
) -> None:
    _objects(s3, bucket, 30)
    plain_uri, plain_etag, plain = _plan(store, bucket, 0)
    uri, etag, made = _plan(store, bucket, 64 << 20)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/_inputs/")["Contents"]]
    assert sorted(k for k in keys if k.endswith(".data")) == [
        uri.key.removesuffix(".jsonl") + f"-{i}.data" for i in range(len(made))
    ]
    assert len(made) == len(plain) > 1 and sum(p.objects for p in made) == 32

    gets = _gets(store)
    expected = _read(store, plain_uri, plain_etag, plain)
    assert len(gets) == 32 + len(made)  # each object, and each pack's range of its listing
    del gets[:]
    copied = _read(store, uri, etag, made)
    # each pack: its listing range, its copy, and the Parquet object (not copied: its footer)
    parquet = [g for g in gets if g.endswith("010p.parquet")]
    assert len(gets) - len(parquet) == 2 * len(made) and parquet
    assert _seen(copied) == _seen(expected)
    assert len(expected) == 30 * 3 + 1 + 2 + 2
    assert ("s3://" + bucket + "/in/004.jsonl", 4, None) in _seen(copied)  # its bad line


def test_objects_overwritten_or_deleted_after_planning_read_as_planned_from_the_copy(
    store: S3Store, s3: Any, bucket: str
) -> None:
    _objects(s3, bucket, 10)
    uri, etag, made = _plan(store, bucket, 64 << 20)
    before = _read(store, uri, etag, made)
    s3.put_object(Bucket=bucket, Key="in/002.jsonl", Body=b'{"id": "rewritten"}\n')
    s3.delete_object(Bucket=bucket, Key="in/005.jsonl")
    assert _seen(_read(store, uri, etag, made)) == _seen(before)
    two = [r.data for r in before if r.source and r.source.endswith("002.jsonl")]
    assert [d and d["id"] for d in two] == ["2-0", "2-1", "2-2"]


def test_an_edited_copy_fails_its_shard_naming_it_as_barges_copy(
    store: S3Store, s3: Any, bucket: str
) -> None:
    _objects(s3, bucket, 10)
    uri, etag, made = _plan(store, bucket, 64 << 20)
    key = uri.key.removesuffix(".jsonl") + "-0.data"
    then = str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"id": "injected"}\n' * 100)
    with pytest.raises(ListingChanged) as caught:
        _read(store, uri, etag, made)
    message = caught.value.message
    assert f"s3://{bucket}/{key} is Barge's copy of the job's inputs" in message
    assert then in message and "resubmit" in message


def test_objects_past_the_limit_are_read_from_their_own_uri(
    store: S3Store, s3: Any, bucket: str
) -> None:
    _objects(s3, bucket, 30)
    plain_uri, plain_etag, plain = _plan(store, bucket, 0)
    expected = _read(store, plain_uri, plain_etag, plain)
    size = store.head(S3Uri(bucket, "in/000.jsonl"))
    assert isinstance(size, ObjectInfo)
    limit = size.size * 2  # two objects of each pack at most
    uri, etag, made = _plan(store, bucket, limit)
    gets = _gets(store)
    assert _seen(_read(store, uri, etag, made)) == _seen(expected)
    copies = [g for g in gets if g.endswith(".data")]
    assert len(copies) == len(made)
    own = [g for g in gets if "/in/" in g]
    assert len(own) >= 32 - 2 * len(made)  # the rest, each from its own URI


def test_a_listing_naming_a_copy_that_is_not_barges_is_refused(
    store: S3Store, s3: Any, bucket: str
) -> None:
    """A listing read without a condition (planned before listings' ETags were kept) cannot
    make a shard read any object as a copy: a copy lies beside its listing, or nothing of the
    pack is read (the tenant's read scopes check only the objects an entry names)."""
    _objects(s3, bucket, 10)
    uri, _, made = _plan(store, bucket, 64 << 20)
    body = s3.get_object(Bucket=bucket, Key=uri.key)["Body"].read()
    copy = uri.key.removesuffix(".jsonl") + "-0.data"
    secret = "secret/" + "x" * (len(copy) - len("secret/"))  # as long: the ranges still hold
    s3.put_object(Bucket=bucket, Key=secret, Body=b"x" * 100_000)
    edited = body.replace(f"s3://{bucket}/{copy}".encode(), f"s3://{bucket}/{secret}".encode())
    s3.put_object(Bucket=bucket, Key=uri.key, Body=edited)
    with pytest.raises(PermanentJobError, match="is not Barge's copy beside it"):
        _read(store, uri, "", made)
