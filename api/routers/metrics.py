"""/metrics: Prometheus text format, from Postgres and the broker.

Cheap and safe to scrape, however often and by however many: the figures (aggregate queries
over all tenants, the broker's queue depths) are computed at most once per
``BARGE_METRICS_CACHE_SECONDS``, by one request at a time, off the event loop; every other
scrape gets the last text at once, and no scrape opens a database session or a broker
connection of its own. Every figure is an aggregate over all tenants (no job ids, no names).
With ``BARGE_METRICS_TOKEN`` set a scrape must send ``Authorization: Bearer <token>``; without
it, keep the API's port on an internal network (see docs/explanation/security.md).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterator

import anyio
from celery import Celery
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from barge.errors import Unauthorized
from barge.queue import CONTROL_QUEUE, GPU_QUEUE, ready_messages
from barge.settings import Settings
from barge.specs import JOB_TYPES
from db import repositories as repo
from db.migrate import SchemaNotCurrent
from db.session import session_scope
from db.state import JOB_STATUSES, SHARD_FINAL, SHARD_PENDING, SHARD_RUNNING

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

SHARD_STATUSES = (SHARD_PENDING, SHARD_RUNNING, *sorted(SHARD_FINAL))


class BargeCollector(Collector):
    """Job, shard and record counts (one GROUP BY query each) and the broker's queue depths."""

    def __init__(self, settings: Settings, celery: Celery):
        self.settings = settings
        self.celery = celery

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "barge_metrics_computed_at_seconds",
            "When these figures were computed (Unix time); scrapes get them for up to "
            "BARGE_METRICS_CACHE_SECONDS",
            time.time(),
        )
        yield from self._database()
        yield from self._broker()

    def _database(self) -> Iterator[Metric]:
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                used = repo.usage_totals(session)
                jobs = repo.job_counts(session)
                shards = dict(repo.shard_counts(session))
                succeeded, failed = repo.record_totals(session)
        except (SQLAlchemyError, SchemaNotCurrent) as exc:
            log.warning("metrics: database unavailable: %s", exc)
            yield GaugeMetricFamily("barge_database_up", "1 when the database answers", 0)
            return
        yield GaugeMetricFamily("barge_database_up", "1 when the database answers", 1)

        # Every known status is exported, 0 included, so a series does not vanish when it empties.
        by_key = {(status, type_): n for status, type_, n in jobs}
        types = sorted(set(JOB_TYPES) | {type_ for _, type_, _ in jobs})
        statuses = list(JOB_STATUSES) + sorted({s for s, _, _ in jobs} - set(JOB_STATUSES))
        g = GaugeMetricFamily("barge_jobs", "Jobs by status and type", labels=["status", "type"])
        for status in statuses:
            for type_ in types:
                g.add_metric([status, type_], by_key.get((status, type_), 0))
        yield g

        g = GaugeMetricFamily("barge_shards", "Shards by status", labels=["status"])
        for status in list(SHARD_STATUSES) + sorted(set(shards) - set(SHARD_STATUSES)):
            g.add_metric([status], shards.get(status, 0))
        yield g

        # A gauge, not a counter: summed over shard rows as they are now, it goes down when a
        # shard is re-run (its counts start again from zero) or its job's rows are deleted.
        records = GaugeMetricFamily(
            "barge_records",
            "Records processed, summed over the current attempt of every shard",
            labels=["outcome"],
        )
        records.add_metric(["succeeded"], succeeded)
        records.add_metric(["failed"], failed)
        yield records
        yield from _usage(used)

    def _broker(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "barge_queue_depth", "Messages ready in the broker queue", labels=["queue"]
        )
        counts = ready_messages(
            self.celery, (GPU_QUEUE, CONTROL_QUEUE), self.settings.broker_timeout_seconds
        )
        if counts is None:
            log.warning("metrics: broker unavailable")
            yield GaugeMetricFamily("barge_broker_up", "1 when the broker answers", 0)
            return
        for name, ready in counts.items():
            depth.add_metric([name], ready)
        yield GaugeMetricFamily("barge_broker_up", "1 when the broker answers", 1)
        yield depth


