"""The worker's unit-of-work lifecycle (``worker.lifecycle``) and its outbox
(``WorkerContext.unit_of_work``) on a real Postgres and a real RabbitMQ.

Each test claims a real shard and runs it as a small job kind written here (a ``JobKind`` whose
run step is a plain function, no model), then checks the row, the job and the messages waiting on
the queues: every result and every exception a runner can end with maps to one ``Outcome``,
and messages leave only after the commit."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import REGISTRY
from sqlalchemy import update
from sqlalchemy.orm import Session

from barge.errors import PermanentJobError
from barge.queue import CONTROL_QUEUE, FINALIZE_JOB, GPU_QUEUE, RUN_SHARD, make_celery
from barge.settings import Settings
from barge.storage import make_store
from db import repositories as repo
from db.models import Job, Shard
from db.session import session_scope
from db.state import CANCELLING, FAILED, RUNNING, transition
from tests.factories import make_job, make_shard, make_tenant
from tests.services import create_vhost, delete_vhost
from worker import lifecycle
from worker.context import WorkerContext
from worker.kinds import JobKind
from worker.lease import Lease, LeaseLost, Outcome, Result, ShardWork, Stop

Run = Callable[[WorkerContext, ShardWork, Lease], Result]


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    name = f"barge_lifecycle_{uuid.uuid4().hex[:8]}"  # no worker of another test consumes here
    yield create_vhost(name)
    delete_vhost(name)


def make_context(database_url: str, broker_url: str, home: Path, **values: Any) -> WorkerContext:
    settings = Settings(
        env="test", database_url=database_url, broker_url=broker_url, home=home, **values
    )
    store = make_store(settings)
    return WorkerContext(settings, store, make_celery(settings), "test:1")


@pytest.fixture
def ctx(database_url: str, vhost_url: str, tmp_path: Path) -> WorkerContext:
    ctx = make_context(database_url, vhost_url, tmp_path)
    sent(ctx)  # declares the queues and empties them
    return ctx


def sent(ctx: WorkerContext) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(task name, args, headers) of the messages waiting on the queues, taken off them."""
    out = []
    with ctx.celery.connection_for_read() as conn:
        for name in (GPU_QUEUE, CONTROL_QUEUE):
            queue = conn.SimpleQueue(ctx.celery.amqp.queues[name])
            while True:
                try:
                    message = queue.get_nowait()  # published with confirms: there already
                except queue.Empty:
                    break
                out.append((message.headers["task"], message.payload[0], message.headers))
                message.ack()
            queue.close()
    return out


def claimed(ctx: WorkerContext, attempts_before: int = 0) -> ShardWork:
    url = ctx.settings.resolved_database_url
    with session_scope(url) as session:
        job = make_job(session, make_tenant(session), status=RUNNING)
        shard_id = make_shard(session, job, attempt=attempts_before).id
    work = lifecycle.claim(ctx, shard_id)
    assert work is not None and work.attempt == attempts_before + 1
    return work


def runner(run: Run) -> JobKind:
    return JobKind("test", lambda spec: True, run, time_limit_error="ran past {limit:.0f}s")


def ending(result: Result) -> Run:
    return lambda ctx, work, lease: result


def raising(exc: BaseException) -> Run:
    def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
        raise exc

    return run


def rows(ctx: WorkerContext, work: ShardWork) -> tuple[Shard, Job]:
    with session_scope(ctx.settings.resolved_database_url) as session:
        shard = session.get(Shard, work.shard_id)
        job = session.get(Job, work.job_id)
        assert shard is not None and job is not None
        return shard, job


def test_a_result_is_recorded_and_the_last_unit_sends_finalize(ctx: WorkerContext) -> None:
    work = claimed(ctx)
    result = Result(Outcome.SUCCEEDED, succeeded=9, failed=1, output_key="out/part-00000.jsonl")
    outcome = lifecycle.run_claimed(ctx, work, runner(ending(result)))
    assert outcome is Outcome.SUCCEEDED
    shard, _ = rows(ctx, work)
    assert (shard.status, shard.records_succeeded, shard.records_failed) == ("succeeded", 9, 1)
    assert shard.output_key == "out/part-00000.jsonl" and shard.lease_expires_at is None
    assert [(name, args) for name, args, _ in sent(ctx)] == [(FINALIZE_JOB, [str(work.job_id)])]


def test_run_shard_observes_the_outcome_as_the_metric_status(ctx: WorkerContext) -> None:
    url = ctx.settings.resolved_database_url
    with session_scope(url) as session:
        job = make_job(session, make_tenant(session), status=RUNNING)
        shard_id = make_shard(session, job).id
    labels = {"task": "embed", "status": "cancelled"}
    before = REGISTRY.get_sample_value("barge_worker_shard_seconds_count", labels) or 0
    the_runner = runner(ending(Result(Outcome.CANCELLED)))
    lifecycle.run_shard(ctx, shard_id, lambda spec: the_runner)
    assert REGISTRY.get_sample_value("barge_worker_shard_seconds_count", labels) == before + 1


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (PermanentJobError("bad model directory"), "bad model directory"),
        (SoftTimeLimitExceeded(), "ran past 1500s"),
    ],
)
def test_a_permanent_error_or_the_time_limit_fails_the_unit_and_its_job(
    ctx: WorkerContext, exc: BaseException, error: str
) -> None:
    work = claimed(ctx)
    assert lifecycle.run_claimed(ctx, work, runner(raising(exc))) is Outcome.FAILED
    shard, job = rows(ctx, work)
    assert shard.status == "failed" and job.status == FAILED
    assert shard.last_error == job.error == f"shard 0 (s3://test-inputs/data.jsonl): {error}"
    assert [name for name, _, _ in sent(ctx)] == [FINALIZE_JOB]


