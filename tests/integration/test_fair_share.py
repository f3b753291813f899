"""Fair share at claim time (``worker.lifecycle.claim``) on a real Postgres and RabbitMQ.

A ``run_shard`` message is a token: it runs the named unit when its tenant's turn is as good as
any, else the fairest tenant's next unit (fewest running under a live lease, then least
recently served; within that tenant its oldest running job's lowest claimable shard). Each test
gets a database of its own, so no other test's jobs compete for the claims."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from barge.queue import make_celery
from barge.settings import Settings
from barge.storage import make_store
from db import repositories as repo
from db.base import utcnow
from db.models import Job, Shard, Tenant
from db.session import get_engine, session_scope
from db.state import RUNNING
from tests.conftest import RUN_ID
from tests.factories import make_job, make_shard, make_tenant
from tests.services import create_migrated_database, create_vhost, delete_vhost, drop_database
from worker import lifecycle
from worker.context import WorkerContext
from worker.lease import ShardWork

LONG = timedelta(hours=1)


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    name = f"barge_fair_{uuid.uuid4().hex[:8]}"
    yield create_vhost(name)
    delete_vhost(name)


@pytest.fixture
def ctx(vhost_url: str, tmp_path: Path) -> Iterator[WorkerContext]:
    name = f"barge_fair_{uuid.uuid4().hex[:8]}"
    url = create_migrated_database(name, RUN_ID)
    settings = Settings(env="test", database_url=url, broker_url=vhost_url, home=tmp_path)
    store = make_store(settings)
    yield WorkerContext(settings, store, make_celery(settings), "test:1")
    get_engine(url).dispose()
    drop_database(name)


def url_of(ctx: WorkerContext) -> str:
    return ctx.settings.resolved_database_url


def backlog(
    ctx: WorkerContext, tenant: Tenant | None = None, *, shards: int, served: int = 0
) -> Job:
    """A running job of ``shards`` shards, the first ``served`` of them done (claimed before)."""
    with session_scope(url_of(ctx)) as session:
        tenant = tenant or make_tenant(session)
        job = make_job(session, tenant, status=RUNNING)
        for i in range(shards):
            done = i < served
            make_shard(
                session,
                job,
                i,
                status="succeeded" if done else "pending",
                attempt=1 if done else 0,
                started_at=utcnow() - timedelta(seconds=60 - i) if done else None,
            )
        session.expunge_all()
        return job


def shard_ids(ctx: WorkerContext, job: Job) -> list[uuid.UUID]:
    with session_scope(url_of(ctx)) as session:
        return [s.id for s in repo.shards_of(session, job.id)]


def claimed(ctx: WorkerContext, shard_id: uuid.UUID) -> ShardWork:
    work = lifecycle.claim(ctx, shard_id)
    assert work is not None
    return work


def test_a_backlogs_message_runs_the_shard_of_a_tenant_not_served_yet(ctx: WorkerContext) -> None:
    big = backlog(ctx, shards=6, served=2)  # tenant A has been served
    small = backlog(ctx, shards=1)  # tenant B never
    a_ids = shard_ids(ctx, big)
    work = claimed(ctx, a_ids[2])  # A's message...
    assert (work.job_id, work.index) == (small.id, 0)  # ...runs B's shard
    # Now B has one running and A none: A's next message runs A's own shard.
    work = claimed(ctx, a_ids[3])
    assert (work.job_id, work.index) == (big.id, 3)


def test_the_tenant_with_fewer_running_shards_goes_first(ctx: WorkerContext) -> None:
    a = backlog(ctx, shards=5)
    b = backlog(ctx, shards=5)
    a_ids, b_ids = shard_ids(ctx, a), shard_ids(ctx, b)
    assert claimed(ctx, a_ids[0]).job_id == a.id  # equal turns (never served): the named one
    # A runs one shard, B none: A's messages go to B until B runs as many.
    work = claimed(ctx, a_ids[1])
    assert (work.job_id, work.index) == (b.id, 0)
    # Equal running (1 each), B served last: A's message runs A's shard.
    assert claimed(ctx, a_ids[1]).job_id == a.id
    # A runs 2, B 1: B's message runs B's own next shard.
    work = claimed(ctx, b_ids[3])
    assert (work.job_id, work.index) == (b.id, 3)


def test_within_a_tenant_its_oldest_jobs_lowest_shard_runs(ctx: WorkerContext) -> None:
    served = backlog(ctx, shards=3, served=1)
    with session_scope(url_of(ctx)) as session:
        tenant = make_tenant(session)
        session.expunge_all()
    older = backlog(ctx, tenant, shards=3)
    backlog(ctx, tenant, shards=3)  # a younger job of the same tenant
    work = claimed(ctx, shard_ids(ctx, served)[2])
    assert (work.job_id, work.index) == (older.id, 0)


def test_a_message_naming_a_finished_shard_is_still_a_token(ctx: WorkerContext) -> None:
    job = backlog(ctx, shards=3)
    ids = shard_ids(ctx, job)
    with session_scope(url_of(ctx)) as session:
        session.execute(update(Shard).where(Shard.id == ids[0]).values(status="succeeded"))
    work = claimed(ctx, ids[0])  # a duplicate of finished work runs the next pending shard
    assert (work.job_id, work.index) == (job.id, 1)


def test_a_shard_backing_off_is_not_claimed_before_its_time(ctx: WorkerContext) -> None:
    job = backlog(ctx, shards=2)
    ids = shard_ids(ctx, job)
    work = claimed(ctx, ids[0])
    lifecycle.retry_or_fail(ctx, work, "RuntimeError: boom")  # back-off of 2 s (attempt 1)
    with session_scope(url_of(ctx)) as session:
        shard = session.get(Shard, ids[0])
        assert shard is not None and shard.status == "pending"
        assert shard.not_before is not None and shard.not_before > utcnow()
    # Its own message (a re-send arriving early) and another one both leave it alone.
    assert claimed(ctx, ids[0]).index == 1
    assert lifecycle.claim(ctx, ids[0]) is None  # nothing else claimable now
    with session_scope(url_of(ctx)) as session:  # the back-off ends
        session.execute(update(Shard).where(Shard.id == ids[0]).values(not_before=utcnow() - LONG))
    work = claimed(ctx, ids[1])
    assert (work.index, work.attempt) == (0, 2)


def test_a_unit_that_used_its_attempts_fails_its_job_and_settles_the_rest(
    ctx: WorkerContext,
) -> None:
    job = backlog(ctx, shards=4)
    ids = shard_ids(ctx, job)
    with session_scope(url_of(ctx)) as session:
        session.execute(
            update(Shard)
            .where(Shard.id == ids[0])
            .values(
                status="running",
                attempt=ctx.settings.max_attempts,
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert lifecycle.claim(ctx, ids[0]) is None
    with session_scope(url_of(ctx)) as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.status == "failed"
        statuses = [s.status for s in repo.shards_of(session, job.id)]
    # the others are settled at once: no message of theirs is needed to finalize the job
    assert statuses == ["failed", "cancelled", "cancelled", "cancelled"]


def test_racing_messages_claim_distinct_shards(ctx: WorkerContext) -> None:
    a = backlog(ctx, shards=6, served=1)
    b = backlog(ctx, shards=6)
    names = shard_ids(ctx, a)[1:] + shard_ids(ctx, b)[:5]  # 10 messages
    works: list[Any] = [None] * len(names)

    def run(i: int) -> None:
        works[i] = lifecycle.claim(ctx, names[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = [(w.shard_id, w.attempt) for w in works if w is not None]
    assert len(taken) == len(names)  # every message claimed a shard...
    assert len({shard for shard, _ in taken}) == len(taken)  # ...a different one, once
    with session_scope(url_of(ctx)) as session:
        running = session.scalars(select(Shard).where(Shard.status == "running")).all()
        assert sorted(s.id for s in running) == sorted(s for s, _ in taken)
        assert all(s.attempt == 1 for s in running)
