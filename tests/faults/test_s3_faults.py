"""S3 that throttles (503 SlowDown) and fails (500 InternalError): boto3's standard retries absorb
it, and a multipart upload that still fails is aborted, never left incomplete."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import World, assert_exactly_once, dataset
from tests.faults.s3proxy import (
    INTERNAL_ERROR,
    SLOW_DOWN,
    FailEveryNth,
    FailFirstAttempts,
    FailMatching,
    ProxyRequest,
    S3FaultProxy,
)
from tests.helpers import inference_spec

pytestmark = pytest.mark.faults

# S3Store configures boto3 with retries={"mode": "standard", "max_attempts": 6}; botocore reads a
# Config's max_attempts as retries after the first try, so a request is tried 7 times in all.
MAX_ATTEMPTS = 7
MiB = 1 << 20


def is_upload_part(request: ProxyRequest) -> bool:
    return request.is_upload_part


def is_put_object(request: ProxyRequest) -> bool:
    return request.is_put_object


@pytest.fixture
def proxy(s3_server: Any) -> Iterator[S3FaultProxy]:
    """A pass-through proxy to moto; each test sets its own fault plan."""
    with S3FaultProxy(s3_server.url) as p:
        yield p


@pytest.fixture
def store(proxy: S3FaultProxy, barge_env: dict[str, str]) -> Any:
    """Barge's S3Store, exactly as configured in production, talking to S3 through the proxy."""
    from barge.settings import Settings
    from barge.storage import S3Store

    return S3Store(Settings(storage_backend="s3", s3_endpoint_url=proxy.url))


def _big_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _no_incomplete_uploads(s3: Any, bucket: str) -> None:
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket), "an upload was left open"


