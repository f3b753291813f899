"""Models kept warm: fetch a model directory to a local cache (``fetch_model``), check that its
weights fit before loading them (``load_options``), load it with its family's loader (ONNX
``worker.models.onnx``, images ``worker.models.vision``, text ``worker.models.text``) and keep
it warm (``ModelCache``, an LRU per worker process; ``cache_for`` gives a context's).

A LoRA adapter is served over a warm base (``worker.models.adapters``): one base, several
adapters switched per batch. Imports: ``barge``, ``worker.context``, ``worker.coldstart``,
``worker.metrics``, ``worker.models``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from barge.errors import PermanentJobError, without_paths
from barge.modeldirs import check_model_files, is_model_file, list_model_files
from barge.paths import UnsafePath, local_path
from barge.settings import Settings
from barge.specs import BUILTIN_MODELS, IMAGE_TASKS
from barge.storage import ObjectStore, S3Uri, local_model_dir
from worker import coldstart, metrics
from worker.context import WorkerContext
from worker.models import adapters, hf, onnx, text, vision
from worker.models.loaded import LoadedModel, pick_device


def fetch_model(settings: Settings, store: ObjectStore, ref: str) -> tuple[Path, str]:
    """A local directory holding the model and its revision (a hash of the files' fingerprints).

    S3 models are copied once into ``<cache>/models/<uri-hash>-<revision>`` and reused. Only
    the model's own files are copied (``is_model_file``), each to a path checked to stay inside
    the copy.
    """
    if ref in BUILTIN_MODELS:  # shipped with the worker (``worker.models.vision``)
        return Path(), "builtin"
    files = list_model_files(settings, store, ref)
    check_model_files(ref, files)
    files = {rel: tag for rel, tag in files.items() if is_model_file(rel)}
    revision = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]
    local = local_model_dir(settings, ref)
    if local is not None:
        return local, revision
    uri = S3Uri.parse(ref, field="model").as_prefix()
    target = (
        settings.resolved_cache_dir
        / "models"
        / f"{hashlib.sha256(str(uri).encode()).hexdigest()[:16]}-{revision}"
    )
    if (target / ".complete").exists():
        return target, revision
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in files:
        try:
            dest = local_path(tmp, rel)
        except UnsafePath as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PermanentJobError(f"model directory {ref}: {exc.message}") from None
        with store.open(uri.join(rel)) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    (tmp / ".complete").write_text(revision)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target, revision


GIB = 1024**3


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


def _free_memory(settings: Settings, device: Any) -> tuple[int, str]:
    """Bytes free for a model's weights where it will load, and a sentence saying so."""
    if settings.model_memory_bytes:
        free = settings.model_memory_bytes
        return free, f"this worker allows {_size(free)} (BARGE_MODEL_MEMORY_BYTES)"
    if device.type == "cuda":
        import torch

        if settings.device_map:
            count = torch.cuda.device_count()
            free = sum(int(torch.cuda.mem_get_info(i)[0]) for i in range(count))
            return free, f"the {count} visible GPU(s) have {_size(free)} free together"
        free = int(torch.cuda.mem_get_info(device)[0])
        return free, f"{device} has {_size(free)} free"
    import psutil

    free = int(psutil.virtual_memory().available)
    return free, f"this host has {_size(free)} of memory available"


def _release_memory(device: Any) -> None:
    """Hand the memory of evicted models back (CUDA keeps freed blocks cached otherwise)."""
    if device.type == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def load_options(settings: Settings, path: Path, device: Any, ref: str) -> dict[str, Any]:
    """How ``from_pretrained`` loads the model: on CUDA in its stored dtype (bf16/fp16 weights
    are never widened to fp32 first), spread over the visible GPUs with ``BARGE_DEVICE_MAP``;
    on CPU in fp32. Refuses, before anything is loaded, a model whose weights do not fit."""
    import torch

    options: dict[str, Any] = {}
    if device.type == "cuda":
        options["dtype"] = "auto"
        if settings.device_map:
            options["device_map"] = settings.device_map
    else:
        options["dtype"] = torch.float32
    try:
        need = hf.weight_bytes(path, element_bytes=None if device.type == "cuda" else 4)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # unreadable weights: the model's fault, said as a load error
        raise PermanentJobError(f"cannot load model {ref}: {without_paths(str(exc))}") from exc
    free, where = _free_memory(settings, device)
    if need > free:
        hint = (
            "run it on a worker with more memory"
            if device.type != "cuda"
            else "set BARGE_DEVICE_MAP=auto to spread it over every visible GPU, or run it on a "
            "worker with larger GPUs"
            if not settings.device_map
            else "run it on a worker with more or larger GPUs"
        )
        raise PermanentJobError(
            f"model {ref} does not fit: its weights need {_size(need)} and {where}; {hint}"
        )
    return options


class ModelCache:
    """Loaded models kept warm across tasks and jobs, least recently used evicted first, keyed
    by model URI + revision (a hash of the directory's files and their ETags) + task.

    Which revision a job runs: the first unit of a job that this process runs lists the model
    directory (``fetch_model``) and pins the revision it found to the job; the job's later
    units find their model by that pin, warm, without asking the store again. So a model
    re-uploaded under the same URI is listed, copied and loaded by the next job that names it
    (its first unit lists the directory again), and is not swapped in under a job whose model
    this process keeps warm. A pin whose model was evicted (more models in turn than
    ``BARGE_MODEL_CACHE_SIZE``) lists the directory again, as every unit did before pins."""

    PINS = 1024  # (model, job) pins remembered, least recently used dropped first

    def __init__(self, settings: Settings, store: ObjectStore):
        self.settings = settings
        self.store = store
        self._models: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()
        # LoRA adapters by (adapter ref, revision, task): views over a base of ``_models``.
        self._adapters: OrderedDict[tuple[str, str, str], tuple[tuple[str, ...], LoadedModel]]
        self._adapters = OrderedDict()
        self.loads = {"model": 0, "base": 0, "adapter": 0}  # loads by this process, by kind
        self._pins: OrderedDict[tuple[str, uuid.UUID], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, ref: str, task: str, job_id: uuid.UUID | None = None, base: str | None = None
    ) -> LoadedModel:
        """The model ``ref`` loaded for ``task``: the revision pinned to ``job_id`` while it is
        warm, else the directory's current revision (pinned to ``job_id`` from then on). With
        ``base``, ``ref`` is a LoRA adapter applied to that base (``adapter``). The seconds of
        a call that loaded something (the listing, the copy from the store and the load) are
        noted as this process's cold start (``worker.coldstart``)."""
        started, loads = time.monotonic(), sum(self.loads.values())
        try:
            return self._get(ref, task, job_id, base)
        finally:
            if sum(self.loads.values()) != loads:  # fetched and loaded: cold start, not work
                coldstart.note(time.monotonic() - started)

    def _get(self, ref: str, task: str, job_id: uuid.UUID | None, base: str | None) -> LoadedModel:
        if base is not None:
            return self.adapter(ref, base, task, job_id)
        if job_id is not None:
            with self._lock:
                revision = self._pins.get((ref, job_id))
                loaded = self._models.get((ref, revision, task)) if revision else None
                if loaded is not None:
                    self._pins.move_to_end((ref, job_id))
                    self._models.move_to_end((ref, loaded.revision, task))
                    return loaded
        path, revision = fetch_model(self.settings, self.store, ref)
        key = (ref, revision, task)
        with self._lock:
            if job_id is not None:
                self._pins[(ref, job_id)] = revision
                self._pins.move_to_end((ref, job_id))
                while len(self._pins) > self.PINS:
                    self._pins.popitem(last=False)
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                return loaded
            return self._load(key, path, task, ref, revision, "model")

    def _load(
        self,
        key: tuple[str, ...],
        path: Path,
        task: str,
        ref: str,
        revision: str,
        kind: str,
        extra: dict[str, Any] | None = None,
    ) -> LoadedModel:
        """Load a full model or a base into ``_models`` (the lock held)."""
        device = pick_device(self.settings)
        # Make room first: the model evicted to keep the cache's size frees its memory
        # before the new one is measured against what is free and loaded.
        while len(self._models) >= max(1, self.settings.model_cache_size):
            self._evict()
        _release_memory(device)
        if onnx.is_onnx_dir(path):
            loaded = onnx.load_onnx(path, task, self.settings, ref, revision)
        else:
            options = {**load_options(self.settings, path, device, ref), **(extra or {})}
            if task in IMAGE_TASKS:
                loaded = vision.load_vision_model(path, task, device, ref, revision)
            else:
                loaded = text.load_model(path, task, device, ref, revision, options)
        metrics.MODEL_LOAD_SECONDS.labels(task).set(loaded.load_seconds)  # never the URI
        metrics.MODEL_LOADS.labels(task, kind).inc()
        metrics.observe_gpu_memory(loaded.device)
        self.loads[kind] += 1
        self._models[key] = loaded
        return loaded

    def _evict(self) -> None:
        """Drop the least recently used model (a base goes with its adapters)."""
        key, _ = self._models.popitem(last=False)
        for akey in [k for k, (bkey, _) in self._adapters.items() if bkey == key]:
            del self._adapters[akey]

    def adapter(
        self, ref: str, base: str, task: str, job_id: uuid.UUID | None = None
    ) -> LoadedModel:
        """The LoRA adapter ``ref`` applied to ``base``: the base is loaded once per worker
        (kept in the same LRU as full models) and each adapter once onto it; a job's adapter
        is switched in before each batch (``LoadedModel.activate``). The adapters kept per
        worker are bounded by ``BARGE_ADAPTER_CACHE_SIZE`` (least recently used dropped)."""
        pin = (f"{ref}\0adapter", job_id) if job_id is not None else None
        with self._lock:
            revision = self._pins.get(pin) if pin is not None else None
            found = self._warm_adapter((ref, revision, task)) if revision else None
            if found is not None:
                return found
        path, revision = fetch_model(self.settings, self.store, ref)
        if not adapters.is_adapter(path):
            raise PermanentJobError(f"model {ref} is registered as a LoRA adapter but is none")
        akey = (ref, revision, task)
        with self._lock:
            if pin is not None:
                self._pins[pin] = revision
                while len(self._pins) > self.PINS:
                    self._pins.popitem(last=False)
            found = self._warm_adapter(akey)
            if found is not None:
                return found
        labels = adapters.labels_of(path, ref)
        base_path, base_revision = fetch_model(self.settings, self.store, base)
        bkey = (base, base_revision, task, f"labels={len(labels)}")
        with self._lock:
            host = self._models.get(bkey)
            if host is None:
                options = adapters.base_options(task, labels)
                host = self._load(bkey, base_path, task, base, base_revision, "base", options)
            self._models.move_to_end(bkey)
            return self._attach(akey, bkey, host, path, labels)

    def _warm_adapter(self, akey: tuple[str, str, str]) -> LoadedModel | None:
        """The adapter ``akey`` if it is loaded on a base still warm (the lock held)."""
        found = self._adapters.get(akey)
        if found is None or found[0] not in self._models:
            return None
        self._adapters.move_to_end(akey)
        self._models.move_to_end(found[0])
        return found[1]

    def _attach(
        self,
        akey: tuple[str, str, str],
        bkey: tuple[str, ...],
        host: LoadedModel,
        path: Path,
        labels: list[str],
    ) -> LoadedModel:
        """Load the adapter ``akey`` onto its warm base ``host`` (the lock held), dropping the
        least recently used adapters over ``BARGE_ADAPTER_CACHE_SIZE``."""
        ref, revision, task = akey
        started = time.monotonic()
        name = adapters.adapter_name(ref, revision)
        host.model = adapters.attach(host.model, path, name, ref)
        view = LoadedModel(
            task,
            host.model,
            host.tokenizer,
            host.device,
            ref,
            revision,
            time.monotonic() - started,
            dict(enumerate(labels)) or host.labels,
            host.max_positions,
            adapter=name,
        )
        metrics.MODEL_LOADS.labels(task, "adapter").inc()
        self.loads["adapter"] += 1
        self._adapters[akey] = (bkey, view)
        while len(self._adapters) > max(1, self.settings.adapter_cache_size):
            _, (old_base, old) = self._adapters.popitem(last=False)
            if old_base in self._models and old.adapter is not None:
                adapters.detach(self._models[old_base].model, old.adapter)
        return view

    def warm(self) -> dict[str, int]:
        """What this process keeps loaded: models (full ones and bases) and adapters."""
        with self._lock:
            return {"models": len(self._models), "adapters": len(self._adapters)}

    def held(self) -> list[dict[str, str]]:
        """The models (``model``, or ``base`` under adapters) and adapters kept warm, each with
        the task it was loaded for, for the console and the worker's presence row: a snapshot
        taken without the lock (a load holds it as long as it takes).

        Every key is (ref, revision, task, ...): a base's adds its head (``labels=N``), which
        is not its task. A base is loaded for its adapters (with their head; LoRA layers
        injected), apart from the same model loaded for a job of its own: ``kind`` says which,
        and a job on the base model is warm only where a ``model`` entry holds it."""
        for _ in range(5):
            try:
                adapters = list(self._adapters.items())
                return [
                    # a base's key (ref, revision, task, head) stays one when its adapters go
                    {"model": k[0], "task": k[2], "kind": "base" if len(k) > 3 else "model"}
                    for k in list(self._models)
                ] + [
                    {"model": k[0], "task": k[2], "kind": "adapter", "base": base[0]}
                    for k, (base, _) in adapters
                ]
            except RuntimeError:  # changed while it was read: read it again
                continue
        return []


_current: tuple[WorkerContext, ModelCache] | None = None


def cache_for(ctx: WorkerContext) -> ModelCache:
    """The model cache of ``ctx``, the process's context: made by the first unit that loads a
    model (in the pool child, never at import, and never in the control worker, which loads
    none) and kept as long as the process keeps that context."""
    global _current
    if _current is None or _current[0] is not ctx:
        _current = (ctx, ModelCache(ctx.settings, ctx.store))
    return _current[1]


def held_by(ctx: WorkerContext) -> list[dict[str, str]]:
    """The models ``ctx``'s cache keeps warm (``ModelCache.held``), without making a cache: a
    process that has loaded nothing (a control worker) holds nothing."""
    current = _current
    return current[1].held() if current is not None and current[0] is ctx else []
