"""S3 drop folders with two schedulers running: each good file becomes exactly one job."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.helpers import read_jsonl, wait_until
from tests.services import ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_schedulers(barge_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            **barge_env,
            "BARGE_DROP_SCAN_SECONDS": "1",
            "BARGE_HOME": str(tmp_path / f"s{i}"),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli", "scheduler"],
                env=env,
                cwd=ROOT,
                stdout=(tmp_path / f"scheduler-{i}.log").open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    yield
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    )


def _status(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_three_files_dropped_at_once_with_two_schedulers(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    two_schedulers: None,
    database_url: str,
) -> None:
    rule = api.post(
        "/v1/drops",
        json={
            "name": f"team-{uuid.uuid4().hex[:6]}",
            "prefix": f"s3://{bucket}/drops/reviews",
            "template": {"model": minilm_uri, "task": "embed", "id_field": "id", "batch_size": 32},
        },
        headers=auth,
    )
    assert rule.status_code == 201, rule.text
    assert rule.json()["incoming"] == f"s3://{bucket}/drops/reviews/incoming/"

    # Still being written: a multipart upload that is not complete is invisible to the scan.
    mpu = s3.create_multipart_upload(Bucket=bucket, Key="drops/reviews/incoming/late.jsonl")
    part = s3.upload_part(
        Bucket=bucket,
        Key="drops/reviews/incoming/late.jsonl",
        UploadId=mpu["UploadId"],
        PartNumber=1,
        Body="\n".join(json.dumps({"id": f"l{i}", "text": f"late {i}"}) for i in range(5)).encode(),
    )
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "body"])
    writer.writerows([[f"b{i}", f"csv body {i}"] for i in range(40)])
    drops = {
        "a.jsonl": "\n".join(
            json.dumps({"id": f"a{i}", "text": f"first file {i}"}) for i in range(50)
        ).encode(),
        "b.csv": buf.getvalue().encode(),
        "b.job.json": json.dumps({"text_field": "body"}).encode(),  # overrides the template
        "notes.txt": b"this is not a dataset",
    }
    for name, body in drops.items():
        s3.put_object(Bucket=bucket, Key=f"drops/reviews/incoming/{name}", Body=body)

    done = wait_until(
        lambda: (
            {"drops/reviews/done/a.status.json", "drops/reviews/done/b.status.json"}
            <= set(_keys(s3, bucket, "drops/reviews/done/"))
            and "drops/reviews/failed/notes.txt.status.json"
            in _keys(s3, bucket, "drops/reviews/failed/")
            and _keys(s3, bucket, "drops/reviews/done/")
        ),
        timeout=180,
        what="both jobs to finish and the bad file to be rejected",
    )
    assert set(done) == {
        "drops/reviews/done/a.jsonl",
        "drops/reviews/done/a.status.json",
        "drops/reviews/done/b.csv",
        "drops/reviews/done/b.job.json",
        "drops/reviews/done/b.status.json",
    }
    assert _keys(s3, bucket, "drops/reviews/incoming/") == []  # the incomplete upload is not listed
    jobs = api.get("/v1/jobs", headers=auth).json()["jobs"]
    assert len(jobs) == 2  # exactly one job per good file, with two schedulers scanning
    a = _status(s3, bucket, "drops/reviews/done/a.status.json")
    b = _status(s3, bucket, "drops/reviews/done/b.status.json")
    assert a["status"] == b["status"] == "succeeded"
    assert a["records"]["succeeded"] == 50 and b["records"]["succeeded"] == 40
    assert a["output"] == f"s3://{bucket}/drops/reviews/outputs/a/"
    assert {j["id"] for j in jobs} == {a["job_id"], b["job_id"]}
    assert [
        r["id"] for r in read_jsonl(s3, bucket, "drops/reviews/outputs/b/part-00000.jsonl")
    ] == [f"b{i}" for i in range(40)]
    bad = _status(s3, bucket, "drops/reviews/failed/notes.txt.status.json")
    assert bad["status"] == "rejected" and bad["job_id"] is None
    assert "cannot read notes.txt" in bad["error"]
    assert _keys(s3, bucket, "drops/reviews/failed/") == [
        "drops/reviews/failed/notes.txt",
        "drops/reviews/failed/notes.txt.status.json",
    ]

    from db.models import DropObject
    from db.session import session_scope

    with session_scope(database_url) as session:
        seen = session.scalar(
            select(func.count())
            .select_from(DropObject)
            .where(DropObject.key.like("drops/reviews/%"))
        )
    assert seen == 3

    # Once the upload completes, it is picked up like any other file.
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="drops/reviews/incoming/late.jsonl",
        UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    wait_until(
        lambda: "drops/reviews/done/late.status.json" in _keys(s3, bucket, "drops/reviews/done/"),
        timeout=120,
        what="the completed upload to become a job",
    )
    assert _status(s3, bucket, "drops/reviews/done/late.status.json")["records"]["succeeded"] == 5
    assert len(api.get("/v1/jobs", headers=auth).json()["jobs"]) == 3


def test_drop_rules_api(api: Any, auth: dict[str, str], bucket: str, minilm_uri: str) -> None:
    name = f"r-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name,
        "prefix": f"s3://{bucket}/d/",
        "template": {"model": minilm_uri, "task": "embed"},
    }
    assert api.post("/v1/drops", json=body, headers=auth).status_code == 201
    assert api.post("/v1/drops", json=body, headers=auth).status_code == 409
    bad = api.post(
        "/v1/drops",
        json={**body, "name": "x", "template": {"model": "m", "task": "nope"}},
        headers=auth,
    )
    assert bad.status_code == 422 and bad.json()["field"] == "template.task", bad.text
    bad = api.post(
        "/v1/drops",
        json={
            **body,
            "name": "y",
            "template": {"model": "m", "task": "embed", "input": "s3://a/b"},
        },
        headers=auth,
    )
    assert bad.status_code == 422 and "must not set input" in bad.json()["message"]
    assert [d["name"] for d in api.get("/v1/drops", headers=auth).json()["drops"]] == [name]
    assert api.delete(f"/v1/drops/{name}", headers=auth).status_code == 204
    assert api.delete(f"/v1/drops/{name}", headers=auth).status_code == 404
    assert api.get("/v1/drops", headers=auth).json()["drops"][0]["enabled"] is False


def test_files_in_subfolders_are_taken_and_no_file_is_ignored(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    two_schedulers: None,
) -> None:
    """A file in a subfolder of incoming/ becomes a job named by its path there; a file Barge
    cannot take, nested or hidden or with an unusable path, goes to failed/ with the reason.
    Before, anything under a subfolder (and any hidden file) stayed in incoming/ forever,
    without a word."""
    rule = api.post(
        "/v1/drops",
        json={
            "name": f"nested-{uuid.uuid4().hex[:6]}",
            "prefix": f"s3://{bucket}/drops/nested/",
            "template": {"model": minilm_uri, "task": "embed", "id_field": "id"},
        },
        headers=auth,
    )
    assert rule.status_code == 201, rule.text
    incoming = "drops/nested/incoming/"
    rows = [{"id": f"n{i}", "body": f"nested record {i}"} for i in range(30)]
    drops = {
        "2024/05/reviews.jsonl": "\n".join(json.dumps(r) for r in rows).encode(),
        "2024/05/reviews.job.json": json.dumps({"text_field": "body"}).encode(),
        "2024/05/notes.txt": b"not a dataset",
        ".hidden.jsonl": json.dumps({"id": 1, "text": "hidden"}).encode(),
        "odd//path.jsonl": json.dumps({"id": 1, "text": "odd"}).encode(),
        "empty/": b"",  # a folder marker, as consoles write them: not a file
    }
    for name, body in drops.items():
        s3.put_object(Bucket=bucket, Key=incoming + name, Body=body)

    expected_failed = {
        "drops/nested/failed/2024/05/notes.txt.status.json",
        "drops/nested/failed/.hidden.status.json",
        "drops/nested/failed/odd_path.status.json",
    }
    wait_until(
        lambda: (
            "drops/nested/done/2024/05/reviews.status.json"
            in _keys(s3, bucket, "drops/nested/done/")
            and expected_failed <= set(_keys(s3, bucket, "drops/nested/failed/"))
        ),
        timeout=180,
        what="the nested file's job to finish and the others to be rejected",
    )
    assert _keys(s3, bucket, "drops/nested/done/") == [
        "drops/nested/done/2024/05/reviews.job.json",
        "drops/nested/done/2024/05/reviews.jsonl",
        "drops/nested/done/2024/05/reviews.status.json",
    ]
    status = _status(s3, bucket, "drops/nested/done/2024/05/reviews.status.json")
    assert status["status"] == "succeeded", status
    assert status["name"] == "2024/05/reviews"
    assert status["output"] == f"s3://{bucket}/drops/nested/outputs/2024/05/reviews/"
    assert status["records"]["succeeded"] == 30
    out = read_jsonl(s3, bucket, "drops/nested/outputs/2024/05/reviews/part-00000.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # the override's text_field used

    assert _keys(s3, bucket, "drops/nested/failed/") == sorted(
        [
            "drops/nested/failed/2024/05/notes.txt",
            "drops/nested/failed/.hidden.jsonl",
            "drops/nested/failed/odd_path.jsonl",
            *expected_failed,
        ]
    )
    reasons = {key: _status(s3, bucket, key) for key in expected_failed}
    for key, bad in reasons.items():
        assert bad["status"] == "rejected" and bad["job_id"] is None, (key, bad)
    assert (
        "cannot read 2024/05/notes.txt"
        in reasons["drops/nested/failed/2024/05/notes.txt.status.json"]["error"]
    )
    assert "starting with '_' or '.'" in reasons["drops/nested/failed/.hidden.status.json"]["error"]
    assert "empty segment" in reasons["drops/nested/failed/odd_path.status.json"]["error"]
    # Only the folder marker is left: no file stays in incoming/.
    assert _keys(s3, bucket, incoming) == [incoming + "empty/"]
    jobs = api.get("/v1/jobs", headers=auth).json()["jobs"]
    assert [j["id"] for j in jobs] == [status["job_id"]]
