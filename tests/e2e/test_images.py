"""Images as records, end to end through the API, real worker processes, RabbitMQ, Postgres and
an S3 server: fine-tune an image classifier on real handwritten digits and run it by name,
find a real face, equal transformers' pipelines, and bad images as per-record errors."""

from __future__ import annotations

import base64
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import new_key
from tests.helpers import (
    events,
    finetune_spec,
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    read_parquet,
    upload_dir,
    wait_job,
)
from tests.images import (
    digits,
    encode,
    photo,
    png_header_only,
    random_bytes,
    random_rgb,
    tiny_detr,
    tiny_resnet,
    tiny_vit,
    tiny_yolos,
    truncated_jpeg,
    with_exif_orientation,
)

pytestmark = pytest.mark.e2e

# The astronaut's face in scikit-image's astronaut.png (512x512), measured by eye once on a
# 10-pixel grid: eyebrows to chin, cheek to cheek. [x0, y0, x1, y1] in pixels.
ASTRONAUT_FACE = [182.0, 75.0, 275.0, 185.0]


@pytest.fixture(scope="module")
def vit_uri(s3: Any, models_bucket: str, tmp_root: Path) -> str:
    return upload_dir(s3, models_bucket, "tiny-vit", tiny_vit(tmp_root / "vit"))


@pytest.fixture(scope="module")
def detr_uri(s3: Any, models_bucket: str, tmp_root: Path) -> str:
    return upload_dir(s3, models_bucket, "tiny-detr", tiny_detr(tmp_root / "detr"))


@pytest.fixture(scope="module")
def yolos_uri(s3: Any, models_bucket: str, tmp_root: Path) -> str:
    return upload_dir(s3, models_bucket, "tiny-yolos", tiny_yolos(tmp_root / "yolos"))


