"""Fine-tune datasets: read every training or validation record, keep the usable ones and say
exactly why each other one was not used. The fine-tune kind's plan step (on the control worker)
and its run step (``worker.runners.finetune.run``) both read the data through it: no torch.

Imports: ``barge``; never ``api`` or ``cli``."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from barge.chat import MessagesError, chat_example
from barge.errors import PermanentJobError
from barge.records import EVERYTHING, Format, format_of, iter_range, resolve_inputs
from barge.records.images import ImageError, read_image
from barge.settings import get_settings
from barge.specs import CHAT_FIELD, IMAGE_TASKS, FinetuneSpec, Hyperparameters
from barge.storage import ObjectStore, S3Uri


class Messages(str):
    """A chat example's messages, as JSON (``messages()`` parses them back). It stands where a
    legacy example has its prompt; its pair's second item is the last assistant message (what
    exact match compares a generated answer with)."""

    __slots__ = ()

    def messages(self) -> list[dict[str, str]]:
        return list(json.loads(self))

    def prompt_messages(self) -> list[dict[str, str]]:
        """The messages before the last assistant message (what a model answers)."""
        messages = self.messages()
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last]


@dataclass
class Dataset:
    """Usable examples as (first, second) pairs: (text, label), (prompt, completion) or
    (anchor, positive); ``errors`` holds one row per unusable record."""

    name: str
    examples: list[tuple[str, str]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    first_format: Format | None = None  # the format of the first object read
    decoded: dict[str, Any] = field(default_factory=dict)  # image -> decoded, if kept

    @property
    def records(self) -> int:
        return len(self.examples) + len(self.errors)

    def labels(self) -> list[str]:
        return sorted({label for _, label in self.examples})


def load_dataset(
    store: ObjectStore,
    spec: FinetuneSpec,
    name: str,
    max_text_chars: int | None = None,
    *,
    may_read: Callable[[str], bool] | None = None,
    keep_images: bool = False,
) -> Dataset:
    """Every record of ``spec.train`` (name "train") or ``spec.validation``, in key order. A text
    longer than ``max_text_chars`` (default: this process's ``BARGE_MAX_TEXT_CHARS``) makes its
    record unusable. For an image task every image is read and decoded once (``may_read``: the
    tenant's read scopes, for ``s3://`` URIs): one that cannot be used makes its record
    unusable; with ``keep_images`` the decoded images are kept in ``decoded`` (so a fine-tune
    decodes each once)."""
    uri = spec.train if name == "train" else spec.validation
    assert uri is not None
    limit = get_settings().max_text_chars if max_text_chars is None else max_text_chars
    data = Dataset(name)
    first, second = spec.fields
    images: list[tuple[tuple[str, str], str, int]] = []  # (pair, source, line) to check
    for info in resolve_inputs(store, uri, name):
        fmt = format_of(info.uri, spec.input_format)
        data.first_format = data.first_format or fmt
        for rec in iter_range(store, info, fmt, EVERYTHING):
            if rec.data is None:
                problem: str | None = rec.error or "unreadable record"
            elif spec.task == "generate" and CHAT_FIELD in rec.data:
                example, problem = chat_record(rec.data[CHAT_FIELD], limit)
                if example is not None:
                    data.examples.append(example)
                    continue
            else:
                pair, problem = _pair(rec.data, first, second, spec.task, limit)
                if pair is not None and spec.task in IMAGE_TASKS:
                    images.append((pair, str(info.uri), rec.line))
                    continue
                if pair is not None:
                    data.examples.append(pair)
                    continue
            data.errors.append({"source": str(info.uri), "line": rec.line, "error": problem})
    if images:
        _check_images(store, data, images, may_read, keep_images)
    return data


def _check_images(
    store: ObjectStore,
    data: Dataset,
    candidates: list[tuple[tuple[str, str], str, int]],
    may_read: Callable[[str], bool] | None,
    keep: bool,
) -> None:
    """Keep the examples whose image decodes (read on a few threads); the others are errors."""
    settings = get_settings()

    def problem(pair: tuple[str, str]) -> str | None:
        try:
            image = read_image(
                store,
                pair[0],
                "image",
                may_read=may_read,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
            )
        except ImageError as exc:
            return exc.message
        if keep:
            data.decoded[pair[0]] = image
        return None

    # Fetching dominates (one GET per s3:// image): a few more threads than decoding needs.
    with ThreadPoolExecutor(max(4, 2 * settings.image_decode_threads)) as pool:
        problems = list(pool.map(problem, [pair for pair, _, _ in candidates]))
    for (pair, source, line), why in zip(candidates, problems, strict=True):
        if why is None:
            data.examples.append(pair)
        else:
            data.errors.append({"source": source, "line": line, "error": why})
    data.errors.sort(key=lambda row: (row["source"], row["line"]))


def _pair(
    row: dict[str, Any], first: str, second: str, task: str, max_text_chars: int
) -> tuple[tuple[str, str] | None, str | None]:
    values = []
    for name in (first, second):
        value = row.get(name)
        if value is None or value == "":
            return None, f"record has no {name!r}"
        if name == "image" and task in IMAGE_TASKS:
            if isinstance(value, bytes | bytearray | memoryview):  # Parquet binary
                value = base64.b64encode(bytes(value)).decode("ascii")
            elif not isinstance(value, str):
                return None, f"image is {type(value).__name__}; use an s3:// URI, base64 or bytes"
        elif name == "label" and task in ("classify", "image_classify"):
            if isinstance(value, bool | int | str) and not isinstance(value, float):
                value = str(value).lower() if isinstance(value, bool) else str(value)
            else:
                return None, f"label is {type(value).__name__}; use a string or an integer"
        elif not isinstance(value, str):
            return None, f"{name!r} is {type(value).__name__}, expected a string"
        elif len(value) > max_text_chars:
            return None, (
                f"{name!r} has {len(value)} characters, more than the limit of {max_text_chars} "
                "(BARGE_MAX_TEXT_CHARS)"
            )
        values.append(value)
    return (values[0], values[1]), None


def chat_record(value: Any, max_text_chars: int) -> tuple[tuple[str, str] | None, str | None]:
    """A chat record's example (its messages and its last assistant message), or why it cannot
    train."""
    try:
        messages = chat_example(value, max_text_chars, CHAT_FIELD)
    except MessagesError as exc:
        return None, exc.message
    answer = [m["content"] for m in messages if m["role"] == "assistant"][-1]
    return (Messages(json.dumps(messages)), answer), None


def check_datasets(spec: FinetuneSpec, train: Dataset, validation: Dataset | None) -> None:
    """Raise PermanentJobError with what to fix when the data cannot train this task."""
    for data in (train, validation):
        if data is None:
            continue
        if not data.examples:
            first = data.errors[0] if data.errors else None
            why = f"; first problem: line {first['line']}: {first['error']}" if first else ""
            raise PermanentJobError(f"{data.name} has no usable records{why}")
        ratio = len(data.errors) / data.records
        if ratio > spec.max_failed_ratio:
            first = data.errors[0]
            raise PermanentJobError(
                f"{len(data.errors)} of {data.records} {data.name} records are unusable "
                f"({ratio:.1%}, more than max_failed_ratio {spec.max_failed_ratio:.1%}); first: "
                f"{first['source']} line {first['line']}: {first['error']}"
            )
    if spec.task in ("classify", "image_classify"):
        labels = train.labels()
        if len(labels) < 2:
            raise PermanentJobError(
                f"train has only one label ({labels[0]!r}); a classifier needs at least two"
            )
        if validation is not None:
            unseen = sorted(set(validation.labels()) - set(labels))
            if unseen:
                raise PermanentJobError(
                    f"validation has labels train never saw: {', '.join(map(repr, unseen[:10]))} "
                    f"(train labels: {', '.join(map(repr, labels[:20]))})"
                )


def steps_per_epoch(examples: int, hp: Hyperparameters) -> int:
    micro_batches = math.ceil(examples / hp.batch_size)
    return math.ceil(micro_batches / hp.gradient_accumulation_steps)


def write_errors(store: ObjectStore, output: S3Uri, data: Dataset) -> str | None:
    """``errors/<train|validation>.jsonl`` under the job's prefix; its key, or None."""
    key = output.join(f"errors/{data.name}.jsonl")
    if not data.errors:
        store.delete(key)
        return None
    body = "".join(json.dumps(row) + "\n" for row in data.errors).encode()
    store.put_bytes(key, body)
    return key.key
