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

from barge.records.images import DECODE_BYTES_PER_PIXEL
from barge.settings import Settings
from tests.faults.conftest import World
from tests.helpers import inference_spec, put_jsonl, read_jsonl, upload_dir, wait_until
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


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _big_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG that compresses to a few hundred KB (a sparse lattice)."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((side, side, 3), dtype=np.uint8)
    pixels[::7, ::5, 0] = 255
    pixels[::3, ::11, 2] = 128
    return encode(Image.fromarray(pixels, "RGB"), "PNG")


def test_decoding_is_bounded_per_worker_whatever_the_images(
    world: World, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """Four records naming one 10000x10000 PNG (exactly BARGE_MAX_IMAGE_PIXELS) on a worker with
    four decoding threads: the worker's process group grows by less than the figure the docs
    state for the default pixel budget (the images decode one at a time, not four at once), and
    every record is classified exactly once. The growth is measured from each process's peak
    resident set (VmHWM, reset after a warm-up job that loads the model), so no spike between
    samples is missed."""
    model = upload_dir(s3, bucket, "vit64", tiny_vit(tmp_path / "vit64", size=64))
    big = f"s3://{bucket}/big.png"
    s3.put_object(Bucket=bucket, Key="big.png", Body=_big_png(10_000))
    small = f"s3://{bucket}/small.png"
    s3.put_object(Bucket=bucket, Key="small.png", Body=encode(random_rgb(20, 20, 1), "PNG"))
    worker = world.worker(BARGE_IMAGE_DECODE_THREADS="4")
    assert worker.proc is not None

    def job(name: str, images: list[str]) -> dict[str, Any]:
        rows = [{"id": f"{name}-{i}", "image": uri} for i, uri in enumerate(images)]
        data = put_jsonl(s3, bucket, f"{name}.jsonl", rows)
        spec = inference_spec(model, data, f"s3://{bucket}/{name}/", task="image_classify")
        job_id = world.submit({**spec, "image_field": "image", "id_field": "id"})
        final = world.wait_final(job_id, timeout=300)
        assert final["status"] == "succeeded", final
        out = read_jsonl(s3, bucket, f"{name}/part-00000.jsonl")
        assert [r["id"] for r in out] == [r["id"] for r in rows]  # each exactly once, in order
        return final

    job("warm", [small])  # the model loaded, the decoding threads started
    pids = _group(worker.proc.pid)
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = sum(_status_kib(pid, "VmRSS") for pid in pids)
    job("big", [big] * 4)
    peak = sum(_status_kib(pid, "VmHWM") for pid in pids)
    growth_mib = (peak - before) / 1024
    budget = Settings.model_fields["image_decode_pixel_budget"].default
    stated_mib = DECODE_BYTES_PER_PIXEL * budget / 2**20
    assert growth_mib < stated_mib, (
        f"the worker's process group grew by {growth_mib:.0f} MiB decoding four "
        f"10000x10000 images (stated bound {stated_mib:.0f} MiB)"
    )