def _submit(api: Any, auth: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    return wait_job(api, auth, r.json()["id"])


def _outputs(s3: Any, bucket: str, prefix: str) -> tuple[list[dict[str, Any]], list[Any]]:
    m = manifest(s3, bucket, prefix)
    rows = [r for p in m["parts"] for r in read_jsonl(s3, bucket, p["key"])]
    errors = [e for p in m["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    return rows, errors


def _put(s3: Any, bucket: str, key: str, body: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def test_finetune_on_real_digits_register_and_classify_the_png_prefix_by_name(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    tmp_root: Path,
    worker: Any,
) -> None:
    """scikit-learn's 1,797 handwritten digits: four fifths train (Parquet, PNG bytes), the
    held-out fifth are PNG objects (validation names them by s3:// URI); the fine-tuned model
    is registered and classifies the PNG prefix by name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pngs, labels = digits()
    held_out = [i for i in range(len(pngs)) if i % 5 == 0]
    train = [i for i in range(len(pngs)) if i % 5 != 0]
    with ThreadPoolExecutor(8) as pool:  # the S3 server answers a few at once
        list(pool.map(lambda i: _put(s3, bucket, f"digits/test/{i:04d}.png", pngs[i]), held_out))
    table = pa.table({"image": [pngs[i] for i in train], "label": [labels[i] for i in train]})
    out = io.BytesIO()
    pq.write_table(table, out)
    train_uri = _put(s3, bucket, "digits/train.parquet", out.getvalue())
    val_uri = put_jsonl(
        s3,
        bucket,
        "digits/val.jsonl",
        [{"image": f"s3://{bucket}/digits/test/{i:04d}.png", "label": labels[i]} for i in held_out],
    )
    base = upload_dir(
        s3,
        models_bucket,
        f"resnet-{uuid.uuid4().hex[:6]}",
        tiny_resnet(tmp_root / f"resnet-{uuid.uuid4().hex[:6]}", size=16),
    )
    name = f"digits-{uuid.uuid4().hex[:6]}"
    job = _submit(
        api,
        auth,
        finetune_spec(
            base,
            train_uri,
            name,
            task="image_classify",
            validation=val_uri,
            hyperparameters={"epochs": 2, "batch_size": 64, "learning_rate": 1e-2, "seed": 0},
            output=f"s3://{bucket}/digits/ft/",
            checkpoint_every_steps=30,
        ),
    )
    assert job["status"] == "succeeded", job
    evals = [e["data"] for e in events(api, auth, job["id"]) if e["kind"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert evals[-1]["validation_accuracy"] >= 0.9, evals
    registered = api.get(f"/v1/models/{name}", headers=auth).json()
    assert registered["models"][0]["task"] == "image_classify", registered

    job = _submit(
        api,
        auth,
        inference_spec(
            name,
            f"s3://{bucket}/digits/test/",
            f"s3://{bucket}/digits/out/",
            task="image_classify",
            batch_size=64,
            params={"top_k": 3},
        ),
    )
    assert job["status"] == "succeeded", job
    rows, errors = _outputs(s3, bucket, "digits/out")
    assert errors == []
    assert [r["id"] for r in rows] == [f"{i:04d}.png" for i in held_out]  # keys, in order
    assert all(len(r["scores"]) == 3 and r["label"] == next(iter(r["scores"])) for r in rows)
    right = sum(r["label"] == str(labels[int(r["id"][:4])]) for r in rows)
    assert right / len(rows) >= 0.9, f"accuracy {right / len(rows):.3f} on the held-out fifth"


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_builtin_face_detector_finds_the_astronaut_and_no_face_in_the_coffee(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, worker: Any
) -> None:
    for name in ("astronaut.png", "coffee.png"):
        _put(s3, bucket, f"photos/{name}", photo(name))
    job = _submit(
        api,
        auth,
        inference_spec(
            "builtin:face-haar", f"s3://{bucket}/photos/", f"s3://{bucket}/faces/", task="detect"
        ),
    )
    assert job["status"] == "succeeded", job
    rows, errors = _outputs(s3, bucket, "faces")
    assert errors == []
    found = {r["id"]: r["objects"] for r in rows}
    assert found["coffee.png"] == []
    [face] = found["astronaut.png"]
    assert face["label"] == "face"
    assert _iou(face["box"], ASTRONAUT_FACE) >= 0.5, face


def _gallery() -> dict[str, bytes]:
    """Images of every format, size and mode a user may send, keyed by their object name."""

    gif_frames = [random_rgb(30, 22, 11), random_rgb(30, 22, 12)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:])
    return {
        "a.png": encode(random_rgb(40, 30, 1), "PNG"),
        "b.jpg": encode(random_rgb(64, 48, 2), "JPEG", quality=92),
        "c.webp": encode(random_rgb(50, 50, 3), "WEBP", lossless=True),
        "d.bmp": encode(random_rgb(33, 70, 4), "BMP"),
        "e.tiff": encode(random_rgb(45, 20, 5), "TIFF"),
        "f.gif": gif.getvalue(),
        "g-rotated.jpg": with_exif_orientation(random_rgb(60, 30, 6)),
        "h-grey.png": encode(random_rgb(24, 24, 7).convert("L"), "PNG"),
        "i-rgba.png": encode(random_rgb(28, 36, 8).convert("RGBA"), "PNG"),
        "sub/j.png": encode(random_rgb(48, 48, 9), "PNG"),
        "sub/k.PNG": encode(random_rgb(64, 64, 10), "PNG"),
    }


def test_outputs_equal_transformers_pipelines(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    vit_uri: str,
    yolos_uri: str,
    detr_uri: str,
    tmp_root: Path,
    worker: Any,
) -> None:
    """image_classify and detect over a prefix of mixed formats (and image_field records:
    base64, s3:// URIs, Parquet bytes) equal transformers.pipeline on each image to 1e-5."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from transformers import pipeline

    gallery = _gallery()
    for key, body in gallery.items():
        _put(s3, bucket, f"gallery/{key}", body)
    _put(s3, bucket, "gallery/readme.txt", b"not an image: skipped")
    names = sorted(gallery)
    classify = _submit(
        api,
        auth,
        inference_spec(
            vit_uri,
            f"s3://{bucket}/gallery/",
            f"s3://{bucket}/cls/",
            task="image_classify",
            batch_size=4,
            params={"top_k": 3},
        ),
    )
    detect = _submit(
        api,
        auth,
        inference_spec(
            yolos_uri,
            f"s3://{bucket}/gallery/",
            f"s3://{bucket}/det/",
            task="detect",
            batch_size=4,
            params={"threshold": 0.0},
        ),
    )
    detr = _submit(
        api,
        auth,
        inference_spec(
            detr_uri,
            f"s3://{bucket}/gallery/",
            f"s3://{bucket}/detr/",
            task="detect",
            batch_size=4,
            params={"threshold": 0.0},
        ),
    )
    records = [
        {"id": n, "img": base64.b64encode(gallery[n]).decode()}
        if i % 2
        else {"id": n, "img": f"s3://{bucket}/gallery/{n}"}
        for i, n in enumerate(names)
    ]
    jsonl = put_jsonl(s3, bucket, "fields/images.jsonl", records)
    from_field = _submit(
        api,
        auth,
        inference_spec(
            vit_uri,
            jsonl,
            f"s3://{bucket}/cls-field/",
            task="image_classify",
            image_field="img",
            id_field="id",
            params={"top_k": 3},
        ),
    )
    table = pa.table({"name": names, "bytes": [gallery[n] for n in names]})
    out = io.BytesIO()
    pq.write_table(table, out)
    parquet = _put(s3, bucket, "fields/images.parquet", out.getvalue())
    from_parquet = _submit(
        api,
        auth,
        inference_spec(
            vit_uri,
            parquet,
            f"s3://{bucket}/cls-parquet/",
            task="image_classify",
            image_field="bytes",
            id_field="name",
            params={"top_k": 3},
        ),
    )
    for job in (classify, detect, detr, from_field, from_parquet):
        assert job["status"] == "succeeded", job

    classifier = pipeline("image-classification", model=str(tmp_root / "vit"))

    for prefix in ("cls", "cls-field", "cls-parquet"):
        rows, errors = _outputs(s3, bucket, prefix)
        assert errors == [] and [r["id"] for r in rows] == names, (prefix, errors)
        for row in rows:
            expected = classifier(Image.open(io.BytesIO(gallery[row["id"]])), top_k=3)
            assert row["label"] == expected[0]["label"], row
            assert list(row["scores"]) == [e["label"] for e in expected]
            for e in expected:
                assert abs(row["scores"][e["label"]] - e["score"]) <= 1e-5, (row, expected)
    for prefix, model_dir in (("det", "yolos"), ("detr", "detr")):
        detector = pipeline("object-detection", model=str(tmp_root / model_dir))
        rows, errors = _outputs(s3, bucket, prefix)
        assert errors == [] and [r["id"] for r in rows] == names
        for row in rows:
            expected = detector(Image.open(io.BytesIO(gallery[row["id"]])), threshold=0.0)
            assert len(row["objects"]) == len(expected) > 0
            for got, want in zip(row["objects"], expected, strict=True):
                assert got["label"] == want["label"]
                assert abs(got["score"] - want["score"]) <= 1e-5
                # the pipeline truncates its boxes to whole pixels
                pipe_box = [want["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
                assert all(0 <= g - w < 1 + 1e-5 for g, w in zip(got["box"], pipe_box, strict=True))
        # The rotated JPEG's boxes are in its upright frame: 30 wide, 60 high.
        rotated = next(r for r in rows if r["id"] == "g-rotated.jpg")
        assert max(o["box"][2] for o in rotated["objects"]) <= 30 + 1e-3


def test_image_embed_is_the_pooled_feature(
    api: Any,
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    vit_uri: str,
    tmp_root: Path,
    worker: Any,
) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    gallery = _gallery()
    for key in ("a.png", "b.jpg", "f.gif"):
        _put(s3, bucket, f"emb/{key}", gallery[key])
    job = _submit(
        api,
        auth,
        inference_spec(
            vit_uri,
            f"s3://{bucket}/emb/",
            f"s3://{bucket}/emb-out/",
            task="image_embed",
            params={"normalize": True},
        ),
    )
    assert job["status"] == "succeeded", job
    rows, _ = _outputs(s3, bucket, "emb-out")
    processor = AutoImageProcessor.from_pretrained(str(tmp_root / "vit"))
    model = AutoModel.from_pretrained(str(tmp_root / "vit")).eval()
    for row in rows:
        image = Image.open(io.BytesIO(gallery[row["id"]])).convert("RGB")
        with torch.no_grad():
            hidden = model(**processor(images=image, return_tensors="pt")).last_hidden_state
        want = torch.nn.functional.normalize(hidden[:, 0], dim=1)[0]  # no pooler weights: CLS
        assert torch.allclose(torch.tensor(row["embedding"]), want, atol=1e-5)


def test_parquet_parts_of_image_tasks(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, vit_uri: str, worker: Any
) -> None:
    """Rows of one part differ (the labels top_k keeps; images with and without faces): a
    Parquet part holds them all, with one schema per task."""
    for name in ("astronaut.png", "coffee.png"):
        _put(s3, bucket, f"pq/{name}", photo(name))
    faces = _submit(
        api,
        auth,
        inference_spec(
            "builtin:face-haar",
            f"s3://{bucket}/pq/",
            f"s3://{bucket}/pq-faces/",
            task="detect",
            output_format="parquet",
            batch_size=1,
        ),
    )
    gallery = _gallery()
    for key, body in gallery.items():
        _put(s3, bucket, f"gallery-pq/{key}", body)
    labels = _submit(
        api,
        auth,
        inference_spec(
            vit_uri,
            f"s3://{bucket}/gallery-pq/",
            f"s3://{bucket}/pq-labels/",
            task="image_classify",
            output_format="parquet",
            batch_size=1,  # windows of 4 images: a part written in several row batches
            params={"top_k": 1},
        ),
    )
    assert faces["status"] == "succeeded", faces
    assert labels["status"] == "succeeded", labels
    rows = read_parquet(s3, bucket, "pq-faces/part-00000.parquet")
    assert [r["id"] for r in rows] == ["astronaut.png", "coffee.png"]
    assert len(rows[0]["objects"]) == 1 and rows[1]["objects"] == []
    rows = read_parquet(s3, bucket, "pq-labels/part-00000.parquet")
    assert len(rows) == len(gallery)
    assert all(r["scores"] == [(r["label"], r["score"])] for r in rows)


def test_bad_images_are_per_record_errors_and_the_job_goes_on(
    api: Any, s3: Any, database_url: str, vit_uri: str, models_bucket: str, worker: Any
) -> None:
    """Truncated JPEG, random bytes named .png, a 30000x30000 PNG header, zero bytes: each an
    error with its key and reason. A record naming an image outside its tenant's read scopes
    is an error too, and is never fetched."""
    from db.models import Tenant
    from db.session import session_scope

    tenant = f"img-{uuid.uuid4().hex[:8]}"
    own = f"own-{uuid.uuid4().hex[:10]}"
    other = f"other-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=own)
    s3.create_bucket(Bucket=other)
    key = new_key(database_url, tenant)
    with session_scope(database_url) as session:
        session.execute(
            update(Tenant)
            .where(Tenant.name == tenant)
            .values(
                read_scopes=[f"s3://{own}/", f"s3://{models_bucket}/"],
                write_scopes=[f"s3://{own}/"],
            )
        )
    auth = {"Authorization": f"Bearer {key}"}
    good = encode(random_rgb(20, 20, 1), "PNG")
    bad = {
        "2-truncated.jpg": truncated_jpeg(),
        "3-random.png": random_bytes(),
        "4-bomb.png": png_header_only(30000, 30000),
        "5-empty.png": b"",
    }
    for name, body in {"1-good.png": good, **bad}.items():
        _put(s3, own, f"in/{name}", body)
    job = _submit(
        api,
        auth,
        inference_spec(
            vit_uri,
            f"s3://{own}/in/",
            f"s3://{own}/out/",
            task="image_classify",
            max_failed_ratio=1.0,
        ),
    )
    assert job["status"] == "succeeded", job
    rows, errors = _outputs(s3, own, "out")
    assert [r["id"] for r in rows] == ["1-good.png"]
    by_id = {e["id"]: e for e in errors}
    assert sorted(by_id) == sorted(bad)
    assert "truncated" in by_id["2-truncated.jpg"]["error"]
    assert "not an image" in by_id["3-random.png"]["error"]
    assert "decompression bomb" in by_id["4-bomb.png"]["error"]
    assert "zero bytes" in by_id["5-empty.png"]["error"]
    assert all(e["source"] == f"s3://{own}/in/{e['id']}" for e in errors)

    secret = _put(s3, other, "secret.png", good)
    data = put_jsonl(
        s3,
        own,
        "refs.jsonl",
        [
            {"id": "mine", "image": f"s3://{own}/in/1-good.png"},
            {"id": "theirs", "image": secret},
            {"id": "dotted", "image": f"s3://{own}/in/../../{other}/secret.png"},
            {"id": "text", "image": "not base64!"},
            {"id": "missing", "image": f"s3://{own}/in/nope.png"},
        ],
    )
    job = _submit(
        api,
        auth,
        {
            **inference_spec(vit_uri, data, f"s3://{own}/refs-out/", task="image_classify"),
            "image_field": "image",
            "id_field": "id",
            "max_failed_ratio": 1.0,
        },
    )
    assert job["status"] == "succeeded", job
    rows, errors = _outputs(s3, own, "refs-out")
    assert [r["id"] for r in rows] == ["mine"]
    by_id = {e["id"]: e for e in errors}
    assert (
        "outside the storage" in by_id["theirs"]["error"]
        and "not fetched" in by_id["theirs"]["error"]
    )
    assert by_id["theirs"]["line"] == 2 and by_id["theirs"]["source"] == data
    assert "dotted" in by_id and "missing" in by_id and "neither" in by_id["text"]["error"]


def test_image_submissions_are_checked(
    api: Any, auth: dict[str, str], s3: Any, bucket: str, vit_uri: str
) -> None:
    put_jsonl(s3, bucket, "t/x.jsonl", [{"id": 1, "text": "hi"}])
    cases = [
        (
            inference_spec(
                vit_uri, f"s3://{bucket}/t/", f"s3://{bucket}/o1/", task="image_classify"
            ),
            "input",
        ),
        (
            {
                **inference_spec(
                    vit_uri, f"s3://{bucket}/t/x.jsonl", f"s3://{bucket}/o2/", task="image_classify"
                ),
                "image_field": "img",
            },
            "image_field",
        ),
        (
            inference_spec(
                "builtin:face-haar",
                f"s3://{bucket}/t/",
                f"s3://{bucket}/o3/",
                task="image_classify",
            ),
            None,
        ),
        (
            {
                **inference_spec(
                    vit_uri, f"s3://{bucket}/t/x.jsonl", f"s3://{bucket}/o4/", task="embed"
                ),
                "image_field": "img",
            },
            None,
        ),
    ]
    for spec, field in cases:
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 422, (spec, r.text)
        if field:
            assert r.json().get("field") == field, r.text
