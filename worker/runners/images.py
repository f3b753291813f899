"""The images kind's run step: one claimed shard of an image task. Its records name images (the
listing of a prefix of image objects, or records whose ``image_field`` holds a URI, base64 data
or bytes); a bounded pool of fetching threads (BARGE_IMAGE_FETCH_THREADS concurrent GETs, each
with the store's retries) gets them a window ahead of a small pool of decoding threads, which
decode and prepare them while the model runs the batch before (backpressure: at most a window of
fetched and a window of prepared images wait), and the part and errors file are written as for
any shard (``worker.shard``). Records keep their order whatever finishes first.

Memory: at most two windows of ``batch_size`` × ``WINDOW_BATCHES`` prepared images are held (the
one the model runs and the one being decoded), never a whole shard; a prepared image is the image
processor's output (its size set by the model, not by the image). The full-size pixels exist
only while an image decodes and is prepared, and the pixels being decoded at once in a worker
process are bounded by its ``PixelBudget`` (BARGE_IMAGE_DECODE_PIXEL_BUDGET), whatever the
threads and images: each decode reads the image's header, waits for its width × height (at
most the whole budget) and gives them back once its pixels are let go.

A record whose image cannot be used is a per-record error naming the reason (no such field,
not an image, truncated, a decompression bomb, an ``s3://`` URI outside the tenant's read
scopes: never fetched); the store failing (it is down) fails the attempt, which is retried.

Imports: ``barge``, ``services.scopes`` (through the claim), ``worker.*``; never ``api`` or
``cli``.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, describe
from barge.records import Record
from barge.records.images import (
    LISTING_ETAG_FIELD,
    LISTING_ID_FIELD,
    LISTING_IMAGE_FIELD,
    ImageError,
    image_bytes,
    load_image,
    open_image,
)
from barge.records.planning import in_order
from barge.specs import InferenceSpec
from worker import metrics
from worker.context import WorkerContext
from worker.lease import Lease, Result, ShardWork, Stop
from worker.models.cache import cache_for
from worker.models.vision import VisionModel, predict_images, result_schema, shape_key
from worker.shard import RecordId, ShardRun, coerce_id, make_part, read_records, windows

log = logging.getLogger(__name__)

WINDOW_BATCHES = 4  # images decoded ahead: one window of this many batches
T = TypeVar("T")
R = TypeVar("R")


def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    spec = work.spec
    assert isinstance(spec, InferenceSpec)
    loaded = cache_for(ctx).get(work.model_ref, spec.task, work.job_id)
    assert isinstance(loaded, VisionModel)
    settings = ctx.settings
    with (
        ctx.scratch() as tmp,
        ThreadPoolExecutor(settings.image_fetch_threads, thread_name_prefix="barge-fetch") as fetch,
        ThreadPoolExecutor(
            settings.image_decode_threads, thread_name_prefix="barge-decode"
        ) as pool,
    ):
        shard = _ImageShard(ctx, work, lease, loaded, tmp)
        stopped = shard.process(read_records(ctx, work), fetch, pool)
        return shard.upload(stopped)


@dataclass
class _Item:
    """One record on its way through: its id, where its image came from, the prepared model
    input and the original (width, height), or why it cannot run."""

    position: int
    rec: Record
    rec_id: RecordId | None
    source: str
    inputs: Any = None
    size: tuple[int, int] = (0, 0)
    error: str | None = None


class _ImageShard(ShardRun[VisionModel]):
    """One image shard's run (``worker.shard.ShardRun``): images are fetched, decoded and
    prepared on a thread pool, a window ahead of the model."""

    def __init__(
        self, ctx: WorkerContext, work: ShardWork, lease: Lease, loaded: VisionModel, tmp: Path
    ):
        spec = work.spec
        assert isinstance(spec, InferenceSpec)
        part = make_part(spec.output_format, tmp / "part", result_schema(spec.task))
        super().__init__(ctx, work, lease, loaded, tmp, part)
        self.listing = spec.reads_image_objects  # records are the planner's listing
        self.id_field = LISTING_ID_FIELD if self.listing else spec.id_field
        self.image_field = LISTING_IMAGE_FIELD if self.listing else (spec.image_field or "")
        self.model_seconds = 0.0  # the model busy, for the log line and the bench
        self.started = time.monotonic()

    def process(
        self, records: Iterator[Record], fetch: ThreadPoolExecutor, pool: ThreadPoolExecutor
    ) -> Stop | None:
        """Every record: its image fetched on ``fetch`` (at most a window of fetched images
        held ahead of decoding), decoded and prepared on ``pool`` (a window ahead of the
        model), run window by window; the ``Stop`` that cut the shard short, if any."""
        window_size = self.spec.batch_size * WINDOW_BATCHES
        items = enumerate(records, self.work.record_offset)
        fetched = in_order(fetch, self._fetch, items, ahead=window_size)
        prepared = in_order(pool, self._prepare, fetched, ahead=window_size)
        try:
            return self.walk(windows(prepared, window_size), self._window)
        finally:
            prepared.close()
            fetched.close()
            wall = time.monotonic() - self.started
            log.info(
                "image shard %s: %s images, %s failed, model busy %.3fs of %.3fs wall (%.0f%%; "
                "%s decoding threads, torch %s threads)",
                self.work.index,
                self.part.count,
                self.errors.count,
                self.model_seconds,
                wall,
                100 * self.model_seconds / max(wall, 1e-9),
                self.ctx.settings.image_decode_threads,
                _torch_threads(),
            )

    # --- on a decoding thread -------------------------------------------------------------

    def _fetch(self, item: tuple[int, Record]) -> tuple[_Item, bytes | None]:
        """On a fetching thread: the record's id and the encoded bytes of its image (a GET for
        an ``s3://`` URI), or the item with its error."""
        position, rec = item
        source = rec.source or self.work.source  # a packed shard's records name their object
        out = _Item(position, rec, None if self.id_field else position, source)
        if rec.data is None:
            out.error = rec.error or "unreadable record"
            return out, None
        data = rec.data
        if self.id_field:
            if self.id_field not in data:
                out.error = f"record has no id field {self.id_field!r}"
                return out, None
            out.rec_id, problem = coerce_id(data[self.id_field])
            if problem is not None:
                out.error = f"{problem} (id_field {self.id_field!r})"
                return out, None
        if self.image_field not in data:
            out.error = f"record has no field {self.image_field!r} (the job's image_field)"
            return out, None
        value = data[self.image_field]
        if self.listing and isinstance(value, str):
            out.source = value  # the image object itself
        scopes = self.work.scopes
        try:
            raw = image_bytes(
                self.ctx.store,
                value,
                self.image_field,
                may_read=None if scopes is None else scopes.may_read,
                max_bytes=self.ctx.settings.max_image_bytes,
                etag=str(data.get(LISTING_ETAG_FIELD) or "") if self.listing else "",
            )
        except ImageError as exc:
            out.error = exc.message
            return out, None
        except (PermanentJobError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            if _is_store_failure(exc):
                raise  # the store is down: the attempt fails and is retried
            out.error = f"cannot fetch this image: {describe(exc)}"
            return out, None
        return out, raw

    def _prepare(self, fetched: tuple[_Item, bytes | None]) -> _Item:
        """On a decoding thread: the fetched image decoded and prepared for the model."""
        out, raw = fetched
        if raw is None:
            return out
        try:
            self._decode(open_image(raw, self.ctx.settings.max_image_pixels), out)
        except ImageError as exc:
            out.error = exc.message
        except (PermanentJobError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            if _is_store_failure(exc):
                raise  # the store is down: the attempt fails and is retried
            out.error = f"cannot prepare this image for the model: {describe(exc)}"
        return out

    def _decode(self, image: Any, out: _Item) -> None:
        """Decode an opened image (its header read) and prepare it for the model, holding its
        pixels of this process's decoding budget (waiting for them first); the decoded pixels
        are let go before the budget is, whether the image prepares or not."""
        width, height = image.size
        with decode_budget(self.ctx.settings.image_decode_pixel_budget).hold(width * height):
            try:
                image = load_image(image, self.loaded.mode)
                out.size = image.size
                out.inputs = self.loaded.prepare(image, self.params)
            except ImageError as exc:
                out.error = exc.message
            except (PermanentJobError, SoftTimeLimitExceeded):
                raise
            except Exception as exc:
                out.error = f"cannot prepare this image for the model: {describe(exc)}"
            finally:
                del image

    # --- on the shard's thread ------------------------------------------------------------

    def _window(self, window: list[_Item]) -> None:
        results: list[dict[str, Any] | None] = [None] * len(window)
        failed: dict[int, str] = {i: it.error for i, it in enumerate(window) if it.error}
        if failed:
            metrics.RECORDS.labels(self.loaded.task, "failed").inc(len(failed))
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, it in enumerate(window):
            if it.error is None:
                groups.setdefault(shape_key(it.inputs), []).append(i)
        batch_size = self.spec.batch_size
        try:
            for members in groups.values():
                for start in range(0, len(members), batch_size):
                    self.next_batch()
                    self._batch(window, members[start : start + batch_size], results, failed)
                    self.lease.succeeded = self.part.count + sum(r is not None for r in results)
                    self.lease.failed = self.errors.count + len(failed)
        finally:
            self.part.write_rows([r for r in results if r is not None])
            self.errors.write_rows([self._error_row(window[i], failed[i]) for i in sorted(failed)])
            for it in window:
                it.inputs = None  # let the window's pixels go
            self.lease.succeeded = self.part.count
            self.lease.failed = self.errors.count

    def _batch(
        self,
        window: list[_Item],
        members: list[int],
        results: list[dict[str, Any] | None],
        failed: dict[int, str],
    ) -> None:
        items = [window[i] for i in members]
        started = time.monotonic()
        outcomes = _predict_isolating(self.loaded, items, self.params)
        seconds = time.monotonic() - started
        self.model_seconds += seconds
        metrics.observe_batch(self.loaded.task, seconds, outcomes, self.loaded.device)
        for i, it, (ok, value) in zip(members, items, outcomes, strict=True):
            if ok:
                results[i] = {"id": it.rec_id, **value}
            else:
                failed[i] = value

    def _error_row(self, it: _Item, error: str) -> dict[str, Any]:
        return {"id": it.rec_id, "source": it.source, "line": it.rec.line, "error": error}


class PixelBudget:
    """The pixels a process decodes at once: ``hold(n)`` waits until ``n`` more fit under
    ``total`` (an image over the whole budget takes all of it, so it decodes alone), in the
    order decodes asked (a large image is not passed forever by small ones), and gives them
    back when its block ends."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._queue: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[int]:
        need = min(max(pixels, 0), self.total)
        turn = object()
        with self._changed:
            self._queue.append(turn)
            self._changed.wait_for(
                lambda: self._queue[0] is turn and self.used + need <= self.total
            )
            self._queue.popleft()
            self.used += need
            self._changed.notify_all()  # the next in line may fit too
        try:
            yield need
        finally:
            with self._changed:
                self.used -= need
                self._changed.notify_all()


@functools.lru_cache(maxsize=1)
def decode_budget(total: int) -> PixelBudget:
    """This process's decoding budget (BARGE_IMAGE_DECODE_PIXEL_BUDGET), shared by every shard
    and decoding thread it runs; made on first use, in the pool child."""
    return PixelBudget(total)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _predict_isolating(
    loaded: VisionModel, items: list[_Item], params: Any
) -> list[tuple[bool, Any]]:
    """Predict a batch; if it fails, image by image so one bad image fails alone."""
    try:
        found = predict_images(
            loaded, [it.inputs for it in items], [it.size for it in items], params
        )
        return [(True, r) for r in found]
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if len(items) == 1:
            return [(False, f"model failed on this image: {describe(exc)}")]
    out: list[tuple[bool, Any]] = []
    for it in items:
        out.extend(_predict_isolating(loaded, [it], params))
    return out


def _is_store_failure(exc: Exception) -> bool:
    from barge.errors import ServiceUnavailable, StorageError

    if isinstance(exc, StorageError | ServiceUnavailable | ConnectionError | TimeoutError):
        return True
    return type(exc).__module__.startswith(("botocore", "urllib3"))  # a body read that broke
