"""ONNX models: a user's own network (``model.onnx``) run by onnxruntime over the record fields
its ``barge.json`` names (``barge.onnxdirs``): numeric features, a text field through the
directory's tokenizer, an image field through simple preprocessing (decode, convert, resize,
scale, normalise).

``OnnxRunner.read`` turns one record into that model's inputs, or says why it cannot (a
per-record error naming the record's field); ``OnnxRunner.predict`` runs a batch of them on the
first axis (in batches of the graph's own size when it was exported with a fixed one) and reads
the output as its meaning says: ``regress`` → ``value`` (or ``values``), ``classify`` →
``label``, ``score``, ``scores``, ``embed`` → ``embedding``.

Only the CPU provider, or CUDA's where onnxruntime has it and the worker's device is not the
CPU; no custom-operator library is ever registered, and the graph is checked
(``barge.onnxdirs.check_graph``) before a session is made of the very bytes checked, a session
that can read no file (``inference_session``). A record whose output holds more than
``BARGE_ONNX_MAX_OUTPUT_VALUES`` values is refused (``OutputTooLarge``) before it is read.

Imports: ``barge`` only; never ``api`` or ``cli``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, excerpt, without_paths
from barge.onnxdirs import (
    CONFIG_FILE,
    ONNX_FILE,
    FeatureInput,
    ImageInput,
    OnnxConfig,
    Signature,
    TextInput,
    check_graph,
    fixed_batch_size,
    output_too_large,
    parse_config,
)
from barge.records.tabular import feature_vector
from barge.settings import Settings
from worker.models.loaded import LoadedModel

MAX_IMAGE_PIXELS = 40_000_000  # of one decoded image; a larger one is a per-record error
NUMPY_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "int32": "int32"}
# The directory onnxruntime resolves a tensor's external data against, for a model loaded from
# a file or from bytes (for bytes, the process's working directory when not set).
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


class OutputTooLarge(ValueError):
    """A batch's output holds more values per record than ``BARGE_ONNX_MAX_OUTPUT_VALUES``:
    a record that still gives it, run alone, is a per-record error with this message."""


def is_onnx_dir(path: Path) -> bool:
    return (path / ONNX_FILE).is_file()


def providers(settings: Settings) -> list[str]:
    """onnxruntime's execution providers for this worker: CUDA first where it is available and
    the worker's device is not forced to the CPU."""
    import onnxruntime as ort

    wanted = (settings.device or "cuda").split(":")[0]
    if wanted == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def inference_session(data: bytes, settings: Settings) -> Any:
    """An onnxruntime session of ``data`` (the bytes that were checked) that reads no file.

    onnxruntime has no switch that turns external data off; it resolves each tensor's external
    data against ``EXTERNAL_DATA_FOLDER`` (refusing absolute paths and paths that leave it), so
    that folder is an empty directory of this call's own, gone once the session is made (which
    is when initializers are read): never the worker's working directory, nor the model's
    cache directory."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's threads spin after each run by default; between runs this worker's threads
    # read and check records, and spinning threads would take their cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # As many intra-op threads as the worker process computes with (torch's own count: the
    # cores it has, or what OMP_NUM_THREADS gives it), not onnxruntime's guess from the host.
    options.intra_op_num_threads = compute_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="barge-onnx-") as empty:
        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, empty)
        return ort.InferenceSession(data, options, providers=providers(settings))


def compute_threads() -> int:
    """The threads this worker process computes with: torch's count (the cores the process
    may use, or ``OMP_NUM_THREADS``)."""
    import torch

    return max(1, torch.get_num_threads())


@dataclass
class _Feed:
    """How to build one graph input's array."""

    name: str
    dtype: str  # numpy dtype name
    length: int | None = None  # fixed token length of a text input


