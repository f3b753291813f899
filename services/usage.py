"""What a job used, summed over its shard attempts: wall and busy seconds per device, GPU- and
CPU-seconds, tokens in and out, energy in joules (measured by NVML on NVIDIA GPUs; ``None``
where a device has no counter, never an estimate), and a cost estimate from the operator's
``BARGE_PRICE_PER_DEVICE_HOUR``. Every attempt counts, failed and retried ones too: they used
the devices as much as the one that succeeded. Attempts still running count once they end.

Also the model's measured steady rate (the console's reference line).

A job's views name the workers that ran it by an opaque label (``worker_label``), never by
their node names: those carry the worker's host and process id, which are the operator's, not
the tenant's. The admin's workers page shows the node names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import statistics
import uuid
from typing import Any

from sqlalchemy.orm import Session

from barge.settings import Settings
from db import repositories as repo
from db.models import Job

# The newest succeeded attempts of a model whose rates make its steady rate.
STEADY_ATTEMPTS = 20


# Without a configured secret the labels are keyed by the process (opaque, stable while it runs).
_PROCESS_KEY = os.urandom(32)


def worker_label(settings: Settings | None, node: str) -> str:
    """The label a job's views give the worker ``node``: the same for the same worker across a
    deployment's API processes (keyed by the console secret, else the database URL, both
    secret from tenants), and saying nothing of its host."""
    if settings is None:
        key = _PROCESS_KEY
    else:
        key = (settings.console_secret or str(settings.database_url)).encode()
    return "worker-" + hmac.new(key, node.encode(), hashlib.sha256).hexdigest()[:10]


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _total(groups: list[repo.UsageGroup], name: str) -> float | None:
    """The figure summed over every ended attempt, or None when any ended attempt lacks it."""
    ended = sum(g.ended for g in groups)
    if not ended or sum(g.known[name] for g in groups) < ended:
        return None
    return sum(g.sums[name] for g in groups)


def _price(settings: Settings, group: repo.UsageGroup) -> float | None:
    """The price of one hour of the group's devices (GPUs priced by name, then as ``cuda``)."""
    prices = settings.price_per_device_hour
    if group.gpus:
        name = (group.device_name or "").split(", ")[0]
        each = prices.get(name, prices.get("cuda"))
        return None if each is None else each * group.gpus
    return prices.get((group.device or "cpu").split(":", 1)[0])


def _cost(settings: Settings | None, groups: list[repo.UsageGroup]) -> dict[str, Any] | None:
    """Wall hours times the price of each device; None without a price for every device."""
    if settings is None or not settings.price_per_device_hour or not groups:
        return None
    amount = 0.0
    for group in groups:
        price = _price(settings, group)
        if price is None:
            return None
        amount += group.sums["wall_seconds"] / 3600.0 * price
    return {
        "amount": round(amount, 6),
        "currency": settings.price_currency,
        "basis": "wall hours of each device times BARGE_PRICE_PER_DEVICE_HOUR",
    }


def _device(settings: Settings | None, group: repo.UsageGroup) -> dict[str, Any]:
    energy = group.sums["energy_joules"] if group.known["energy_joules"] == group.ended else None
    return {
        "worker": worker_label(settings, group.worker),
        "device": group.device,
        "name": group.device_name,
        "attempts": group.attempts,
        "wall_seconds": _rounded(group.sums["wall_seconds"]),
        "busy_seconds": _rounded(
            group.sums["busy_seconds"] if group.known["busy_seconds"] else None
        ),
        "energy_joules": _rounded(energy if group.ended else None),
    }


def summarise(settings: Settings | None, groups: list[repo.UsageGroup]) -> dict[str, Any] | None:
    """One job's usage from its groups (``repo.usage_by_job``); None before any attempt."""
    if not groups:
        return None
    busy = [g for g in groups if g.known["busy_seconds"]]
    tokens_in, tokens_out = _total(groups, "tokens_in"), _total(groups, "tokens_out")
    return {
        "attempts": sum(g.attempts for g in groups),
        "attempts_running": sum(g.attempts - g.ended for g in groups),
        "wall_seconds": round(sum(g.sums["wall_seconds"] for g in groups), 3),
        "busy_seconds": _rounded(sum(g.sums["busy_seconds"] for g in busy) if busy else None),
        "cpu_seconds": round(sum(g.sums["cpu_seconds"] for g in groups), 3),
        "gpu_seconds": round(sum(g.sums["gpu_seconds"] for g in groups), 3),
        "tokens_in": None if tokens_in is None else int(tokens_in),
        "tokens_out": None if tokens_out is None else int(tokens_out),
        "energy_joules": _rounded(_total(groups, "energy_joules")),
        "devices": [
            _device(settings, g) for g in sorted(groups, key=lambda g: (g.worker, g.device or ""))
        ],
        "cost": _cost(settings, groups),
    }


def usage_for(
    session: Session, settings: Settings | None, job_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any] | None]:
    """Each job's usage (``summarise``), in one query; no cost estimate without ``settings``."""
    by_job: dict[uuid.UUID, list[repo.UsageGroup]] = {job_id: [] for job_id in job_ids}
    for group in repo.usage_by_job(session, job_ids):
        by_job.setdefault(group.job_id, []).append(group)
    return {job_id: summarise(settings, groups) for job_id, groups in by_job.items()}


def job_usage(session: Session, settings: Settings, job: Job) -> dict[str, Any] | None:
    return usage_for(session, settings, [job.id])[job.id]


def steady_rate(session: Session, job: Job) -> dict[str, Any] | None:
    """The model's steady rate: the median records per second of one attempt over the
    tenant's newest succeeded attempts that ran it for the same task (wall time, load
    included), computed when asked. None for a fine-tune or a model never run before."""
    if job.type != "inference" or not job.model_uri:
        return None
    task = job.spec.get("task")
    rates = [
        n / s
        for n, s in repo.attempt_rates(
            session, job.tenant_id, job.model_uri, task if isinstance(task, str) else None
        )
        if n > 0 and s > 0
    ][:STEADY_ATTEMPTS]
    if not rates:
        return None
    return {"records_per_second": round(statistics.median(rates), 3), "attempts": len(rates)}


def extension(
    job: Job | None, used: dict[uuid.UUID, dict[str, Any] | None]
) -> dict[str, Any] | None:
    """The ``barge`` extension field of an OpenAI batch or fine-tuning job: the Barge job it
    runs as and what that job used (``used``: from ``usage_for``)."""
    if job is None:
        return None
    return {"job_id": str(job.id), "usage": used.get(job.id)}