# The usage figures of ended shard attempts, by device kind (repo.usage_totals): name, help.
USAGE_GAUGES = (
    ("wall_seconds", "barge_usage_device_seconds", "Seconds attempts held a device"),
    ("busy_seconds", "barge_usage_busy_seconds", "Seconds of model compute"),
    ("cpu_seconds", "barge_usage_cpu_seconds", "CPU seconds of the worker processes"),
    ("gpu_seconds", "barge_usage_gpu_seconds", "GPU-seconds (wall seconds times GPUs held)"),
    ("energy_joules", "barge_usage_energy_joules", "Energy measured by NVML on NVIDIA GPUs"),
    ("tokens_in", "barge_usage_tokens_in", "Prompt tokens of generation"),
    ("tokens_out", "barge_usage_tokens_out", "Generated tokens"),
)


def _usage(totals: dict[str, dict[str, float]]) -> Iterator[Metric]:
    """What ended attempts used, summed over the attempt rows stored now (gauges: the rows go
    with their jobs), by device kind (cpu, cuda)."""
    for field, name, text in USAGE_GAUGES:
        g = GaugeMetricFamily(name, f"{text}, summed over stored attempts", labels=["device"])
        for kind in sorted(totals):
            g.add_metric([kind], totals[kind][field])
        yield g


class MetricsCache:
    """The last scrape's text. ``text()`` answers it while it is younger than
    ``BARGE_METRICS_CACHE_SECONDS``; past that, the first caller renders anew (in a worker
    thread) while the callers meanwhile get the previous text, so at most one render runs at a
    time however many scrapes arrive."""

    # How long the very first scrapes wait for the first render before answering 503.
    FIRST_RENDER_SECONDS = 30.0

    def __init__(self, settings: Settings, celery: Celery):
        self.settings = settings
        self.celery = celery
        self.renders = 0  # how many times the figures were computed
        self._text: bytes | None = None
        self._at = float("-inf")
        self._rendering = threading.Lock()

    def _fresh(self) -> bool:
        return time.monotonic() - self._at < self.settings.metrics_cache_seconds

    def render(self) -> bytes:
        """Compute every figure now (blocking: database queries, a broker connection)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BargeCollector(self.settings, self.celery))
        self.renders += 1
        return generate_latest(registry)

    async def text(self) -> bytes | None:
        """The figures, at most ``BARGE_METRICS_CACHE_SECONDS`` old; None only when the first
        render takes longer than FIRST_RENDER_SECONDS."""
        if self._text is not None and self._fresh():
            return self._text
        if not self._rendering.acquire(blocking=False):
            # another request renders: answer the last text, or wait for the first one
            deadline = time.monotonic() + self.FIRST_RENDER_SECONDS
            while self._text is None and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            return self._text
        try:
            if self._text is None or not self._fresh():  # not rendered meanwhile
                self._text = await anyio.to_thread.run_sync(self.render)
                self._at = time.monotonic()
        finally:
            self._rendering.release()
        return self._text


def _check_token(settings: Settings, authorization: str | None) -> None:
    if not settings.metrics_token:
        return
    scheme, _, token = (authorization or "").partition(" ")
    expected = settings.metrics_token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("/metrics needs `Authorization: Bearer <BARGE_METRICS_TOKEN>`")


def metrics_cache(request: Request) -> MetricsCache:
    """The app's cache, made on the first scrape (the event loop runs one request at a time up
    to its first await, so only one is ever made)."""
    cache: MetricsCache | None = getattr(request.app.state, "metrics_cache", None)
    if cache is None:
        cache = MetricsCache(request.app.state.settings, request.app.state.celery)
        request.app.state.metrics_cache = cache
    return cache


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus scrape endpoint (async: a cached answer never takes a worker thread)."""
    _check_token(request.app.state.settings, request.headers.get("authorization"))
    text = await metrics_cache(request).text()
    if text is None:
        return Response("metrics are being computed; retry shortly\n", status_code=503)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
