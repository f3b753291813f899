"""Image throughput: an image_classify job vs a bare PyTorch loop, same images, same decoding,
same model and batches, same run; and how much of the job's wall time the model was busy.

(a) bare loop: the JPEG bytes already in memory; per batch, decode each image (Barge's own
    ``decode_image``: EXIF, mode) and prepare it with the model's image processor, then one
    forward pass under ``torch.inference_mode()``; decoding and the model take turns.
(a') bare loop from S3 (``--source objects``): the same, but each image first fetched from the
    same S3 server with one GET per object, ``--fetch-threads`` at a time (as many as the worker
    runs), while the loop decodes and runs what has arrived.
(b) Barge: the same JPEGs as objects under an S3 prefix (moto's server on loopback), submitted
    through the HTTP API, planned, dispatched over RabbitMQ to a real worker whose decoding
    threads fetch, decode and prepare the next images while the model runs; parts written back
    to S3. Timed from submit to the job's final status. The worker logs, per shard, the seconds
    its model was busy: their sum over the job's wall time is the decode overlap (1.0 = the
    model never waited for an image).

The model is a ViT of ViT-Tiny's width (192, 3 heads) at 96 px, 6 layers, random weights; the
worker is warmed with a one-image job first.

Run: `python bench/images.py` (needs Postgres and RabbitMQ like `make test`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 96


def make_model(path: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = [f"class-{i}" for i in range(10)]
    config = ViTConfig(
        image_size=SIZE,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(str(path), safe_serialization=True)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(str(path))
    return path


def make_images(n: int, seed: int = 1) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields with noise), 320x240 and 240x320."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        w, h = (320, 240) if i % 2 else (240, 320)
        base = rng.randint(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base, "RGB").resize((w, h), Image.BILINEAR)
        noise = rng.randint(-12, 13, (h, w, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def bare_loop(images: list[bytes], model_dir: Path, batch_size: int) -> dict[str, float]:
    """images/s of the plain loop, and its model-busy share."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from barge.records.images import decode_image

    processor = AutoImageProcessor.from_pretrained(str(model_dir))
    model = AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()
    busy = 0.0
    labels: list[int] = []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [
                processor(images=decode_image(raw, "RGB", 10**8), return_tensors="pt")[
                    "pixel_values"
                ]
                for raw in images[start : start + batch_size]
            ]
            t = time.perf_counter()
            logits = model(pixel_values=torch.cat(batch)).logits
            labels.extend(torch.softmax(logits.float(), -1).argmax(-1).tolist())
            busy += time.perf_counter() - t
    wall = time.perf_counter() - started
    return {"images_per_second": len(images) / wall, "model_busy": busy / wall, "wall": wall}


