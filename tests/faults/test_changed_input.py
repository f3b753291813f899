"""An input object overwritten after its job was planned. Every GET a shard makes of its input
is conditional on the ETag planning recorded (``If-Match``): the shard that reads the changed
object fails at once (no retries), its job failing with a message that names the object and
both ETags and says to resubmit; what other shards wrote stays; a retry of the job is refused
(409), since the records it would read again are not the ones the job read.

The same holds for Barge's own listing of a packed job's inputs (``_inputs/pack-<run>.jsonl``,
under the job's output, where the tenant can write): its shards record the ETag and size its
PUT wrote, and a listing edited after planning fails them saying it is Barge's listing, edited.
So does the images listing (``_inputs/images-<run>.jsonl``) of a job over a prefix of images.
A pack's small objects planning kept (``_inputs/pack-<run>-<n>.data``, Barge's copy) are read
from that copy: overwritten or deleted after planning, they still read as planned.

Planning and running are kept apart: a worker of the control queue alone plans the job, the
object is overwritten, and only then is a worker that runs shards started."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.faults.conftest import World
from tests.helpers import inference_spec, put_jsonl, read_jsonl, upload_dir, wait_until
from tests.images import encode, random_rgb, tiny_vit
from tests.services import WorkerProcess

pytestmark = pytest.mark.faults


def _etag(s3: Any, bucket: str, key: str) -> str:
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def _rows(name: str, n: int, text: str = "planned") -> list[dict[str, Any]]:
    return [{"id": f"{name}-{i}", "text": f"{text} record {name} {i} " * 3} for i in range(n)]


def _planned(world: World, spec: dict[str, Any]) -> str:
    """Submit ``spec`` with only a control worker up; the job id once it is planned."""
    planner = WorkerProcess(world.env, world.tmp / "control.log", queues="control")
    world.workers.append(planner.start())  # plans; runs no shard
    job_id = world.submit(spec)
    wait_until(lambda: world.job(job_id)["status"] == "running", what="the job to be planned")
    return job_id


def _changed_message(bucket: str, key: str, then: str, now: str) -> str:
    return (
        f'input object s3://{bucket}/{key} changed after the job was planned (ETag "{then}" '
        f'then, "{now}" now); resubmit the job to read its new contents'
    )


def test_an_object_overwritten_after_planning_fails_its_shard_once_naming_it(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    put_jsonl(s3, bucket, "in/a.jsonl", _rows("a", 20))
    put_jsonl(s3, bucket, "in/b.jsonl", _rows("b", 10))
    spec = inference_spec(
        minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/", id_field="id", shard_size=10
    )
    job_id = _planned(world, spec)
    then = _etag(s3, bucket, "in/b.jsonl")
    assert [s.source_etag for s in world.shards(job_id)][2] == then
    put_jsonl(s3, bucket, "in/b.jsonl", _rows("b", 10, "rewritten"))  # as many records, as long
    now = _etag(s3, bucket, "in/b.jsonl")
    assert now != then

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "failed"
    assert _changed_message(bucket, "in/b.jsonl", then, now) in job["error"]
    a0, a1, b = world.shards(job_id)
    assert (b.status, b.attempt, b.output_key) == ("failed", 1, None), "retried, or wrote a part"
    # the shards of the unchanged object ran first and what they wrote stays
    assert (a0.status, a1.status) == ("succeeded", "succeeded")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/part-")["Contents"]]
    assert keys == ["out/part-00000.jsonl", "out/part-00001.jsonl"]

    r = world.api.post(f"/v1/jobs/{job_id}/retry", json={}, headers=world.auth)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "conflict"
    assert (
        f"input object s3://{bucket}/in/b.jsonl changed after the job was planned"
        in (body["message"])
    )
    assert f'(ETag "{then}" then, "{now}" now)' in body["message"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/retry-1")


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def test_one_object_of_a_pack_overwritten_after_planning_fails_its_packed_shard(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    """Twenty small objects packed ten to a shard; the fourteenth, a Parquet object (read
    with no HEAD: its footer from the listing's size), is overwritten."""
    for i in range(20):
        if i == 13:
            body = _parquet(_rows(f"o{i}", 5))
            s3.put_object(Bucket=bucket, Key=f"in/o-{i:02d}.parquet", Body=body)
        else:
            put_jsonl(s3, bucket, f"in/o-{i:02d}.jsonl", _rows(f"o{i}", 5))
    spec = inference_spec(
        minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/", id_field="id", shard_size=50
    )
    job_id = _planned(world, spec)
    assert [s.pack_objects for s in world.shards(job_id)] == [10, 10]
    key = "in/o-13.parquet"
    then = _etag(s3, bucket, key)
    s3.put_object(Bucket=bucket, Key=key, Body=_parquet(_rows("o13", 5, "rewritten")))
    now = _etag(s3, bucket, key)

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "failed"
    assert _changed_message(bucket, key, then, now) in job["error"]
    first, second = world.shards(job_id)
    assert first.status == "succeeded" and first.output_key == "out/part-00000.jsonl"
    assert (second.status, second.attempt, second.output_key) == ("failed", 1, None)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/part-")["Contents"]]
    assert keys == ["out/part-00000.jsonl"]

    r = world.api.post(f"/v1/jobs/{job_id}/retry", json={}, headers=world.auth)
    assert r.status_code == 409, r.text
    assert (
        f"input object s3://{bucket}/{key} changed after the job was planned"
        in (r.json()["message"])
    )


def test_small_objects_of_a_pack_changed_after_planning_are_read_from_barges_copy(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    """Twenty small JSONL objects packed ten to a shard: planning read each to count its
    records and kept the bytes, one copy per pack. One is overwritten, one deleted: each shard
    reads its pack's copy, so the job runs exactly the records it planned."""
    for i in range(20):
        put_jsonl(s3, bucket, f"in/o-{i:02d}.jsonl", _rows(f"o{i}", 5))
    spec = inference_spec(
        minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/", id_field="id", shard_size=50
    )
    job_id = _planned(world, spec)
    assert [s.pack_objects for s in world.shards(job_id)] == [10, 10]
    s3.put_object(Bucket=bucket, Key="in/o-03.jsonl", Body=b'{"id": "new", "text": "new"}\n')
    s3.delete_object(Bucket=bucket, Key="in/o-14.jsonl")

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job["error"]
    parts = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/part-")["Contents"]
    )
    ids = [row["id"] for key in parts for row in read_jsonl(s3, bucket, key)]
    assert ids == [f"o{i}-{j}" for i in range(20) for j in range(5)]
    copies = s3.list_objects_v2(Bucket=bucket, Prefix="out/_inputs/")["Contents"]
    assert len([o for o in copies if o["Key"].endswith(".data")]) == 2


def test_a_pack_listing_edited_after_planning_fails_its_shards_saying_so(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    """Twenty small objects packed ten to a shard; the listing, under the job's output, is
    rewritten with its first two entries swapped (as long as before: an unchecked read would
    run the second object's records as the first's)."""
    for i in range(20):
        put_jsonl(s3, bucket, f"in/o-{i:02d}.jsonl", _rows(f"o{i}", 5))
    spec = inference_spec(
        minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/", id_field="id", shard_size=50
    )
    job_id = _planned(world, spec)
    found = s3.list_objects_v2(Bucket=bucket, Prefix="out/_inputs/pack-")["Contents"]
    (found,) = [o for o in found if o["Key"].endswith(".jsonl")]  # not the packs' copies
    key = found["Key"]
    then = _etag(s3, bucket, key)
    shards = world.shards(job_id)
    assert [s.pack_objects for s in shards] == [10, 10]
    assert {(s.source_uri, s.source_etag, s.source_size) for s in shards} == {
        (f"s3://{bucket}/{key}", then, found["Size"])
    }
    lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines(keepends=True)
    edited = b"".join([lines[1], lines[0], *lines[2:]])
    assert len(edited) == found["Size"]
    s3.put_object(Bucket=bucket, Key=key, Body=edited)
    now = _etag(s3, bucket, key)
    assert now != then

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "failed"
    assert (
        f"s3://{bucket}/{key} is Barge's listing of the job's inputs, written when the job was "
        f'planned, and it was edited after planning (ETag "{then}" then, "{now}" now); Barge '
        "reads only the listing it wrote: resubmit the job"
    ) in job["error"]
    first = world.shards(job_id)[0]
    assert (first.status, first.attempt, first.output_key) == ("failed", 1, None)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/part-")

    r = world.api.post(f"/v1/jobs/{job_id}/retry", json={}, headers=world.auth)
    assert r.status_code == 409, r.text
    assert f"s3://{bucket}/{key} is Barge's listing of the job's inputs" in r.json()["message"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/retry-1")


def test_an_images_listing_edited_after_planning_fails_its_shard_saying_so(
    world: World, s3: Any, bucket: str
) -> None:
    """Four PNG objects planned as an images listing; the listing is rewritten, as long as
    before, naming the first image where the second was."""
    vit = upload_dir(s3, bucket, "tiny-vit", tiny_vit(world.tmp / "vit"))
    for i in range(4):
        body = encode(random_rgb(16, 16, i), "PNG")
        s3.put_object(Bucket=bucket, Key=f"img/{i}.png", Body=body)
    spec = inference_spec(vit, f"s3://{bucket}/img/", f"s3://{bucket}/out/", task="image_classify")
    job_id = _planned(world, spec)
    (found,) = s3.list_objects_v2(Bucket=bucket, Prefix="out/_inputs/images-")["Contents"]
    key = found["Key"]
    then = _etag(s3, bucket, key)
    (shard,) = world.shards(job_id)
    assert (shard.source_uri, shard.source_etag, shard.source_size) == (
        f"s3://{bucket}/{key}",
        then,
        found["Size"],
    )
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body.replace(b"img/1.png", b"img/0.png"))
    now = _etag(s3, bucket, key)

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "failed"
    assert (
        f"s3://{bucket}/{key} is Barge's listing of the job's inputs, written when the job was "
        f'planned, and it was edited after planning (ETag "{then}" then, "{now}" now)'
    ) in job["error"]
    (shard,) = world.shards(job_id)
    assert (shard.status, shard.attempt, shard.output_key) == ("failed", 1, None)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/part-")


def test_an_image_overwritten_after_planning_is_its_records_error_naming_it(
    world: World, s3: Any, bucket: str
) -> None:
    """Four PNG objects planned as an images listing, each line with the image's ETag; the
    third is overwritten: its GET (conditional on that ETag) fails, and that record alone is
    an error naming the image and both ETags; the other three run."""
    vit = upload_dir(s3, bucket, "tiny-vit", tiny_vit(world.tmp / "vit"))
    for i in range(4):
        body = encode(random_rgb(16, 16, i), "PNG")
        s3.put_object(Bucket=bucket, Key=f"img/{i}.png", Body=body)
    spec = inference_spec(
        vit,
        f"s3://{bucket}/img/",
        f"s3://{bucket}/out/",
        task="image_classify",
        max_failed_ratio=0.5,
    )
    job_id = _planned(world, spec)
    then = _etag(s3, bucket, "img/2.png")
    s3.put_object(Bucket=bucket, Key="img/2.png", Body=encode(random_rgb(16, 16, 9), "PNG"))
    now = _etag(s3, bucket, "img/2.png")

    world.worker()
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job["error"]
    rows = read_jsonl(s3, bucket, "out/part-00000.jsonl")
    assert [r["id"] for r in rows] == ["0.png", "1.png", "3.png"]
    (error,) = read_jsonl(s3, bucket, "out/errors/part-00000.jsonl")
    assert error["error"] == (
        f'image object s3://{bucket}/img/2.png changed after the job was planned (ETag "{then}" '
        f'then, "{now}" now); resubmit the job to read it'
    )
