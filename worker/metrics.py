"""A worker pool child's Prometheus metrics, served on ``BARGE_WORKER_METRICS_HOST`` (default
127.0.0.1: they carry no auth) at ``BARGE_WORKER_METRICS_PORT`` + the child's index (started in
``worker_process_init``; each child counts only its own work).

Series are labelled by task, never by model: a model is a tenant's URI (its bucket and path),
which an operator's dashboards must not collect. Records per second per task is
``rate(barge_worker_records_total[1m])``, left to Prometheus.

Imports: nothing of ours.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RECORDS = Counter(
    "barge_worker_records",
    "Records through a model, by task and outcome (succeeded, failed)",
    ["task", "outcome"],
)
BATCH_SECONDS = Histogram(
    "barge_worker_batch_seconds",
    "Latency of one batch through a model, by task",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SHARD_SECONDS = Histogram(
    "barge_worker_shard_seconds",
    "Time to run one claimed shard, by how it ended",
    ["task", "status"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800),
)
MODEL_LOAD_SECONDS = Gauge(
    "barge_worker_model_load_seconds",
    "Time the last load of a model for the task into memory took",
    ["task"],
)
MODEL_LOADS = Counter(
    "barge_worker_model_loads_total",
    "Models loaded into memory, by task and kind: model (a full model), base (a base that "
    "LoRA adapters share) or adapter (one applied to a warm base)",
    ["task", "kind"],
)
GPU_MEMORY_BYTES = Gauge(
    "barge_worker_gpu_memory_bytes",
    "torch.cuda.memory_allocated on the device",
    ["device"],
)

# What the attempts of this process used (``worker.usage``), by device kind (cpu, cuda).
DEVICE_SECONDS = Counter(
    "barge_worker_device_seconds",
    "Seconds units of work held a device (wall), by device kind",
    ["device"],
)
BUSY_SECONDS = Counter(
    "barge_worker_busy_seconds",
    "Seconds a device computed model batches, by device kind",
    ["device"],
)
CPU_SECONDS = Counter(
    "barge_worker_cpu_seconds", "CPU seconds units of work used, by device kind", ["device"]
)
GPU_SECONDS = Counter("barge_worker_gpu_seconds", "GPU-seconds units of work held")
ENERGY_JOULES = Counter(
    "barge_worker_energy_joules",
    "Energy NVML's counter measured on GPUs during units of work (units on devices without a "
    "counter add nothing)",
)
TOKENS = Counter(
    "barge_worker_tokens", "Tokens through generation models, by direction (in, out)", ["direction"]
)

# Model compute of this process: seconds and batches, read by worker.usage at an attempt's
# start and end (its busy seconds).
_busy_lock = threading.Lock()
_busy = [0.0, 0]


def busy_seconds() -> float:
    return _busy[0]


def batches_observed() -> int:
    return int(_busy[1])


def note_busy(seconds: float) -> None:
    with _busy_lock:
        _busy[0] += seconds
        _busy[1] += 1


def observe_usage(used: Mapping[str, object]) -> None:
    """One attempt's usage (``worker.usage.account``) into the counters."""
    kind = str(used.get("device") or "unknown").split(":", 1)[0]

    def number(name: str) -> float:
        value = used.get(name)
        return float(value) if isinstance(value, int | float) else 0.0

    DEVICE_SECONDS.labels(kind).inc(number("wall_seconds"))
    BUSY_SECONDS.labels(kind).inc(number("busy_seconds"))
    CPU_SECONDS.labels(kind).inc(number("cpu_seconds"))
    GPU_SECONDS.inc(number("gpu_seconds"))
    ENERGY_JOULES.inc(number("energy_joules"))
    TOKENS.labels("in").inc(number("tokens_in"))
    TOKENS.labels("out").inc(number("tokens_out"))


def serve(port: int, index: int = 0, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics on ``host``:``port + index``; a taken port only logs a
    warning."""
    if port <= 0:
        return
    try:
        start_http_server(port + index, addr=host)
    except OSError as exc:
        log.warning("worker metrics not served: %s port %s: %s", host, port + index, exc)
        return
    log.info("worker metrics on %s:%s/metrics", host, port + index)


def observe_batch(
    task: str, seconds: float, outcomes: Sequence[tuple[bool, Any]], device: Any
) -> None:
    """One batch through a model: its latency, its records by outcome, the GPU memory."""
    ok = sum(1 for good, _ in outcomes if good)
    observe_counts(task, seconds, ok, len(outcomes) - ok, device)


def observe_counts(task: str, seconds: float, ok: int, failed: int, device: Any) -> None:
    """``observe_batch`` of a batch given by its counts of records that ran and that failed."""
    BATCH_SECONDS.labels(task).observe(seconds)
    note_busy(seconds)
    if ok:
        RECORDS.labels(task, "succeeded").inc(ok)
    if failed:
        RECORDS.labels(task, "failed").inc(failed)
    observe_gpu_memory(device)


def observe_gpu_memory(device: Any) -> None:
    if getattr(device, "type", None) != "cuda":
        return
    import torch

    if torch.cuda.is_available():
        GPU_MEMORY_BYTES.labels(str(device)).set(torch.cuda.memory_allocated(device))
