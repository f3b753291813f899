"""An image job whose worker is SIGKILLed mid-shard: every image still appears exactly once, in
the outputs or in the errors."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import World
from tests.helpers import inference_spec, read_jsonl, upload_dir, wait_until
from tests.images import encode, random_bytes, random_rgb, tiny_vit, truncated_jpeg

pytestmark = pytest.mark.faults


def test_sigkill_of_the_whole_worker_mid_image_shard_then_restart(
    world: World, s3: Any, bucket: str, tmp_path: Path
) -> None:
    model = upload_dir(s3, bucket, "vit64", tiny_vit(tmp_path / "vit64", size=64))
    keys = [f"img/{i:04d}.png" for i in range(360)]
    bad = {k for i, k in enumerate(keys) if i % 97 == 13}

    def put(i_key: tuple[int, str]) -> None:
        i, key = i_key
        body = (
            (truncated_jpeg() if i % 2 else random_bytes(512, i))
            if key in bad
            else encode(random_rgb(40 + i % 9, 36, i), "PNG")
        )
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, enumerate(keys)))
    # Renewals (which record progress) every 0.1 s: a shard of 120 small images runs in about
    # half a second here, and the kill must land while one runs with progress.
    worker = world.worker(BARGE_HEARTBEAT_SECONDS="0.1")
    world.start_scheduler()
    job_id = world.submit(
        inference_spec(
            model,
            f"s3://{bucket}/img/",
            f"s3://{bucket}/out/",
            task="image_classify",
            batch_size=8,
            shard_size=120,
        )
    )
    wait_until(
        lambda: any(
            s.status == "running" and s.records_succeeded > 0 for s in world.shards(job_id)
        ),
        timeout=120,
        interval=0.1,
        what="an image shard running with progress",
    )
    os.killpg(worker.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    worker.proc.wait(10)  # type: ignore[union-attr]
    time.sleep(1)
    world.worker(BARGE_HEARTBEAT_SECONDS="0.1")
    job = world.wait_final(job_id, timeout=180)
    assert job["status"] == "succeeded", job
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/_manifest.json")["Body"].read())
    out_ids = [r["id"] for p in manifest["parts"] for r in read_jsonl(s3, bucket, p["key"])]
    err_ids = [e["id"] for p in manifest["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    names = [k.removeprefix("img/") for k in keys]
    assert out_ids == [n for n in names if f"img/{n}" not in bad]  # once each, in key order
    assert sorted(err_ids) == sorted(k.removeprefix("img/") for k in bad)
    assert manifest["records"]["succeeded"] + manifest["records"]["failed"] == len(keys)
    assert max(s.attempt for s in world.shards(job_id)) >= 2  # a shard ran again after the kill
