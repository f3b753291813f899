"""/metrics: Prometheus text format, computed at scrape time from Postgres and the broker.

No auth, like /healthz: every figure is an aggregate over all tenants (no job ids, no names).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from celery import Celery
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from barge.queue import CONTROL_QUEUE, GPU_QUEUE, ready_messages
from barge.settings import Settings
from barge.specs import JOB_TYPES
from db import repositories as repo
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
        yield from self._database()
        yield from self._broker()

    def _database(self) -> Iterator[Metric]:
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                jobs = repo.job_counts(session)
                shards = dict(repo.shard_counts(session))
                succeeded, failed = repo.record_totals(session)
        except SQLAlchemyError as exc:
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

        # Summed over shard rows: a shard re-run after a crash restarts its counts, which a
        # Prometheus rate() reads as a counter reset.
        c = CounterMetricFamily(
            "barge_records", "Records processed, summed over shards", labels=["outcome"]
        )
        c.add_metric(["succeeded"], succeeded)
        c.add_metric(["failed"], failed)
        yield c

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


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus scrape endpoint."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BargeCollector(request.app.state.settings, request.app.state.celery))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
