"""What a unit of work used: wall, busy (model compute) and CPU seconds, GPU-seconds, tokens,
and the energy NVIDIA's counter measured, read at the attempt's start and end and written to
its ``shard_attempts`` row when it ends.

Energy comes from NVML's total-energy counter (millijoules since the driver loaded, Volta and
newer) read through ``nvidia-ml-py`` for each GPU the process uses. A device without a counter
(a CPU, an older GPU, no NVML) has ``None``: never an estimate. The counter covers the whole
GPU, so with several processes on one GPU each attempt's figure includes the others' draw
(Barge runs one worker process per GPU).

A succeeded inference attempt also adds its records and seconds to its model's throughput on
its kind of device (``throughput``: what a dry run estimates from). Its cold start (the
seconds this process spent in it on a first import of a kind's run step and on fetching and
loading models, ``worker.coldstart``) is its ``load_seconds``, counted apart: the
throughput's seconds are processing only, its load seconds those of the shards that loaded.

An attempt's row is ended in the transaction that settles it (``end_in``, called by
``worker.lifecycle``), so the job's finalize, sent after that commit, sums every attempt;
an attempt settled otherwise (retried, handed off, its lease lost) is ended just after
(``end_attempt``).

Imports: ``barge``, ``db``, ``worker.context``, ``worker.lease``, ``worker.metrics``,
``worker.coldstart``; torch
and ``pynvml`` only inside functions, and only where the worker uses a GPU.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from barge.settings import Settings
from barge.specs import InferenceSpec
from db import repositories as repo
from db.base import utcnow
from worker import coldstart, metrics
from worker.context import WorkerContext
from worker.lease import Lease, ShardWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """A device the process computes on: ``id`` as torch names it (``cuda:0``, ``cpu``),
    ``name`` as its maker does, ``uuid`` NVML's (GPUs only)."""

    id: str
    name: str
    uuid: str | None = None

    @property
    def kind(self) -> str:
        return self.id.split(":", 1)[0]


class CounterSource(Protocol):
    """Where energy readings come from: NVML on NVIDIA GPUs (tests give a fake one)."""

    def energy_millijoules(self, device: Device) -> int | None:
        """The device's total-energy counter now, or None when it has none."""


class NoCounters:
    """No energy counter anywhere (no NVML, or a CPU worker)."""

    def energy_millijoules(self, device: Device) -> int | None:
        return None


class NvmlCounters:
    """NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``), found by the
    GPU's UUID. ``available()`` is False where NVML cannot start (no driver, no GPU)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: dict[str, Any] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no driver, no library, no GPU
            log.info("NVML unavailable, energy is not measured: %s", exc)

    def available(self) -> bool:
        return self._nvml is not None

    def _handle(self, device: Device) -> Any:
        if device.uuid is None:
            return None
        if device.uuid not in self._handles:
            wanted = device.uuid if device.uuid.startswith("GPU-") else f"GPU-{device.uuid}"
            self._handles[device.uuid] = self._nvml.nvmlDeviceGetHandleByUUID(wanted)
        return self._handles[device.uuid]

    def energy_millijoules(self, device: Device) -> int | None:
        if self._nvml is None or device.kind != "cuda":
            return None
        try:
            handle = self._handle(device)
            if handle is None:
                return None
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except Exception:  # NVML_ERROR_NOT_SUPPORTED on GPUs older than Volta, and the like
            return None

    def power_limit_watts(self, device: Device) -> float | None:
        """The GPU's enforced power limit (for checks), or None."""
        try:
            handle = self._handle(device)
            return float(self._nvml.nvmlDeviceGetEnforcedPowerLimit(handle)) / 1000.0
        except Exception:
            return None


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system, every thread)."""
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True)
class Reading:
    """The counters at one moment: monotonic and CPU seconds, this process's busy (model
    compute) seconds, each device's energy counter (in the order of the devices), and this
    process's cold-start (imports, model loads) seconds."""

    wall: float
    cpu: float
    busy: float
    batches: int
    energy_mj: tuple[int | None, ...]
    cold: float = 0.0  # the process's cold-start seconds so far (``worker.coldstart``)


def read(devices: Sequence[Device], counters: CounterSource) -> Reading:
    return Reading(
        wall=time.monotonic(),
        cpu=cpu_seconds(),
        busy=metrics.busy_seconds(),
        batches=metrics.batches_observed(),
        energy_mj=tuple(counters.energy_millijoules(d) for d in devices),
        cold=coldstart.seconds(),
    )


def _joules(start: int | None, end: int | None) -> float | None:
    """The energy between two readings of one counter; None when either is missing or the
    counter went back (the driver reloaded): never a guess."""
    if start is None or end is None or end < start:
        return None
    return round((end - start) / 1000.0, 3)