def test_a_job_succeeds_exactly_once_while_s3_throttles_and_fails_every_fourth_request(
    world: World, s3: Any, bucket: str, minilm_uri: str, proxy: S3FaultProxy
) -> None:
    # Every 4th request the worker sends is answered 503 SlowDown or 500 InternalError (a retry
    # of a failed request always gets through). The worker's model download (a fresh cache dir),
    # input reads, part and error uploads and the manifest all go through the proxy; the API in
    # this process talks to moto directly.
    proxy.set_rules(FailEveryNth(4, faults=(SLOW_DOWN, INTERNAL_ERROR)))
    data, rows = dataset(s3, bucket, 400, bad_every=50)
    world.worker(BARGE_S3_ENDPOINT_URL=proxy.url, BARGE_CACHE_DIR=str(world.tmp / "proxied-cache"))
    job_id = world.submit(
        inference_spec(
            minilm_uri, data, f"s3://{bucket}/out/", id_field="id", batch_size=16, shard_size=100
        )
    )
    job = world.wait_final(job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert_exactly_once(s3, bucket, "out", rows)
    assert s3.head_object(Bucket=bucket, Key="out/_SUCCESS")

    log = proxy.log
    injected = [e for e in log if e.injected]
    print(
        f"\nproxy: {len(log)} requests, {len(injected)} faults injected "
        f"({sum(e.status == 503 for e in injected)} x 503 SlowDown, "
        f"{sum(e.status == 500 for e in injected)} x 500 InternalError; "
        f"{sum(e.method == 'GET' for e in injected)} on GET, "
        f"{sum(e.method == 'PUT' for e in injected)} on PUT)"
    )
    # One request in four failed, and each failed request was retried and then got through.
    assert len(injected) >= 5
    assert len(injected) == (len(log) - len(injected)) // 4
    for i, e in enumerate(log):
        if e.injected:
            retry = next(
                r
                for r in log[i + 1 :]
                if (r.method, r.target, r.range) == (e.method, e.target, e.range)
            )
            assert not retry.injected and retry.status < 500, (e, retry)
    assert {e.status for e in injected} == {503, 500}
    assert any(e.method == "GET" for e in injected), "no read was failed"
    assert any(e.method == "PUT" for e in injected), "no write was failed"
    # boto3 retried each failed request; no shard had to be re-run for it.
    shards = world.shards(job_id)
    assert len(shards) == 4
    assert all((s.status, s.attempt) == ("succeeded", 1) for s in shards), [
        (s.index, s.status, s.attempt, s.last_error) for s in shards
    ]
    _no_incomplete_uploads(s3, bucket)


def test_a_multipart_upload_whose_parts_keep_failing_is_aborted(
    store: Any, proxy: S3FaultProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    from barge.errors import StorageError
    from barge.storage import S3Uri

    # 20 MiB goes up as three parts (8 + 8 + 4 MiB); every part after the first always fails.
    path = _big_file(tmp_path / "big.bin", 20 * MiB)
    uri = S3Uri(bucket, "out/part-00000.jsonl")
    proxy.set_rules(FailMatching(is_upload_part, INTERNAL_ERROR, after=1))
    with pytest.raises(StorageError) as raised:
        store.put_file(uri, path)
    assert str(uri) in str(raised.value)

    log = proxy.log
    print(
        f"\nproxy: {len(log)} requests, {proxy.faults} UploadPart faults injected; "
        f"{[(e.method, e.target.split('?', 1)[-1][:40], e.status) for e in log if not e.injected]}"
    )
    assert any(e.method == "POST" and e.target.endswith("?uploads") for e in log), "no multipart"
    # at least one part was tried max_attempts times before the upload gave up
    assert proxy.faults >= MAX_ATTEMPTS
    aborts = [e for e in log if e.method == "DELETE" and "uploadId=" in e.target]
    assert [e.status for e in aborts] == [204], "the failed upload was not aborted"
    assert log[-1] == aborts[0], "a part was still sent after the abort"
    assert not any(e.method == "POST" and "uploadId=" in e.target for e in log), "completed?!"
    _no_incomplete_uploads(s3, bucket)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # nothing under the key


def test_a_multipart_upload_survives_failing_part_attempts(
    store: Any, proxy: S3FaultProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    from barge.storage import S3Uri

    path = _big_file(tmp_path / "big.bin", 20 * MiB)
    uri = S3Uri(bucket, "out/part-00001.jsonl")
    proxy.set_rules(FailFirstAttempts(2, is_upload_part, SLOW_DOWN))
    store.put_file(uri, path)
    assert proxy.faults == 3 * 2  # each of the three parts was throttled twice, then went up
    assert s3.get_object(Bucket=bucket, Key=uri.key)["Body"].read() == path.read_bytes()
    _no_incomplete_uploads(s3, bucket)


def test_put_bytes_is_retried_through_throttling_and_errors(
    store: Any, proxy: S3FaultProxy, s3: Any, bucket: str
) -> None:
    from barge.storage import S3Uri

    proxy.set_rules(
        FailFirstAttempts(1, is_put_object, SLOW_DOWN),
        FailFirstAttempts(1, is_put_object, INTERNAL_ERROR),
    )
    for i in range(3):
        uri = S3Uri(bucket, f"out/obj-{i}.json")
        store.put_bytes(uri, b'{"n": %d}' % i)
        assert s3.get_object(Bucket=bucket, Key=uri.key)["Body"].read() == b'{"n": %d}' % i
    # each PUT: 503, then 500, then through
    assert [e.status for e in proxy.log] == [503, 500, 200] * 3
    assert proxy.faults == 6


def test_put_bytes_against_an_s3_that_always_fails_raises_naming_the_uri(
    store: Any, proxy: S3FaultProxy, s3: Any, bucket: str
) -> None:
    from barge.errors import StorageError
    from barge.storage import S3Uri

    uri = S3Uri(bucket, f"out/{uuid.uuid4().hex}.json")
    proxy.set_rules(FailMatching(is_put_object, INTERNAL_ERROR))
    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        store.put_bytes(uri, b"{}")
    elapsed = time.monotonic() - started
    assert str(uri) in str(raised.value)
    assert "InternalError" in str(raised.value)
    assert proxy.faults == MAX_ATTEMPTS  # tried seven times, then gave up
    assert elapsed < 30, f"gave up only after {elapsed:.1f}s"
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