class OnnxRunner:
    """One loaded ONNX model: its session, its barge.json, and how records become inputs."""

    def __init__(
        self,
        session: Any,
        config: OnnxConfig,
        sig: Signature,
        tokenizer: Any,
        *,
        max_text_chars: int,
        max_output_values: int,
        device_type: str,
    ):
        self.session = session
        self.config = config
        self.sig = sig
        self.tokenizer = tokenizer
        self.max_text_chars = max_text_chars
        self.max_output_values = max_output_values
        self.device_type = device_type
        self.batch_size = fixed_batch_size(config, sig)
        self.output = config.output
        self.feeds: dict[str, _Feed] = {}
        for t in sig.inputs:
            length = t.shape[1] if t.shape and len(t.shape) == 2 else None
            self.feeds[t.name] = _Feed(
                t.name,
                NUMPY_TYPES.get(t.dtype, "int64" if t.dtype == "int64" else "float32"),
                length if isinstance(length, int) else None,
            )

    @classmethod
    def load(cls, path: Path, task: str, settings: Settings, ref: str) -> OnnxRunner:
        """Check the directory and make an onnxruntime session for it."""
        config = parse_config((path / CONFIG_FILE).read_bytes(), ref)
        if config.task != task:
            raise PermanentJobError(
                f"model {ref} is an ONNX model whose barge.json output means "
                f"{config.task!r}; the job's task is {task!r}"
            )
        onnx_path = path / ONNX_FILE
        size = onnx_path.stat().st_size
        if size > settings.onnx_max_bytes:
            raise PermanentJobError(
                f"model {ref}: {ONNX_FILE} is {size:,} bytes, more than the limit of "
                f"{settings.onnx_max_bytes:,} (BARGE_ONNX_MAX_BYTES)"
            )
        data = onnx_path.read_bytes()
        sig = check_graph(settings, config, data, ref)
        tokenizer = None
        try:
            for binding in config.inputs:
                if isinstance(binding, TextInput):
                    tokenizer = _tokenizer(path / binding.tokenizer, ref)
            session = inference_session(data, settings)
        except (SoftTimeLimitExceeded, PermanentJobError):
            raise
        except Exception as exc:
            raise PermanentJobError(
                f"cannot load ONNX model {ref}: {excerpt(without_paths(str(exc)), 500)}"
            ) from exc
        used = session.get_providers()
        device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        return cls(
            session,
            config,
            sig,
            tokenizer,
            max_text_chars=settings.max_text_chars,
            max_output_values=settings.onnx_max_output_values,
            device_type=device,
        )

    # --- records -------------------------------------------------------------------------------

    def read(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The model's inputs of one record (graph input name → value), or why it cannot run."""

        out: dict[str, Any] = {}
        for binding in self.config.inputs:
            if isinstance(binding, FeatureInput):
                values, problem = feature_vector(row, binding.feature_fields)
                if problem is not None:
                    return None, problem
                out[binding.input] = values  # a list: the batch becomes one array at once
            elif isinstance(binding, TextInput):
                field = binding.text_field
                text = row.get(field)
                if field not in row:
                    return None, f"record has no field {field!r}"
                if not isinstance(text, str):
                    return None, f"field {field!r} is {type(text).__name__}, expected a string"
                if len(text) > self.max_text_chars:
                    return None, (
                        f"field {field!r} has {len(text)} characters, more than the limit of "
                        f"{self.max_text_chars} (BARGE_MAX_TEXT_CHARS)"
                    )
                out[binding.input_ids] = text
            else:
                image, problem = decode_image(row, binding)
                if problem is not None:
                    return None, problem
                out[binding.input] = image
        return out, None

    # --- batches -------------------------------------------------------------------------------

    def predict(self, records: list[dict[str, Any]], params: Any) -> list[dict[str, Any]]:
        """Run records (from ``read``) through the graph; one result per record, in order."""
        if not records:
            return []
        return self.predict_arrays(self._feeds(records, params), len(records), params)

    def predict_arrays(self, feeds: dict[str, Any], n: int, params: Any) -> list[dict[str, Any]]:
        """Run ``n`` records given as arrays (graph input name -> [n, ...]) through the graph;
        one result per record, in order."""
        if not n:
            return []
        return self._results(self._run(feeds, n), params)

    def predict_columns(self, feeds: dict[str, Any], n: int, params: Any) -> dict[str, Any]:
        """``predict_arrays`` as result columns, one value per record, with no Python object
        per record: ``value`` [n] or ``values`` [n, k] (regress), ``embedding`` [n, k] (embed),
        ``label`` (an Arrow string array), ``score`` [n] and ``scores`` (an Arrow map label ->
        score) for classify."""
        import numpy as np
        import pyarrow as pa

        columns = self._columns(self._run(feeds, n), params)
        if "scores" in columns:
            rows = columns["scores"]
            k = rows.shape[1]
            names = pa.array(self._score_names(k), pa.string())
            columns["label"] = names.take(pa.array(columns["label"]))
            columns["scores"] = pa.MapArray.from_arrays(
                pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                pa.concat_arrays([names] * n) if n else names[:0],
                pa.array(rows.reshape(-1)),
            )
        return columns

    def _run(self, feeds: dict[str, Any], n: int) -> Any:
        """The graph's output for ``n`` records, in batches of its fixed size when it has one
        (the last padded with copies of its last record, whose outputs are dropped)."""
        import numpy as np

        step = self.batch_size or n
        rows: list[Any] = []
        for start in range(0, n, step):
            size = min(step, n - start)
            chunk = {}
            for name, array in feeds.items():
                part = np.asarray(array[start : start + size], dtype=self.feeds[name].dtype)
                if self.batch_size and size < step:
                    part = np.concatenate([part, np.repeat(part[-1:], step - size, axis=0)])
                chunk[name] = part
            (result,) = self.session.run([self.output.name], chunk)
            values = math.prod(np.shape(result)[1:])
            if values > self.max_output_values:
                raise OutputTooLarge(
                    f"output {self.output.name!r} gives "
                    f"{output_too_large(values, self.max_output_values)}"
                )
            rows.append(np.asarray(result)[:size])
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def token_lengths(self, records: list[dict[str, Any]], params: Any) -> list[int] | None:
        """Each record's tokens as its batch pads them (the longest of its text inputs; a
        fixed-length input's length), for token-budget batches; None for a model with inputs
        other than text (their batches keep a fixed count)."""
        bindings = self.config.inputs
        if not bindings or not all(isinstance(b, TextInput) for b in bindings):
            return None
        lengths = [0] * len(records)
        for binding in bindings:
            assert isinstance(binding, TextInput)
            feed = self.feeds[binding.input_ids]
            if feed.length is not None:
                found = [feed.length] * len(records)
            else:
                keep = min(
                    binding.max_length, int(getattr(params, "max_length", binding.max_length))
                )
                tok = self.tokenizer
                tok.no_padding()
                tok.enable_truncation(max_length=keep)
                found = [
                    len(e.ids) for e in tok.encode_batch([r[binding.input_ids] for r in records])
                ]
            lengths = [max(a, b) for a, b in zip(lengths, found, strict=True)]
        return lengths

    def _feeds(self, records: list[dict[str, Any]], params: Any) -> dict[str, Any]:
        import numpy as np

        feeds: dict[str, Any] = {}
        for binding in self.config.inputs:
            if isinstance(binding, TextInput):
                feeds.update(self._tokens(binding, [r[binding.input_ids] for r in records], params))
                continue
            feed = self.feeds[binding.input]
            feeds[binding.input] = np.asarray([r[binding.input] for r in records], dtype=feed.dtype)
        return feeds

    def _tokens(self, binding: TextInput, texts: list[str], params: Any) -> dict[str, Any]:
        import numpy as np

        feed = self.feeds[binding.input_ids]
        keep = min(binding.max_length, int(getattr(params, "max_length", binding.max_length)))
        tok = self.tokenizer
        if feed.length is not None:
            keep = feed.length
            tok.enable_padding(pad_id=_pad_id(tok), length=feed.length)
        else:
            tok.enable_padding(pad_id=_pad_id(tok))
        tok.enable_truncation(max_length=keep)
        encodings = tok.encode_batch(texts)
        out = {binding.input_ids: np.asarray([e.ids for e in encodings], dtype=feed.dtype)}
        if binding.attention_mask:
            out[binding.attention_mask] = np.asarray(
                [e.attention_mask for e in encodings],
                dtype=self.feeds[binding.attention_mask].dtype,
            )
        if binding.token_type_ids:
            out[binding.token_type_ids] = np.asarray(
                [e.type_ids for e in encodings], dtype=self.feeds[binding.token_type_ids].dtype
            )
        return out

    def _columns(self, output: Any, params: Any) -> dict[str, Any]:
        """The output as its meaning reads it, in numpy columns (``label`` the index of the
        best score: the first of equal ones)."""
        import numpy as np

        meaning = self.output.meaning
        values = np.asarray(output, dtype=np.float64)
        if meaning == "regress":
            if values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1):
                return {"value": values.reshape(len(values))}
            return {"values": values.reshape(len(values), -1)}
        rows = values.reshape(len(values), -1)
        if meaning == "embed":
            if getattr(params, "normalize", False):
                norms = np.linalg.norm(rows, axis=1, keepdims=True)
                rows = rows / np.maximum(norms, 1e-12)
            return {"embedding": rows}
        if self.output.scores == "logits":
            shifted = rows - rows.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            rows = exp / exp.sum(axis=1, keepdims=True)
        best = rows.argmax(axis=1) if rows.shape[1] else np.zeros(len(rows), dtype=np.int64)
        return {"label": best, "score": rows[np.arange(len(rows)), best], "scores": rows}

    def _score_names(self, k: int) -> list[str]:
        labels = self.output.labels or []
        return [labels[i] if i < len(labels) else str(i) for i in range(k)]

    def _results(self, output: Any, params: Any) -> list[dict[str, Any]]:
        """The output as one result dict per record (``_columns``' values)."""
        columns = self._columns(output, params)
        if "scores" not in columns:
            ((name, column),) = columns.items()
            return [{name: v} for v in column.tolist()]
        rows = columns["scores"].tolist()
        names = self._score_names(columns["scores"].shape[1])
        return [
            {"label": names[best], "score": score, "scores": dict(zip(names, row, strict=True))}
            for best, score, row in zip(
                columns["label"].tolist(), columns["score"].tolist(), rows, strict=True
            )
        ]