def account(
    devices: Sequence[Device],
    start: Reading,
    end: Reading,
    tokens: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What an attempt used between two readings, as ``shard_attempts`` columns."""
    wall = max(0.0, end.wall - start.wall)
    load = min(wall, max(0.0, end.cold - start.cold))
    gpus = sum(1 for d in devices if d.kind == "cuda")
    measured = [_joules(a, b) for a, b in zip(start.energy_mj, end.energy_mj, strict=True)]
    per_device = [
        {"device": d.id, "name": d.name, "energy_joules": e}
        for d, e in zip(devices, measured, strict=True)
    ]
    known = [e for e in measured if e is not None]
    # the total only when every device measured its part: a partial sum would read as a whole
    energy = round(sum(known), 3) if measured and len(known) == len(measured) else None
    return {
        "device": ",".join(d.id for d in devices) or None,
        "device_name": ", ".join(dict.fromkeys(d.name for d in devices)) or None,
        "gpus": gpus,
        "wall_seconds": round(wall, 3),
        # of the wall seconds, those the attempt spent on cold start (a first unit's imports,
        # fetching and loading its model): the rest is processing
        "load_seconds": round(load, 3),
        # None where no model batch was timed in the attempt (a fine-tune's steps are not)
        "busy_seconds": (
            round(max(0.0, end.busy - start.busy), 3) if end.batches > start.batches else None
        ),
        "cpu_seconds": round(max(0.0, end.cpu - start.cpu), 3),
        "gpu_seconds": round(wall * gpus, 3),
        "energy_joules": energy,
        "devices": per_device,
        "tokens_in": (tokens or {}).get("prompt_tokens"),
        "tokens_out": (tokens or {}).get("completion_tokens"),
    }


# --- this process's devices and counters (found once, in the pool child) ----------------------

_found: tuple[list[Device], CounterSource] | None = None


def _cuda_devices(settings: Settings) -> list[Device]:
    import torch

    if not torch.cuda.is_available() or settings.device.split(":")[0] not in ("", "cuda"):
        return []
    if settings.device_map:
        indexes = list(range(torch.cuda.device_count()))
    else:
        chosen = torch.device(settings.device or "cuda")
        indexes = [chosen.index if chosen.index is not None else torch.cuda.current_device()]
    devices = []
    for i in indexes:
        props = torch.cuda.get_device_properties(i)
        uuid = getattr(props, "uuid", None)
        devices.append(Device(f"cuda:{i}", props.name, str(uuid) if uuid else None))
    return devices


def find_devices(settings: Settings) -> tuple[list[Device], CounterSource]:
    """The devices a worker with these settings computes on, and where their energy counters
    are read (NVML for NVIDIA GPUs, when it starts; else none)."""
    try:
        gpus = _cuda_devices(settings)
    except Exception as exc:  # a broken driver never stops the work, only its measure
        log.warning("GPUs not found for usage accounting: %s", exc)
        gpus = []
    if not gpus:
        return [Device("cpu", "cpu")], NoCounters()
    nvml = NvmlCounters()
    return gpus, nvml if nvml.available() else NoCounters()


def process_devices(settings: Settings) -> tuple[list[Device], CounterSource]:
    """``find_devices`` for this worker process, found once (in the pool child)."""
    global _found
    if _found is None:
        _found = find_devices(settings)
    return _found


class Meter:
    """An attempt's readings: made when it starts, ``usage()`` when it ends. Each is kept by
    (shard, attempt) until the attempt's row is ended, so the settlement can end it in its own
    transaction (``end_in``), before the job's finalize reads it."""

    def __init__(self, ctx: WorkerContext, work: ShardWork):
        self.devices, self.counters = process_devices(ctx.settings)
        self.start = read(self.devices, self.counters)
        _meters[(work.shard_id, work.attempt)] = self

    def usage(self, tokens: dict[str, int] | None) -> dict[str, Any]:
        return account(self.devices, self.start, read(self.devices, self.counters), tokens)


_meters: dict[tuple[uuid.UUID, int], Meter] = {}


def end_in(
    session: Session,
    work: ShardWork,
    outcome: str,
    counts: tuple[int, int, int | None],
    tokens: dict[str, int] | None,
) -> None:
    """End the attempt's row in the settlement's transaction: ``outcome``, ``counts``
    (succeeded, failed, steps done) and what it used."""
    meter = _meters.pop((work.shard_id, work.attempt), None)
    used = None
    try:
        used = meter.usage(tokens) if meter is not None else None
    except Exception:  # a counter that fails costs the attempt its figures, never its settlement
        log.exception("%s attempt %s: usage not measured", work.log_name, work.attempt)
    succeeded, failed, steps = counts
    ended = repo.end_attempt(
        session,
        work.shard_id,
        work.attempt,
        utcnow(),
        outcome=outcome,
        succeeded=succeeded,
        failed=failed,
        steps_done=steps,
        usage=used,
    )
    if ended and used is not None:
        metrics.observe_usage(used)
        if outcome == "succeeded":
            _add_throughput(session, work, succeeded + failed, used)


def _add_throughput(session: Session, work: ShardWork, records: int, used: dict[str, Any]) -> None:
    """A succeeded inference shard adds its records and processing seconds (its wall seconds
    less its cold start) to what its model reached on this kind of device, and its cold start
    apart (what a dry run estimates from)."""
    spec, wall = work.spec, float(used.get("wall_seconds") or 0.0)
    load = float(used.get("load_seconds") or 0.0)
    if not isinstance(spec, InferenceSpec) or not records or wall <= 0:
        return
    device = str(used.get("device_name") or used.get("device") or "unknown")
    key = (work.model_ref, spec.task, device)
    tokens = int(used.get("tokens_out") or 0)
    repo.add_throughput(
        session, key, records, max(0.0, wall - load), tokens, utcnow(), load_seconds=load
    )


def end_attempt(ctx: WorkerContext, work: ShardWork, lease: Lease, outcome: str) -> None:
    """End the attempt's row, in a transaction of its own, if its settlement did not (a retry,
    a hand-off, a lost lease); a failure is logged, never raised."""
    if (work.shard_id, work.attempt) not in _meters:
        return
    try:
        with ctx.session() as session:
            counts = (lease.succeeded, lease.failed, lease.steps_done)
            end_in(session, work, outcome, counts, lease.tokens)
    except Exception:
        log.exception("%s attempt %s: usage not recorded", work.log_name, work.attempt)
