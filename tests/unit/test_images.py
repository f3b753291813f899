"""Images as records, without services: decoding within bounds, where an image comes from, the
listing of an image prefix, and the specs of the image tasks."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from barge.records.images import (
    ImageError,
    decode_image,
    image_source,
    is_image_key,
    list_images,
    write_listing,
)
from barge.specs import parse_spec
from barge.storage import LocalStore, S3Uri
from tests.images import (
    encode,
    png_header_only,
    random_bytes,
    random_rgb,
    truncated_jpeg,
    with_exif_orientation,
)

PIXELS = 10**8


class TestDecode:
    def test_formats_decode_to_the_models_mode(self) -> None:
        image = random_rgb(30, 20, 1)
        for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"):
            decoded = decode_image(encode(image, fmt), "RGB", PIXELS)
            assert decoded.size == (30, 20) and decoded.mode == "RGB", fmt
        assert decode_image(encode(image, "PNG"), "L", PIXELS).mode == "L"

    def test_exif_orientation_is_applied(self) -> None:
        assert decode_image(with_exif_orientation(random_rgb(40, 20, 2)), "RGB", PIXELS).size == (
            20,
            40,
        )

    def test_gif_keeps_its_first_frame(self) -> None:
        import io

        frames = [random_rgb(10, 10, 3), random_rgb(10, 10, 4)]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
        first = decode_image(encode(frames[0], "GIF"), "RGB", PIXELS)
        assert decode_image(buf.getvalue(), "RGB", PIXELS).tobytes() == first.tobytes()

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"", "zero bytes"),
            (random_bytes(), "not an image"),
            (truncated_jpeg(), "truncated"),
            (png_header_only(30000, 30000), "decompression bomb"),
        ],
    )
    def test_bad_images_say_why(self, data: bytes, reason: str) -> None:
        with pytest.raises(ImageError, match=reason):
            decode_image(data, "RGB", PIXELS)

    def test_the_pixel_limit_is_barges_own(self) -> None:
        with pytest.raises(ImageError, match="1,200 pixels, more than BARGE_MAX_IMAGE_PIXELS"):
            decode_image(encode(random_rgb(40, 30, 5), "PNG"), "RGB", 1000)
        with pytest.raises(ImageError, match="truncated"):  # within the limit: decoded, and short
            decode_image(png_header_only(300, 300), "L", PIXELS)

    def test_open_reads_the_header_only(self) -> None:
        from barge.records.images import load_image, open_image

        opened = open_image(png_header_only(300, 200), PIXELS)  # a header and no pixels
        assert opened.size == (300, 200)
        with pytest.raises(ImageError, match="truncated"):
            load_image(opened, "L")
        opened = open_image(encode(random_rgb(40, 30, 5), "PNG"), PIXELS)
        assert load_image(opened, "RGB").tobytes() == random_rgb(40, 30, 5).tobytes()


class TestPixelBudget:
    """What a worker process decodes at once (``worker.runners.images.PixelBudget``)."""

    def test_holds_never_exceed_the_budget_and_a_large_image_goes_alone(self) -> None:
        import threading
        import time
        from concurrent.futures import ThreadPoolExecutor

        from worker.runners.images import PixelBudget

        budget = PixelBudget(100)
        lock = threading.Lock()
        held: list[int] = []
        seen: list[tuple[int, int]] = []  # (pixels asked, pixels held by all at that moment)

        def decode(pixels: int) -> int:
            with budget.hold(pixels) as got:
                with lock:
                    held.append(got)
                    seen.append((pixels, sum(held)))
                time.sleep(0.02)
                with lock:
                    held.remove(got)
            return got

        asks = [60, 60, 30, 250, 10, 40, 100, 5]
        with ThreadPoolExecutor(4) as pool:
            granted = list(pool.map(decode, asks))
        assert granted == [min(p, 100) for p in asks]
        assert max(total for _, total in seen) <= 100
        assert all(total == 100 for asked, total in seen if asked >= 100)  # alone
        assert budget.used == 0

    def test_decodes_wait_their_turn(self) -> None:
        import threading
        import time

        from worker.runners.images import PixelBudget

        budget = PixelBudget(10)
        order: list[str] = []

        def decode(pixels: int, name: str) -> None:
            with budget.hold(pixels):
                order.append(name)

        with budget.hold(8):
            big = threading.Thread(target=decode, args=(10, "big"))
            big.start()
            time.sleep(0.1)  # the big decode waits for the 8 held
            small = threading.Thread(target=decode, args=(1, "small"))
            small.start()
            time.sleep(0.1)
            assert order == []  # the small one, which would fit, does not pass the big one
        big.join(5)
        small.join(5)
        assert order == ["big", "small"]


class TestSource:
    def test_bytes_base64_data_urls_and_uris(self) -> None:
        raw = b"\x89PNG..."
        assert image_source(raw, "f").data == raw
        assert image_source(base64.b64encode(raw).decode(), "f").data == raw
        url = "data:image/png;base64," + base64.b64encode(raw).decode()
        assert image_source(url, "f").data == raw
        assert image_source("s3://bkt/k/x.png", "f").uri == "s3://bkt/k/x.png"

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (None, "null"),
            (3, "int"),
            ("not base64!", "neither"),
            ("data:text/plain,hello", "not base64"),
            ("s3://bkt/a/../../other/x.png", "f"),
        ],
    )
    def test_what_is_not_an_image_source(self, value: object, reason: str) -> None:
        with pytest.raises(ImageError, match=reason):
            image_source(value, "f")


class TestListing:
    def test_a_prefix_lists_its_images_by_relative_key(self, tmp_path: Path) -> None:
        store = LocalStore(tmp_path)
        for key in ("p/b.png", "p/a.JPG", "p/sub/c.webp", "p/notes.txt", "p/_x.png", "q/d.png"):
            store.put_bytes(S3Uri.parse(f"s3://bk/{key}"), b"x")
        assert [i for i, _ in list_images(store, "s3://bk/p/")] == ["a.JPG", "b.png", "sub/c.webp"]
        assert [i for i, _ in list_images(store, "s3://bk/p/b.png")] == ["b.png"]
        listing, count = write_listing(store, "s3://bk/p", "s3://bk/out/")
        assert count == 3 and listing.uri.key.startswith("out/_inputs/images-")
        rows = [json.loads(line) for line in store.get_bytes(listing.uri).decode().splitlines()]
        a = store.head(S3Uri.parse("s3://bk/p/a.JPG"))
        assert a is not None
        assert rows[0] == {"id": "a.JPG", "image": "s3://bk/p/a.JPG", "etag": a.etag}
        assert not is_image_key("p/readme.md") and is_image_key("p/x.TIFF")


class TestSpecs:
    BASE: ClassVar[dict[str, str]] = {"input": "s3://bkt/in/", "output": "s3://bkt/out/"}

    def test_image_tasks_and_their_params(self) -> None:
        spec = parse_spec({**self.BASE, "model": "m", "task": "image_classify"})
        assert spec.reads_image_objects and spec.task_params().top_k is None  # type: ignore[union-attr]
        spec = parse_spec(
            {**self.BASE, "model": "builtin:face-haar", "task": "detect", "image_field": "img"}
        )
        assert not spec.reads_image_objects  # type: ignore[union-attr]
        assert spec.task_params().threshold == 0.5  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "data",
        [
            {"model": "builtin:face-haar", "task": "image_classify"},
            {"model": "builtin:nope", "task": "detect"},
            {"model": "m", "task": "embed", "image_field": "img"},
            {"model": "m", "task": "detect", "params": {"top_k": 3}},
        ],
    )
    def test_refused(self, data: dict[str, object]) -> None:
        with pytest.raises(ValidationError):
            parse_spec({**self.BASE, **data})

    def test_finetune_only_what_can_be_tuned(self) -> None:
        base = {"type": "finetune", "train": "s3://bkt/t.jsonl", "model_name": "n"}
        assert parse_spec({**base, "base_model": "m", "task": "image_classify"}).fields == (  # type: ignore[union-attr]
            "image",
            "label",
        )
        for bad in (
            {"base_model": "m", "task": "detect"},
            {"base_model": "builtin:face-haar", "task": "image_classify"},
        ):
            with pytest.raises(ValidationError):
                parse_spec({**base, **bad})


def test_an_image_classifier_checkpoint_round_trip_continues_exactly(tmp_path: Path) -> None:
    """A fine-tune of image_classify resumed from a mid-epoch checkpoint ends with the same
    weights (BatchNorm statistics included) as one that never stopped."""
    import torch

    from barge.records.images import read_image
    from barge.specs import FinetuneSpec
    from tests.images import digits, tiny_resnet
    from worker.runners.finetune.training import Trainer

    base = tiny_resnet(tmp_path / "base", size=16)
    pngs, targets = digits()
    rows = [
        (base64.b64encode(p).decode(), str(t)) for p, t in zip(pngs[:40], targets[:40], strict=True)
    ]
    labels = sorted({label for _, label in rows})
    spec = FinetuneSpec.model_validate(
        {
            "type": "finetune",
            "base_model": "s3://bkt/base/",
            "task": "image_classify",
            "train": "s3://bkt/train.jsonl",
            "model_name": "digits",
            "hyperparameters": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "seed": 3},
        }
    )

    def trainer() -> Trainer:
        t = Trainer(spec, base, torch.device("cpu"), rows, labels)
        t.load_images(
            [image for image, _ in rows],
            lambda value, mode: read_image(
                None,  # type: ignore[arg-type]
                value,
                "image",
                may_read=None,
                max_bytes=2**20,
                max_pixels=PIXELS,
                mode=mode,
            ),
            2,
        )
        return t

    straight = trainer()
    while not straight.done:
        straight.train_step()
    stopped = trainer()
    for _ in range(3):  # mid-epoch
        stopped.train_step()
    stopped.save_checkpoint(tmp_path / "ckpt", {})
    resumed = trainer()
    assert resumed.load_checkpoint(tmp_path / "ckpt")["step"] == 3
    while not resumed.done:
        resumed.train_step()
    assert resumed.step == straight.step == 10
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    saved = straight.save_model(tmp_path / "model")
    assert "preprocessor_config.json" in {p.name for p in saved}
