"""Image models: load one for an image task, prepare one decoded image for it (on a decoding
thread), and predict one batch (the face cascade runs at preparation).

- ``image_classify``: ``AutoModelForImageClassification``; softmax (sigmoid for one label or a
  multi-label model, as ``transformers.pipeline("image-classification")`` does); ``label``,
  ``score`` and ``scores`` (the ``top_k`` best, best first).
- ``image_embed``: ``AutoModel``'s pooled output (its pooler when the weights hold one; else
  the first token of a sequence model, or the spatial mean of a convolutional one), optionally
  L2-normalised.
- ``detect``: ``AutoModelForObjectDetection`` (DETR, YOLOS, ...) through its image processor's
  ``post_process_object_detection``, boxes in pixels of the original image; or the built-in
  ``builtin:face-haar``, OpenCV's frontal-face Haar cascade (shipped inside
  opencv-python-headless), on the image in grey.

The image processor (``preprocessor_config.json`` beside the weights) prepares each image
alone, so a batch holds images whose prepared tensors have the same shape (``shape_key``): no
padding, and each image's result is what it would be on its own.

Imports: ``barge``, ``worker.models.hf``, ``worker.models.loaded``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, without_paths
from barge.specs import BUILTIN_MODELS
from worker.models import hf
from worker.models.loaded import LoadedModel

HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.1
FACE_LABEL = "face"


@dataclass
class VisionModel(LoadedModel):
    """A loaded image model: ``processor`` prepares images, ``mode`` is the PIL mode images are
    converted to; ``cascade`` is set for ``builtin:face-haar`` (``model`` is None then)."""

    processor: Any = None
    mode: str = "RGB"
    cascade: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    has_pooler: bool = False
    problem_type: str = "single_label_classification"
    meta: dict[str, Any] = field(default_factory=dict)

    def prepare(self, image: Any, params: Any) -> Any:
        """One decoded image as the model's input: a dict of tensors (batch of one). The
        cascade needs the whole image, so it runs now and its ``Found`` faces wait for the
        batch instead of the full-size pixels (one image at a time: a cascade is not
        thread-safe). Runs on the decoding threads."""
        if self.cascade is not None:
            import numpy as np

            gray = np.asarray(image, dtype=np.uint8)
            with self.lock:
                return Found(_faces(self, gray, params))
        prepared = self.processor(images=image, return_tensors="pt")
        return {k: v for k, v in prepared.items() if hasattr(v, "shape")}


@dataclass(frozen=True)
class Found:
    """What a model that runs at preparation (the cascade) found in one image."""

    result: dict[str, Any]


def result_schema(task: str) -> Any:
    """The result columns of a Parquet part, fixed per task (rows differ: the labels ``top_k``
    keeps, images with no objects): ``scores`` a map label -> probability, best first;
    ``objects`` a list of {label, score, box}."""
    import pyarrow as pa

    if task == "image_classify":
        return pa.schema(
            [
                ("label", pa.string()),
                ("score", pa.float64()),
                ("scores", pa.map_(pa.string(), pa.float64())),
            ]
        )
    if task == "image_embed":
        return pa.schema([("embedding", pa.list_(pa.float32()))])  # fixed-size at the first rows
    box = pa.struct(
        [("label", pa.string()), ("score", pa.float64()), ("box", pa.list_(pa.float64()))]
    )
    return pa.schema([("objects", pa.list_(box))])


def shape_key(inputs: Any) -> tuple[Any, ...]:
    """Inputs that can share a batch have equal keys."""
    if isinstance(inputs, dict):
        return tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items()))
    return ("found",)  # the cascade ran at preparation


def load_vision_model(path: Path, task: str, device: Any, ref: str, revision: str) -> VisionModel:
    started = time.monotonic()
    if ref in BUILTIN_MODELS:
        return _load_haar(task, device, ref, revision, started)
    import transformers

    model_class = hf.model_class(task)
    hf.check_config_fits_weights(path, model_class, ref)
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            str(path), local_files_only=True
        )
        model, info = model_class.from_pretrained(
            str(path),
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
            output_loading_info=True,
        )
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        raise PermanentJobError(
            f"cannot load model {ref} for task {task!r} (an image model needs config.json, "
            f"safetensors weights and preprocessor_config.json): {without_paths(str(exc))}"
        ) from exc
    model.eval().to(device)
    config = model.config
    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    missing = info.get("missing_keys", []) if isinstance(info, dict) else []
    problem_type = getattr(config, "problem_type", None)
    if problem_type is None:
        problem_type = (
            "multi_label_classification"
            if getattr(config, "num_labels", 2) == 1
            else "single_label_classification"
        )
    return VisionModel(
        task,
        model,
        None,
        device,
        ref,
        revision,
        time.monotonic() - started,
        labels,
        None,
        processor=processor,
        mode="L" if getattr(config, "num_channels", 3) == 1 else "RGB",
        has_pooler=not any("pooler" in k for k in missing),
        problem_type=problem_type,
    )


def _load_haar(task: str, device: Any, ref: str, revision: str, started: float) -> VisionModel:
    import cv2

    cascades = cv2.data.haarcascades  # type: ignore[attr-defined]
    cascade = cv2.CascadeClassifier(os.path.join(cascades, HAAR_FILE))
    if cascade.empty():
        raise PermanentJobError(f"{ref}: OpenCV's {HAAR_FILE} is missing from this worker")
    return VisionModel(
        task,
        None,
        None,
        device,
        ref,
        revision,
        time.monotonic() - started,
        {0: FACE_LABEL},
        None,
        mode="L",
        cascade=cascade,
    )


def predict_images(
    loaded: VisionModel, inputs: Sequence[Any], sizes: Sequence[tuple[int, int]], params: Any
) -> list[dict[str, Any]]:
    """Run one batch of prepared images (equal ``shape_key``); ``sizes`` are the original
    (width, height) of each. One result dict per image, in order."""
    if loaded.cascade is not None:
        return [found.result for found in inputs]
    import torch

    batch = {k: torch.cat([item[k] for item in inputs]).to(loaded.device) for k in inputs[0]}
    with torch.inference_mode(), loaded.autocast():
        if loaded.task == "image_classify":
            logits = loaded.model(**batch).logits.float()
            return [_classes(loaded, row, params) for row in logits.cpu()]
        if loaded.task == "image_embed":
            pooled = _pooled(loaded, loaded.model(**batch)).float()
            if params.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return [{"embedding": row} for row in pooled.cpu().tolist()]
        outputs = loaded.model(**batch)
        targets = torch.tensor([[h, w] for w, h in sizes])
        found = loaded.processor.post_process_object_detection(
            outputs, threshold=params.threshold, target_sizes=targets
        )
        return [
            {
                "objects": [
                    {
                        "label": loaded.labels.get(int(label), str(int(label))),
                        "score": float(score),
                        "box": [float(v) for v in box],
                    }
                    for score, label, box in zip(
                        one["scores"].float().cpu(),
                        one["labels"].cpu(),
                        one["boxes"].float().cpu(),
                        strict=True,
                    )
                ]
            }
            for one in found
        ]


def _classes(loaded: VisionModel, logits: Any, params: Any) -> dict[str, Any]:
    import torch

    if loaded.problem_type == "multi_label_classification":
        probs = torch.sigmoid(logits)
    else:
        probs = torch.softmax(logits, dim=-1)
    ranked = sorted(enumerate(probs.tolist()), key=lambda item: item[1], reverse=True)
    if params.top_k is not None:
        ranked = ranked[: params.top_k]
    names = [(loaded.labels.get(i, str(i)), p) for i, p in ranked]
    return {"label": names[0][0], "score": names[0][1], "scores": dict(names)}


def _pooled(loaded: VisionModel, out: Any) -> Any:
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None and loaded.has_pooler:
        return pooled.flatten(1)
    hidden = out.last_hidden_state
    if hidden.dim() == 4:  # convolutional: (batch, channels, height, width)
        return hidden.mean(dim=(2, 3))
    return hidden[:, 0]


def _faces(loaded: VisionModel, gray: Any, params: Any) -> dict[str, Any]:
    found = loaded.cascade.detectMultiScale(
        gray, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=params.min_neighbors
    )
    return {
        "objects": [
            {
                "label": FACE_LABEL,
                "score": 1.0,
                "box": [float(x), float(y), float(x + w), float(y + h)],
            }
            for x, y, w, h in (found if len(found) else [])
        ]
    }