def test_an_unexpected_error_gives_the_unit_back_with_a_back_off(ctx: WorkerContext) -> None:
    work = claimed(ctx)
    outcome = lifecycle.run_claimed(ctx, work, runner(raising(RuntimeError("boom"))))
    assert outcome is Outcome.ERROR
    shard, job = rows(ctx, work)
    assert (shard.status, shard.last_error, job.status) == (
        "pending",
        "RuntimeError: boom",
        RUNNING,
    )
    [(name, args, headers)] = sent(ctx)
    assert (name, args) == (RUN_SHARD, [str(work.shard_id), str(work.job_id), 0])
    assert headers["eta"] is not None  # countdown 2**attempt


def test_an_unexpected_error_on_the_last_attempt_fails_the_job(ctx: WorkerContext) -> None:
    work = claimed(ctx, attempts_before=ctx.settings.max_attempts - 1)
    outcome = lifecycle.run_claimed(ctx, work, runner(raising(RuntimeError("boom"))))
    assert outcome is Outcome.ERROR
    shard, job = rows(ctx, work)
    assert shard.status == "failed" and job.status == FAILED
    assert job.error is not None and job.error.endswith(
        "failed after 3 attempts; last error: RuntimeError: boom"
    )
    assert [name for name, _, _ in sent(ctx)] == [FINALIZE_JOB]


def test_a_stop_ends_the_unit_cancelled_at_its_progress(ctx: WorkerContext) -> None:
    def run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
        lease.steps_done = 7
        raise Stop(CANCELLING)

    work = claimed(ctx)
    assert lifecycle.run_claimed(ctx, work, runner(run)) is Outcome.CANCELLED
    shard, _ = rows(ctx, work)
    assert shard.status == "cancelled" and shard.steps_done == 7
    assert shard.last_error == "stopped at step 7: job is cancelling"


def test_a_hand_off_re_queues_the_unit_at_once_without_counting_a_failure(
    ctx: WorkerContext,
) -> None:
    work = claimed(ctx)
    result = Result(Outcome.HANDED_OFF, steps_done=5)
    assert lifecycle.run_claimed(ctx, work, runner(ending(result))) is Outcome.HANDED_OFF
    shard, _ = rows(ctx, work)
    assert (shard.status, shard.handoffs, shard.steps_done) == ("pending", 1, 5)
    [(name, _, headers)] = sent(ctx)
    assert name == RUN_SHARD and headers["eta"] is None


def test_a_lost_lease_writes_nothing_and_sends_nothing(
    ctx: WorkerContext, caplog: pytest.LogCaptureFixture
) -> None:
    work = claimed(ctx)
    with session_scope(ctx.settings.resolved_database_url) as session:  # another attempt took it
        session.execute(update(Shard).where(Shard.id == work.shard_id).values(attempt=9))
    with caplog.at_level(logging.WARNING, logger="worker.lifecycle"):
        outcome = lifecycle.run_claimed(ctx, work, runner(ending(Result(Outcome.SUCCEEDED))))
        assert outcome is Outcome.LEASE_LOST
        assert lifecycle.run_claimed(ctx, work, runner(raising(LeaseLost()))) is Outcome.LEASE_LOST
    assert rows(ctx, work)[0].status == "running"
    assert sent(ctx) == []
    assert "lost its lease" in caplog.text


def test_publish_runs_in_the_done_transaction_only_while_the_job_runs(ctx: WorkerContext) -> None:
    published: list[uuid.UUID] = []

    def publish(session: Session, job: Job) -> None:
        published.append(job.id)
        repo.add_event(session, job.id, "registered", "published")

    work = claimed(ctx)
    result = Result(Outcome.SUCCEEDED, publish=publish)
    assert lifecycle.run_claimed(ctx, work, runner(ending(result))) is Outcome.SUCCEEDED
    assert published == [work.job_id]
    first = work.job_id

    work = claimed(ctx)
    with session_scope(ctx.settings.resolved_database_url) as session:
        job = session.get(Job, work.job_id)
        assert job is not None
        transition(session, job, CANCELLING)
    assert lifecycle.run_claimed(ctx, work, runner(ending(result))) is Outcome.CANCELLED
    assert published == [first]  # the cancelled job published nothing
    assert rows(ctx, work)[0].status == "cancelled"


def test_the_outbox_sends_after_commit_and_drops_on_rollback(ctx: WorkerContext) -> None:
    job_id = str(uuid.uuid4())
    with pytest.raises(RuntimeError), ctx.unit_of_work() as uow:
        uow.send_after_commit(FINALIZE_JOB, job_id)
        raise RuntimeError("rolled back")
    assert sent(ctx) == []
    with ctx.unit_of_work() as uow:
        uow.send_after_commit(FINALIZE_JOB, job_id)
        assert sent(ctx) == []  # not before the commit
    assert [(name, args) for name, args, _ in sent(ctx)] == [(FINALIZE_JOB, [job_id])]


def test_a_send_that_fails_after_commit_is_logged_not_raised(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens there
    ctx = make_context(database_url, closed, tmp_path, broker_timeout_seconds=1)
    with caplog.at_level(logging.WARNING, logger="worker.context"), ctx.unit_of_work() as uow:
        uow.send_after_commit(FINALIZE_JOB, str(uuid.uuid4()))
    assert "could not publish barge.finalize_job" in caplog.text
