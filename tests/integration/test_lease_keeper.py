"""The lease's keeper thread (``worker.lease.Lease``) on a real Postgres: it renews a short lease
while the work is busy for many leases in a row, rides out a database that answers late, stops
when closed, and never writes for an attempt that lost the unit (fencing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from db import repositories as repo
from db.base import utcnow
from db.models import Job, Shard
from db.session import session_scope
from tests.integration.test_worker_lifecycle import claimed, make_context
from worker.context import WorkerContext
from worker.lease import Lease, LeaseLost, ShardWork


@pytest.fixture
def ctx(database_url: str, broker_url: str, tmp_path: Path) -> WorkerContext:
    return make_context(
        database_url, broker_url, tmp_path, lease_seconds=2.0, heartbeat_seconds=0.25
    )


@pytest.fixture
def work(ctx: WorkerContext) -> Iterator[ShardWork]:
    """A claimed shard of a running job; cancelled afterwards, so that no worker of the test
    session (fair share lets it claim any tenant's unit) ever picks it up."""
    work = claimed(ctx)
    yield work
    with session_scope(ctx.settings.resolved_database_url) as session:
        session.execute(update(Shard).where(Shard.id == work.shard_id).values(status="cancelled"))
        session.execute(update(Job).where(Job.id == work.job_id).values(status="cancelled"))


def shard_row(ctx: WorkerContext, work: ShardWork) -> Shard:
    with session_scope(ctx.settings.resolved_database_url) as session:
        shard = session.get(Shard, work.shard_id)
        assert shard is not None
        return shard


def take(ctx: WorkerContext, work: ShardWork, worker: str = "other:2") -> int | None:
    with session_scope(ctx.settings.resolved_database_url) as session:
        return repo.claim_shard(session, work.shard_id, worker, timedelta(seconds=1))


def busy(seconds: float) -> None:
    """Pure Python work that holds the GIL as much as Python lets it (a long batch)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_the_lease_stays_live_while_the_work_is_busy_for_many_leases(
    ctx: WorkerContext, work: ShardWork
) -> None:
    lease = Lease(ctx, work)
    try:
        lease.succeeded, lease.failed = 40, 2
        busy(5)  # 2.5 leases without a word from the work itself
        shard = shard_row(ctx, work)
        assert shard.lease_expires_at is not None and shard.lease_expires_at > utcnow()
        assert (shard.records_succeeded, shard.records_failed) == (40, 2)  # progress too
        assert take(ctx, work) is None  # nobody else can claim it
        lease.between_batches()  # still ours
    finally:
        lease.close()
    time.sleep(2.5)  # closed: no more renewals, the lease runs out
    assert take(ctx, work) == work.attempt + 1
    with pytest.raises(LeaseLost):
        lease.beat()  # the stale attempt's fencing check refuses it


def test_a_database_that_answers_late_does_not_lose_the_lease(
    ctx: WorkerContext, work: ShardWork
) -> None:
    lease = Lease(ctx, work)
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:  # renewals wait on this lock, as on a slow database
        with session_scope(ctx.settings.resolved_database_url) as session:
            session.execute(select(Shard).where(Shard.id == work.shard_id).with_for_update())
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(10)
        time.sleep(1.0)  # a few beats stuck behind the lock, within one lease
        release.set()
        holder.join(10)
        time.sleep(0.6)
        shard = shard_row(ctx, work)
        assert (shard.status, shard.attempt) == ("running", work.attempt)
        assert shard.lease_expires_at is not None and shard.lease_expires_at > utcnow()
        lease.between_batches()
    finally:
        release.set()
        lease.close()


def test_a_keeper_that_lost_the_unit_stops_and_writes_nothing(
    ctx: WorkerContext, work: ShardWork
) -> None:
    lease = Lease(ctx, work)
    try:
        with session_scope(ctx.settings.resolved_database_url) as session:  # as if frozen
            session.execute(
                update(Shard)
                .where(Shard.id == work.shard_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        assert take(ctx, work) == work.attempt + 1
        lease.succeeded = 999
        time.sleep(0.6)  # the keeper's renewals are refused from now on
        with pytest.raises(LeaseLost):
            lease.between_batches()
        shard = shard_row(ctx, work)
        assert (shard.attempt, shard.worker, shard.records_succeeded) == (
            work.attempt + 1,
            "other:2",
            0,
        )
    finally:
        lease.close()


def test_one_keeper_thread_renews_every_lease_of_the_process(ctx: WorkerContext) -> None:
    works = [claimed(ctx) for _ in range(3)]
    leases = [Lease(ctx, w) for w in works]
    try:
        keepers = [t for t in threading.enumerate() if t.name == "barge-lease"]
        assert len(keepers) == 1
        before = [shard_row(ctx, w).heartbeat_at for w in works]
        busy(3)  # 1.5 leases
        for work, was in zip(works, before, strict=True):
            shard = shard_row(ctx, work)
            assert shard.heartbeat_at is not None and was is not None and shard.heartbeat_at > was
            assert shard.lease_expires_at is not None and shard.lease_expires_at > utcnow()
            assert take(ctx, work) is None
    finally:
        for lease in leases:
            lease.close()
        with session_scope(ctx.settings.resolved_database_url) as session:
            for w in works:
                session.execute(
                    update(Shard).where(Shard.id == w.shard_id).values(status="cancelled")
                )
                session.execute(update(Job).where(Job.id == w.job_id).values(status="cancelled"))
    assert [t.name for t in threading.enumerate()].count("barge-lease") == 1  # kept, idle


def test_the_fence_before_a_write_asks_only_when_the_hold_is_old(
    ctx: WorkerContext, work: ShardWork
) -> None:
    """Right after the claim, the fence needs no database round trip (the lease it took cannot
    have ended); an attempt whose renewals stopped a lease ago is refused by it."""
    claimed_at = shard_row(ctx, work).heartbeat_at
    lease = Lease(ctx, work)
    lease.close()  # no renewals from here on: as if the process froze
    lease.fence()  # young: passes, and writes nothing
    assert shard_row(ctx, work).heartbeat_at == claimed_at
    time.sleep(2.2)  # past the lease (2 s)
    assert take(ctx, work) == work.attempt + 1
    with pytest.raises(LeaseLost):
        lease.fence()


def test_the_soft_time_limit_is_checked_between_batches_too(
    database_url: str, broker_url: str, tmp_path: Path
) -> None:
    """Celery's soft-limit signal can land in a weakref callback, where Python only prints the
    exception; the lease's own check stops the shard at its next batch all the same."""
    from celery.exceptions import SoftTimeLimitExceeded

    ctx = make_context(
        database_url,
        broker_url,
        tmp_path,
        lease_seconds=2.0,
        heartbeat_seconds=0.25,
        shard_soft_time_limit=0.5,
        shard_hard_time_limit=5.0,
    )
    work = claimed(ctx)
    lease = Lease(ctx, work)
    try:
        lease.between_batches()  # within the limit
        time.sleep(0.6)
        with pytest.raises(SoftTimeLimitExceeded):
            lease.between_batches()
    finally:
        lease.close()
        with session_scope(ctx.settings.resolved_database_url) as session:
            session.execute(
                update(Shard).where(Shard.id == work.shard_id).values(status="cancelled")
            )
            session.execute(update(Job).where(Job.id == work.job_id).values(status="cancelled"))


def test_a_renewal_carries_the_job_status_so_a_cancel_is_seen_without_a_status_query(
    ctx: WorkerContext, work: ShardWork
) -> None:
    """With status checks rarer than the heartbeat (BARGE_STATUS_CHECK_SECONDS), the renewal's
    own read of the job's status stops the work at its next batch: a cancel is seen within a
    heartbeat, and the checks between batches cost no round trip of their own."""
    from worker.lease import Stop

    lease = Lease(ctx, work, check_seconds=60.0)
    try:
        lease.between_batches()  # the one status query of the next minute: running
        with session_scope(ctx.settings.resolved_database_url) as session:
            session.execute(update(Job).where(Job.id == work.job_id).values(status="cancelling"))
        deadline = time.monotonic() + 5
        with pytest.raises(Stop) as stopped:
            while time.monotonic() < deadline:  # the keeper renews every 0.25 s
                lease.between_batches()
                time.sleep(0.05)
        assert stopped.value.job_status == "cancelling"
    finally:
        lease.close()
