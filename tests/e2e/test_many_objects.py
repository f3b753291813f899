"""A prefix of many small JSONL objects: the planner reads them with a bounded pool of
concurrent GETs (BARGE_INPUT_FETCH_THREADS) and packs consecutive small objects into shards of
at most shard_size records (BARGE_PACK_MAX_OBJECTS objects); every record comes out exactly
once, in input order, with its id; a bad record names its own object and line; an object that
cannot be read fails the job naming it, as it did when objects were read one at a time; a retry
of a packed job runs exactly the records it left failed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import inference_spec, manifest, put_jsonl, read_jsonl, read_parquet, wait_job

pytestmark = pytest.mark.e2e

OBJECTS = 200
BAD = 59  # this object (of 3 records) has a second line that is not JSON


def _put_prefix(s3: Any, bucket: str) -> list[str]:
    """OBJECTS small objects of 1-3 records (some with blank lines); the ids in input order."""
    ids: list[str] = []
    for i in range(OBJECTS):
        rows: list[Any] = []
        for j in range(i % 3 + 1):
            if i == BAD and j == 1:
                rows.append("{not json")
                continue
            rows.append({"id": f"{i}-{j}", "text": f"object {i} record {j}"})
            ids.append(f"{i}-{j}")
            if i % 5 == 0:
                rows.append("")  # a blank line is no record, but counts as a line
        put_jsonl(s3, bucket, f"in/obj-{i:03d}.jsonl", rows)
    return ids


def test_every_record_of_many_small_objects_once_in_order(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    ids = _put_prefix(s3, bucket)
    spec = inference_spec(
        minilm_uri,
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        id_field="id",
        max_failed_ratio=0.5,
    )
    # a dry run counts them as the planner does (read with the same bounded pool)
    dry = api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)
    assert dry.status_code == 200, dry.text
    assert dry.json()["records"] == {"count": len(ids) + 1, "exact": True}
    assert dry.json()["shards"] == 1  # every object packed into one shard
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"], timeout=600)
    assert job["status"] == "succeeded", job
    m = manifest(s3, bucket, "out")
    parts = sorted(m["parts"], key=lambda p: p["shard"])
    # one packed shard: its source the pack listing, its objects the prefix's in key order
    assert [p["packed"] for p in parts] == [
        {
            "objects": OBJECTS,
            "first": f"s3://{bucket}/in/obj-000.jsonl",
            "last": f"s3://{bucket}/in/obj-{OBJECTS - 1:03d}.jsonl",
        }
    ]
    assert parts[0]["source"].startswith(f"s3://{bucket}/out/_inputs/pack-")
    rows = [row for p in parts for row in read_jsonl(s3, bucket, p["key"])]
    assert [row["id"] for row in rows] == ids  # every record once, in input order
    assert all(len(row["embedding"]) == 384 for row in rows)
    errors = [e for p in m["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert [(e["source"], e["line"]) for e in errors] == [
        (f"s3://{bucket}/in/obj-{BAD:03d}.jsonl", 2)
    ]
    assert "JSON" in errors[0]["error"] or "json" in errors[0]["error"]
    assert m["records"] == {
        "total": len(ids) + 1,
        "succeeded": len(ids),
        "failed": 1,
        "not_processed": 0,
    }


def test_an_unreadable_object_mid_prefix_fails_the_job_naming_it(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    for i in range(40):
        put_jsonl(s3, bucket, f"in/obj-{i:03d}.jsonl", [{"text": f"object {i}"}])
    # corrupt gzip in the middle of the prefix (and another after it: the first one is named)
    for i in (17, 31):
        s3.put_object(Bucket=bucket, Key=f"in/obj-{i:03d}x.jsonl.gz", Body=b"\x1f\x8bnot gzip")
    spec = inference_spec(minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/")
    # a dry run counts what it can read; the job's planning fails naming the first bad object
    dry = api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)
    assert dry.status_code == 200, dry.text
    assert dry.json()["records"] == {"count": 40, "exact": True}
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "failed", job
    assert f"invalid gzip data in s3://{bucket}/in/obj-017x.jsonl.gz" in job["error"], job


PACKED = 60
LARGE = 30  # this object holds 150 records, more than the shard size: its own shards
BAD_OBJECTS = (5, 12, 40)  # line 2 of each is not JSON (line 2 of the others is a record)


def _put_mixed_prefix(s3: Any, bucket: str) -> tuple[list[str], list[tuple[str, int]]]:
    """PACKED objects of 1-7 records (one gzip, one large, three with a bad line); the good
    ids in input order and the (object, line) of each bad record."""
    import gzip
    import json

    ids: list[str] = []
    bad: list[tuple[str, int]] = []
    for i in range(PACKED):
        key = f"in/p-{i:02d}.jsonl" + (".gz" if i == 20 else "")
        lines: list[str] = []
        for j in range(150 if i == LARGE else i % 7 + 1):
            if i in BAD_OBJECTS and j == 1:
                lines.append('{"id": "broken')
                bad.append((f"s3://{bucket}/{key}", 2))
            else:
                lines.append(json.dumps({"id": f"{i}-{j}", "text": f"object {i} record {j}"}))
                ids.append(f"{i}-{j}")
        body = ("\n".join(lines) + "\n").encode()
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(body) if i == 20 else body)
    return ids, bad


def test_small_objects_packed_into_few_shards_then_retried(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, minilm_uri: str, worker: Any
) -> None:
    ids, bad = _put_mixed_prefix(s3, bucket)
    spec = inference_spec(
        minilm_uri, f"s3://{bucket}/in/", f"s3://{bucket}/out/", id_field="id", shard_size=100
    )
    dry = api.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=auth)
    assert dry.status_code == 200, dry.text
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"], timeout=600)
    assert job["status"] == "succeeded", job
    shards = api.get(f"/v1/jobs/{job['id']}/shards", headers=auth).json()["shards"]
    assert dry.json()["shards"] == len(shards) < 10  # 60 objects, a shard each before
    large = f"s3://{bucket}/in/p-{LARGE:02d}.jsonl"
    own = [s for s in shards if s["objects"] is None]
    assert [(s["source"], s["record_count"]) for s in own] == [(large, 100), (large, 50)]
    packed = [s for s in shards if s["objects"] is not None]
    assert sum(s["objects"] for s in packed) == PACKED - 1
    assert all(s["record_count"] <= 100 for s in packed)
    assert packed[0]["first_source"] == f"s3://{bucket}/in/p-00.jsonl"
    assert packed[-1]["last_source"] == f"s3://{bucket}/in/p-{PACKED - 1:02d}.jsonl"
    assert all(s["source"].startswith(f"s3://{bucket}/out/_inputs/pack-") for s in packed)
    inputs = s3.list_objects_v2(Bucket=bucket, Prefix="out/_inputs/")["Contents"]
    copies = [o["Key"] for o in inputs if o["Key"].endswith(".data")]
    assert len(copies) == len(packed)  # each pack's objects, read with one GET of its copy

    m = manifest(s3, bucket, "out")
    parts = sorted(m["parts"], key=lambda p: p["shard"])
    assert [bool(p.get("packed")) for p in parts] == [s["objects"] is not None for s in shards]
    rows = [row for p in parts for row in read_jsonl(s3, bucket, p["key"])]
    assert [row["id"] for row in rows] == ids  # every record once, in input order
    errors = [e for p in m["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert [(e["source"], e["line"]) for e in errors] == bad  # each names its own object
    assert m["records"] == {
        "total": len(ids) + len(bad),
        "succeeded": len(ids),
        "failed": len(bad),
        "not_processed": 0,
    }

    # a retry runs exactly the failed records: line 2 of the three bad objects, no other line 2
    r = api.post(f"/v1/jobs/{job['id']}/retry", json={}, headers=auth)
    assert r.status_code == 201, r.text
    retried = read_jsonl(s3, bucket, "out/retry-1.input.jsonl")
    assert len(retried) == len(bad) and all("barge_unreadable" in row for row in retried)
    child = wait_job(api, auth, r.json()["id"], timeout=300)
    assert child["progress"]["records_total"] == len(bad)


def test_small_csv_parquet_and_gzip_objects_packed_for_classify_with_parquet_parts(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, classifier_uri: str, worker: Any
) -> None:
    import csv
    import gzip
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    ids: list[str] = []
    for i in range(12):
        rows = [{"id": f"{i}-{j}", "text": f"review {i} {j}: fine"} for j in range(3)]
        ids += [r["id"] for r in rows]
        if i % 3 == 0:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=["id", "text"])
            writer.writeheader()
            writer.writerows(rows)
            key, body = f"mixed/{i:02d}.csv", buf.getvalue().encode()
        elif i % 3 == 1:
            out = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows), out)
            key, body = f"mixed/{i:02d}.parquet", out.getvalue()
        else:
            text = "\n".join(json.dumps(r) for r in rows) + "\n"
            key, body = f"mixed/{i:02d}.jsonl.gz", gzip.compress(text.encode())
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    spec = inference_spec(
        classifier_uri,
        f"s3://{bucket}/mixed/",
        f"s3://{bucket}/mixed-out/",
        task="classify",
        id_field="id",
        output_format="parquet",
    )
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_job(api, auth, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["shards_total"] == 1
    m = manifest(s3, bucket, "mixed-out")
    assert m["parts"][0]["packed"]["objects"] == 12
    rows = read_parquet(s3, bucket, m["parts"][0]["key"])
    assert [row["id"] for row in rows] == ids  # every record once, in key order of objects
    assert all(row["label"] in ("negative", "positive") for row in rows)
