"""Images for tests: real data (scikit-learn's digits, scikit-image's sample photographs), tiny
random vision models built from a config with their image processor saved beside them, and
images that are bad in the ways users' images are."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any


def png(array: Any, mode: str | None = None) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return out.getvalue()


def encode(image: Any, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def digits(n: int | None = None) -> tuple[list[bytes], list[int]]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as PNGs, and their labels
    (the first ``n``)."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    pngs = [png((x * 255 / 16).astype(np.uint8)) for x in data.images[:n]]
    return pngs, [int(t) for t in data.target[:n]]


def photo(name: str) -> bytes:
    """A scikit-image sample photograph's file (astronaut.png, coffee.png), as shipped."""
    import skimage.data

    return (Path(skimage.data.data_dir) / name).read_bytes()


def random_rgb(width: int, height: int, seed: int) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _processor(size: dict[str, int], kind: str = "vit") -> Any:
    from transformers import ViTImageProcessor, YolosImageProcessor

    if kind == "yolos":
        return YolosImageProcessor(size=size)
    return ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def tiny_resnet(path: Path, size: int = 16, labels: int = 2) -> Path:
    """A tiny random ResNet image classifier (a fine-tune base) and a ViT-style processor."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        num_labels=labels,
        downsample_in_first_stage=False,
    )
    ResNetForImageClassification(config).save_pretrained(str(path), safe_serialization=True)
    _processor({"height": size, "width": size}).save_pretrained(str(path))
    return path


def tiny_vit(path: Path, size: int = 32, labels: tuple[str, ...] = ("cat", "dog", "owl")) -> Path:
    """A tiny random ViT image classifier with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(str(path), safe_serialization=True)
    _processor({"height": size, "width": size}).save_pretrained(str(path))
    return path


def tiny_yolos(path: Path) -> Path:
    """A tiny random YOLOS object detector with its image processor (shortest edge 48)."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection

    torch.manual_seed(0)
    labels = ("person", "cup", "rocket")
    config = YolosConfig(
        image_size=[48, 48],
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_detection_tokens=6,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    YolosForObjectDetection(config).save_pretrained(str(path), safe_serialization=True)
    _processor({"shortest_edge": 48, "longest_edge": 64}, "yolos").save_pretrained(str(path))
    return path


# --- bad images ---------------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    data = encode(random_rgb(64, 48, 7), "JPEG", quality=90)
    return data[: len(data) // 2]


def random_bytes(n: int = 2048, seed: int = 3) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def png_header_only(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (a decompression bomb's), with almost no
    data: refused from its header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def with_exif_orientation(image: Any, orientation: int = 6) -> bytes:
    """A JPEG whose EXIF says to rotate it (6: 90 degrees clockwise)."""
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif)


def tiny_detr(path: Path) -> Path:
    """A tiny random DETR (a transformers ResNet backbone: no timm) with its image processor."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    labels = ("person", "cup", "rocket")
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            layer_type="basic",
            out_features=["stage2"],
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    DetrForObjectDetection(config).save_pretrained(str(path), safe_serialization=True)
    DetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 64}).save_pretrained(str(path))
    return path