def _tokenizer(path: Path, ref: str) -> Any:
    from tokenizers import Tokenizer

    if not path.is_file():
        raise PermanentJobError(f"model {ref}: barge.json names {path.name}, which is missing")
    return Tokenizer.from_file(str(path))


def _pad_id(tok: Any) -> int:
    padding = tok.padding
    if padding and isinstance(padding.get("pad_id"), int):
        return int(padding["pad_id"])
    for token in ("<pad>", "[PAD]"):
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def decode_image(row: dict[str, Any], binding: ImageInput) -> tuple[Any, str | None]:
    """The image in ``row[binding.image_field]`` (bytes, or base64 text, with or without a
    ``data:`` prefix) as a normalised float array [channels, height, width], or why not."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    field = binding.image_field
    if field not in row:
        return None, f"record has no image field {field!r}"
    value = row[field]
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None, f"image field {field!r} is text that is not base64: {excerpt(value, 40)}"
    else:
        return None, f"image field {field!r} is {type(value).__name__}, expected bytes or base64"
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                return None, (
                    f"image field {field!r} is {width}x{height} pixels, more than "
                    f"{MAX_IMAGE_PIXELS:,}"
                )
            converted = image.convert(binding.mode)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"image field {field!r} is not an image Barge can decode: {excerpt(exc, 200)}"
    target_h, target_w = binding.size
    if converted.size != (target_w, target_h):
        converted = converted.resize((target_w, target_h), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.float32) / 255.0
    array = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    mean = np.asarray(binding.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(binding.std, dtype=np.float32)[:, None, None]
    result = (array - mean) / std
    if not math.isfinite(float(result.sum())):
        return None, f"image field {field!r} gives non-finite values"
    return result, None


def load_onnx(path: Path, task: str, settings: Settings, ref: str, revision: str) -> LoadedModel:
    """An ONNX model directory as a loaded model."""
    import torch

    started = time.monotonic()
    runner = OnnxRunner.load(path, task, settings, ref)
    return LoadedModel(
        task,
        runner,
        None,
        torch.device(runner.device_type),
        ref,
        revision,
        time.monotonic() - started,
        read=runner.read,
    )