def bare_loop_from_s3(
    s3: Any, keys: list[str], model_dir: Path, batch_size: int, fetch_threads: int
) -> dict[str, float]:
    """images/s of the bare loop whose images are first fetched from the S3 server: one GET per
    object, ``fetch_threads`` at a time (in order, the next batch's while this one decodes and
    runs), then decoded, prepared and run as in ``bare_loop``."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from barge.records.images import decode_image

    processor = AutoImageProcessor.from_pretrained(str(model_dir))
    model = AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()

    def get(key: str) -> bytes:
        return bytes(s3.get_object(Bucket="bench", Key=key)["Body"].read())

    started = time.perf_counter()
    with torch.inference_mode(), ThreadPoolExecutor(fetch_threads) as pool:
        fetched = pool.map(get, keys)  # submits every GET; the pool runs fetch_threads at once
        batch: list[Any] = []
        for raw in fetched:
            pixels = processor(images=decode_image(raw, "RGB", 10**8), return_tensors="pt")
            batch.append(pixels["pixel_values"])
            if len(batch) == batch_size:
                model(pixel_values=torch.cat(batch)).logits.float().softmax(-1).argmax(-1)
                batch = []
        if batch:
            model(pixel_values=torch.cat(batch)).logits.float().softmax(-1).argmax(-1)
    wall = time.perf_counter() - started
    return {"images_per_second": len(keys) / wall, "wall": wall}


BUSY = re.compile(r"image shard \d+: .* model busy ([\d.]+)s of ([\d.]+)s wall")


def barge_job(
    images: list[bytes],
    model_dir: Path,
    batch_size: int,
    log_dir: Path,
    threads: int,
    source: str,
    fetch_threads: int,
) -> dict[str, float]:
    """``source`` "objects": one JPEG object per image under a prefix (a GET each); "parquet":
    the JPEG bytes in one Parquet object's binary column (``image_field``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.stack import Stack

    with Stack(
        log_dir,
        BARGE_IMAGE_DECODE_THREADS=str(threads),
        BARGE_IMAGE_FETCH_THREADS=str(fetch_threads),
    ) as stack:
        model = stack.upload_model("vit", model_dir)

        def put(item: tuple[int, bytes]) -> None:
            stack.s3.put_object(Bucket="bench", Key=f"images/{item[0]:06d}.jpg", Body=item[1])

        if source == "objects":
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, enumerate(images)))
            started = time.perf_counter()
            for i in range(len(images)):
                stack.s3.get_object(Bucket="bench", Key=f"images/{i:06d}.jpg")["Body"].read()
            get_ms = 1000 * (time.perf_counter() - started) / len(images)
            print(f"(the S3 server on this machine: {get_ms:.1f} ms per GET, one at a time)")
        else:
            buf = io.BytesIO()
            table = pa.table({"id": list(range(len(images))), "jpeg": images})
            pq.write_table(table, buf, row_group_size=256)
            stack.s3.put_object(Bucket="bench", Key="images.parquet", Body=buf.getvalue())
        stack.s3.put_object(Bucket="bench", Key="warm/one.jpg", Body=images[0])

        def run_job(prefix: str, out: str, **extra: Any) -> tuple[float, dict[str, Any]]:
            spec = {
                "type": "inference",
                "model": model,
                "task": "image_classify",
                "input": f"s3://bench/{prefix}",
                "output": f"s3://bench/{out}/",
                "batch_size": batch_size,
                "shard_size": 1_000_000,
                "params": {"top_k": 1},
                **extra,
            }
            return stack.run_job(spec)

        cold, _ = run_job("warm/", "cold")
        log = log_dir / "worker.log"
        before = len(BUSY.findall(log.read_text(errors="replace")))
        if source == "objects":
            elapsed, job = run_job("images/", "out")
        else:
            elapsed, job = run_job("images.parquet", "out", image_field="jpeg", id_field="id")
        assert job["progress"]["records_succeeded"] == len(images), job["progress"]
        time.sleep(0.5)
        from_s3: dict[str, float] = {}
        if source == "objects":  # the same objects, the same concurrent GETs, no Barge
            keys = [f"images/{i:06d}.jpg" for i in range(len(images))]
            from_s3 = bare_loop_from_s3(stack.s3, keys, model_dir, batch_size, fetch_threads)
        shards = BUSY.findall(log.read_text(errors="replace"))[before:]
        busy = sum(float(b) for b, _ in shards)
        shard_wall = sum(float(w) for _, w in shards)
        return {
            "elapsed": elapsed,
            "images_per_second": len(images) / elapsed,
            "model_busy_of_job": busy / elapsed,
            "model_busy_of_shard": busy / max(shard_wall, 1e-9),
            "cold_start_seconds": cold,
            "bare_from_s3_images_per_second": from_s3.get("images_per_second", 0.0),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="BARGE_IMAGE_DECODE_THREADS")
    parser.add_argument(
        "--fetch-threads",
        type=int,
        default=8,
        help="BARGE_IMAGE_FETCH_THREADS, and the bare loop from S3's concurrent GETs",
    )
    parser.add_argument(
        "--source",
        choices=("objects", "parquet"),
        default="objects",
        help="one S3 object per image, or the images' bytes in one Parquet object",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for this process's loop and the worker (0: torch's default). "
        "On a small shared machine 2 intra-op threads stall whenever another process holds a "
        "core; both sides get the same setting",
    )
    args = parser.parse_args()
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # before torch is imported
    log_dir = ROOT / "bench" / "results" / time.strftime("images-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    import torch

    model_dir = make_model(log_dir / "model")
    images = make_images(args.images)
    print(
        f"{args.images} JPEGs (320x240, {sum(map(len, images)) / len(images) / 1024:.0f} KiB "
        f"each), batch {args.batch_size}, ViT {SIZE}px 6x192, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.threads} decoding threads, source "
        f"{args.source}, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    # The bare loop runs before and after the job: on a shared machine the load moves, and the
    # job is compared with their mean.
    first = bare_loop(images, model_dir, args.batch_size)
    print(
        f"bare PyTorch loop : {first['images_per_second']:8.1f} images/s  ({first['wall']:.1f} s; "
        f"model busy {first['model_busy']:.0%} of it, decoding the rest)"
    )
    barge = barge_job(
        images, model_dir, args.batch_size, log_dir, args.threads, args.source, args.fetch_threads
    )
    second = bare_loop(images, model_dir, args.batch_size)
    print(
        f"bare loop again   : {second['images_per_second']:8.1f} images/s  "
        f"({second['wall']:.1f} s; model busy {second['model_busy']:.0%})"
    )
    bare = {k: (first[k] + second[k]) / 2 for k in ("images_per_second", "model_busy", "wall")}
    ratio = barge["images_per_second"] / bare["images_per_second"]
    print(f"bare loop (mean)  : {bare['images_per_second']:8.1f} images/s")
    print(
        f"Barge job (e2e)   : {barge['images_per_second']:8.1f} images/s  "
        f"({barge['elapsed']:.1f} s, submit → succeeded)"
    )
    print(f"ratio Barge / bare: {ratio:.3f}")
    if barge["bare_from_s3_images_per_second"]:
        from_s3 = barge["bare_from_s3_images_per_second"]
        print(
            f"bare loop from S3 : {from_s3:8.1f} images/s ({args.fetch_threads} concurrent GETs) "
            f"-> ratio Barge / bare from S3 {barge['images_per_second'] / from_s3:.3f}"
        )
    print(
        f"decode overlap    : model busy {barge['model_busy_of_shard']:.0%} of the shard's wall "
        f"time, {barge['model_busy_of_job']:.0%} of the job's (bare loop: "
        f"{bare['model_busy']:.0%})"
    )
    print(
        f"(first job on a cold worker, 1 image, incl. model load: {barge['cold_start_seconds']:.1f} s)"
    )
    (log_dir / "result.json").write_text(
        json.dumps({"args": vars(args), "bare": bare, **barge, "ratio": ratio}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
