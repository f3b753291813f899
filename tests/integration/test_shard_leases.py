"""The shard lease protocol (claim, heartbeat, finish, release, expiry, cancel) on a real Postgres.

``ShardLeaseMachine`` drives one job with 2-3 shards and three workers through random
interleavings of the repository calls in ``db.repositories`` and checks the database against an
exact model after every step. The job state machine itself is covered by
``test_state_machine.JobLifecycle``; here the job only moves as the workers and the API move it.

Time: the repositories read the wall clock (``db.base.utcnow()``) and nothing injects a clock, so
the machine controls time in two ways instead: a claim or heartbeat passes either a long lease
(five minutes, live for the whole test) or an already-expired one (-1 s), and the "expire lease"
rule moves a running shard's ``lease_expires_at`` one second into the past with a direct UPDATE,
which is what the rest of the system sees once a lease has run out.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from barge.errors import IllegalTransition
from db import repositories
from db.base import utcnow
from db.models import JobEvent, Shard
from db.session import session_scope
from db.state import (
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL,
    QUEUED,
    RUNNING,
    SHARD_CANCELLED,
    SHARD_FAILED,
    SHARD_FINAL,
    SHARD_PENDING,
    SHARD_RUNNING,
    SHARD_SUCCEEDED,
    SUCCEEDED,
    TRANSITIONS,
    transition,
)
from tests.factories import make_job, make_shard, make_tenant

LEASE = timedelta(minutes=5)  # outlives any test run: "live" until the machine expires it
EXPIRED = timedelta(seconds=-1)  # a lease that has already run out
LEASES = st.sampled_from([LEASE, LEASE, EXPIRED])
MAX_ATTEMPTS = 3  # as settings.max_attempts: the runner fails a shard claimed this often
# A rule gated on this acts about one time in eight (Hypothesis favours the first element).
RARELY = st.sampled_from([False] * 7 + [True])
WORKERS = ("w0", "w1", "w2")
STALE_OPS = st.sampled_from(["heartbeat", "finish", "release"])
RECORDS = 10  # make_shard gives every shard ten records
SHARD_COLUMNS = [c.key for c in sa_inspect(Shard).column_attrs]


def row(session: Session, shard_id: uuid.UUID) -> dict[str, Any]:
    """Every column of one shard, read fresh from the database."""
    shard = session.scalar(
        select(Shard).where(Shard.id == shard_id).execution_options(populate_existing=True)
    )
    assert shard is not None
    return {key: getattr(shard, key) for key in SHARD_COLUMNS}


def load_row(url: str, shard_id: uuid.UUID) -> dict[str, Any]:
    with session_scope(url) as session:
        return row(session, shard_id)


@dataclass
class ModelShard:
    """What the database must hold for one shard."""

    id: uuid.UUID
    status: str = SHARD_PENDING
    attempt: int = 0
    worker: str | None = None
    live: bool = False  # running with an unexpired lease
    ok: int = 0
    failed: int = 0
    output_key: str | None = None
    tokens: dict[int, str] = field(default_factory=dict)  # attempt -> the worker it was issued to


@dataclass(frozen=True)
class Token:
    shard: int
    attempt: int
    worker: str


class ShardLeaseMachine(RuleBasedStateMachine):
    url: ClassVar[str] = ""  # bound to the session's test database by the fixture below

    def __init__(self) -> None:
        super().__init__()
        assert self.url, "the database fixture did not run"
        self.shards: list[ModelShard] = []
        self.job_id = uuid.uuid4()
        self.job_status = QUEUED
        self.seen_job_statuses = [QUEUED]
        self.frozen: dict[int, dict[str, Any]] = {}  # index -> the row when it became final
        self.last_attempt: dict[int, int] = {}

    # --- setup -----------------------------------------------------------------------------

    @initialize(n=st.integers(2, 3))
    def plan(self, n: int) -> None:
        with session_scope(self.url) as session:
            job = make_job(session, make_tenant(session))
            transition(session, job, RUNNING, message="planned")
            self.job_id = job.id
            self.shards = [ModelShard(make_shard(session, job, i).id) for i in range(n)]
        self.job_status = RUNNING
        self.seen_job_statuses.append(RUNNING)

    # --- helpers ---------------------------------------------------------------------------

    def held(self, s: ModelShard, attempt: int) -> bool:
        return s.status == SHARD_RUNNING and attempt == s.attempt

    def current_tokens(self) -> list[Token]:
        return [
            Token(i, s.attempt, s.tokens[s.attempt])
            for i, s in enumerate(self.shards)
            if s.status == SHARD_RUNNING
        ]

    def stale_tokens(self) -> list[Token]:
        return [
            Token(i, attempt, worker)
            for i, s in enumerate(self.shards)
            for attempt, worker in s.tokens.items()
            if not self.held(s, attempt)
        ]

    def shard_index(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.shards) - 1), label="shard")

    def counts(self, data: st.DataObject, s: ModelShard, *, complete: bool) -> tuple[int, int]:
        """New progress counts for ``s``: never below the current ones; all records if complete."""
        failed = data.draw(st.integers(s.failed, RECORDS - s.ok), label="failed")
        if complete:
            return RECORDS - failed, failed
        return data.draw(st.integers(s.ok, RECORDS - failed), label="ok"), failed

    # --- workers ---------------------------------------------------------------------------

    @precondition(lambda self: self.shards)
    @rule(data=st.data(), worker=st.sampled_from(WORKERS), lease=LEASES)
    def claim(self, data: st.DataObject, worker: str, lease: timedelta) -> None:
        self._claim(self.shard_index(data), worker, lease)

    def _claim(self, i: int, worker: str, lease: timedelta) -> None:
        s = self.shards[i]
        claimable = s.status == SHARD_PENDING or (s.status == SHARD_RUNNING and not s.live)
        with session_scope(self.url) as session:
            attempt = repositories.claim_shard(session, s.id, worker, lease)
        event(f"claim: {s.status}{'' if s.live or s.status != SHARD_RUNNING else ' (expired)'}")
        if not claimable:
            assert attempt is None, f"claimed shard {i} ({s.status}, live={s.live})"
            return
        assert attempt == s.attempt + 1, (attempt, s.attempt)
        assert attempt not in s.tokens, "the same fencing token was handed out twice"
        s.tokens[attempt] = worker
        s.status, s.attempt, s.worker = SHARD_RUNNING, attempt, worker
        s.live = lease > timedelta(0)
        s.ok = s.failed = 0  # a new attempt starts its counts over

    @precondition(lambda self: self.current_tokens())
    @rule(data=st.data(), lease=LEASES)
    def heartbeat(self, data: st.DataObject, lease: timedelta) -> None:
        token = data.draw(st.sampled_from(self.current_tokens()), label="token")
        s = self.shards[token.shard]
        ok, failed = self.counts(data, s, complete=False)
        with session_scope(self.url) as session:
            beat = repositories.heartbeat_shard(session, s.id, token.attempt, lease, ok, failed)
        # The attempt fences, not the clock: a holder whose lease ran out keeps the shard until
        # someone else claims it.
        assert beat, f"the holder of shard {token.shard} attempt {token.attempt} was refused"
        s.ok, s.failed = ok, failed
        s.live = lease > timedelta(0)

    @precondition(lambda self: self.current_tokens())
    @rule(
        data=st.data(),
        status=st.sampled_from([SHARD_SUCCEEDED, SHARD_SUCCEEDED, SHARD_FAILED, SHARD_CANCELLED]),
    )
    def finish(self, data: st.DataObject, status: str) -> None:
        token = data.draw(st.sampled_from(self.current_tokens()), label="token")
        s = self.shards[token.shard]
        ok, failed = self.counts(data, s, complete=status == SHARD_SUCCEEDED)
        key = f"out/part-{token.shard:05d}.jsonl"
        with session_scope(self.url) as session:
            done = repositories.finish_shard(
                session,
                s.id,
                token.attempt,
                status,
                succeeded=ok,
                failed=failed,
                output_key=key,
                errors_key=None,
                error="boom" if status == SHARD_FAILED else None,
            )
            assert done, f"the holder of shard {token.shard} attempt {token.attempt} was refused"
            if status == SHARD_FAILED:  # as worker.lifecycle.fail: a failed shard fails the job
                job = repositories.lock_job(session, self.job_id)
                assert job is not None
                if job.status == RUNNING:
                    transition(session, job, FAILED, error="boom")
        if status == SHARD_FAILED and self.job_status == RUNNING:
            self.job_status = FAILED
        s.status, s.ok, s.failed, s.output_key, s.live = status, ok, failed, key, False

    @precondition(lambda self: self.current_tokens())
    @rule(data=st.data())
    def release_after_error(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(self.current_tokens()), label="token")
        s = self.shards[token.shard]
        with session_scope(self.url) as session:
            released = repositories.release_shard(session, s.id, token.attempt, "CUDA OOM")
        assert released, f"the holder of shard {token.shard} attempt {token.attempt} was refused"
        # the attempt's counts go with it: no part was written for them
        s.status, s.live, s.ok, s.failed = SHARD_PENDING, False, 0, 0

    @precondition(lambda self: self.stale_tokens() or self.current_tokens())
    @rule(data=st.data(), op=STALE_OPS)
    def stale_worker(self, data: st.DataObject, op: str) -> None:
        """A worker with an old token (or one never issued) tries to act: refused, no change."""
        kinds = {
            "superseded": [
                t for t in self.stale_tokens() if self.shards[t.shard].status == SHARD_RUNNING
            ],
            "settled": [
                t for t in self.stale_tokens() if self.shards[t.shard].status != SHARD_RUNNING
            ],
            "forged": [Token(t.shard, t.attempt + 1, t.worker) for t in self.current_tokens()],
        }
        kind = data.draw(st.sampled_from([k for k, v in kinds.items() if v]), label="kind")
        token = data.draw(st.sampled_from(kinds[kind]), label="token")
        self._stale(token, op, kind)

    def _stale(self, token: Token, op: str, kind: str) -> None:
        s = self.shards[token.shard]
        assert not self.held(s, token.attempt)
        before = load_row(self.url, s.id)
        with session_scope(self.url) as session:
            if op == "heartbeat":
                result = repositories.heartbeat_shard(session, s.id, token.attempt, LEASE, 9, 1)
            elif op == "finish":
                result = repositories.finish_shard(
                    session,
                    s.id,
                    token.attempt,
                    SHARD_SUCCEEDED,
                    succeeded=9,
                    failed=1,
                    output_key="out/stale.jsonl",
                    errors_key=None,
                )
            else:
                result = repositories.release_shard(session, s.id, token.attempt, "stale")
        event(f"stale {op}: {kind}")
        assert result is False, f"stale {op} with attempt {token.attempt} of shard {token.shard}"
        assert load_row(self.url, s.id) == before, f"a stale {op} changed the shard"

    # --- time ------------------------------------------------------------------------------

    @precondition(lambda self: any(s.status == SHARD_RUNNING for s in self.shards))
    @rule(data=st.data())
    def expire_lease(self, data: st.DataObject) -> None:
        """The holder stalls past its lease (see the module docstring: no clock is injected)."""
        running = [i for i, s in enumerate(self.shards) if s.status == SHARD_RUNNING]
        self._expire(data.draw(st.sampled_from(running), label="shard"))

    def _expire(self, i: int) -> None:
        s = self.shards[i]
        with session_scope(self.url) as session:
            session.execute(
                update(Shard)
                .where(Shard.id == s.id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        s.live = False

    @precondition(lambda self: self.current_tokens())
    @rule(data=st.data(), worker=st.sampled_from(WORKERS), lease=LEASES, op=STALE_OPS)
    def takeover(self, data: st.DataObject, worker: str, lease: timedelta, op: str) -> None:
        """A holder stalls past its lease, a redelivery claims the shard, and the old holder wakes
        up and tries to carry on with its token: it is fenced out."""
        token = data.draw(st.sampled_from(self.current_tokens()), label="token")
        self._expire(token.shard)
        self._claim(token.shard, worker, lease)
        self._stale(token, op, "superseded")

    # --- the job ---------------------------------------------------------------------------

    @precondition(lambda self: self.shards)
    @rule(act=RARELY)
    def cancel_job(self, act: bool) -> None:
        """As services.jobs.cancel: the job moves to cancelling and pending shards are cancelled."""
        if not act:
            return  # rare, so that most runs get deep into claims, expiries and takeovers
        legal = CANCELLING in TRANSITIONS[self.job_status]
        pending = [s for s in self.shards if s.status == SHARD_PENDING]
        with session_scope(self.url) as session:
            job = repositories.get_job(session, self.job_id)
            assert job is not None
            event(f"cancel: job {self.job_status}")
            try:
                transition(session, job, CANCELLING, message="cancel requested")
            except IllegalTransition:
                assert not legal, f"{self.job_status} -> cancelling was refused"
                return
            assert legal, f"{self.job_status} -> cancelling was allowed"
            assert repositories.cancel_pending_shards(session, self.job_id) == len(pending)
        self.job_status = CANCELLING
        for s in pending:
            s.status, s.ok, s.failed = SHARD_CANCELLED, 0, 0

    @precondition(lambda self: self.shards)
    @rule(data=st.data())
    def settle_unstarted(self, data: st.DataObject) -> None:
        """As worker.lifecycle.claim: a shard of a job that is no longer running is cancelled, one
        out of attempts is failed, whether or not it is free to settle."""
        s = self.shards[self.shard_index(data)]
        if self.job_status != RUNNING:
            status = SHARD_CANCELLED
        elif s.attempt >= MAX_ATTEMPTS:
            status = SHARD_FAILED
        else:
            return  # the runner would claim it instead
        settleable = s.status == SHARD_PENDING or (s.status == SHARD_RUNNING and not s.live)
        with session_scope(self.url) as session:
            settled = repositories.settle_unstarted_shard(session, s.id, status, "not run")
        event(f"settle {status}: {s.status} -> {settled}")
        assert settled == settleable, (s.status, s.live, settled)
        if settled:
            s.status, s.live, s.ok, s.failed = status, False, 0, 0

    @precondition(
        lambda self: (
            self.job_status in (RUNNING, CANCELLING)
            and self.shards
            and all(s.status in SHARD_FINAL for s in self.shards)
        )
    )
    @rule()
    def finalize(self) -> None:
        """As worker.control.finalize: once every shard is settled, the job takes its final state."""
        if self.job_status == CANCELLING:
            target = CANCELLED
        elif any(s.status == SHARD_FAILED for s in self.shards):
            target = FAILED
        else:
            target = SUCCEEDED
        with session_scope(self.url) as session:
            job = repositories.lock_job(session, self.job_id)
            assert job is not None
            assert repositories.unfinished_shard_count(session, self.job_id) == 0
            transition(session, job, target)
        event(f"finalize: {target}")
        self.job_status = target

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self) -> None:
        now = utcnow()
        with session_scope(self.url) as session:
            rows = [row(session, s.id) for s in self.shards]
            job = repositories.get_job(session, self.job_id)
            assert job is not None
            progress = repositories.progress_for(session, [self.job_id])[self.job_id]
            unfinished = repositories.unfinished_shard_count(session, self.job_id)
            events = session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == self.job_id, JobEvent.kind == "status")
                .order_by(JobEvent.id)
            ).all()

        for i, (s, r) in enumerate(zip(self.shards, rows, strict=True)):
            assert (r["status"], r["attempt"], r["worker"]) == (s.status, s.attempt, s.worker), i
            assert (r["records_succeeded"], r["records_failed"]) == (s.ok, s.failed), i
            assert r["output_key"] == s.output_key, i
            assert r["records_succeeded"] >= 0 and r["records_failed"] >= 0, i
            # Only a running shard has a lease, and it is live exactly when the model says so.
            assert (r["lease_expires_at"] is not None) == (r["status"] == SHARD_RUNNING), i
            if r["status"] == SHARD_RUNNING:
                assert (r["lease_expires_at"] > now) == s.live, i
                # One lease per shard: exactly one token for the current attempt, and the row
                # names the worker that holds it.
                assert r["attempt"] in s.tokens and s.tokens[r["attempt"]] == r["worker"], i
            assert max(s.tokens, default=0) == r["attempt"], i  # no token ahead of the row
            assert sorted(s.tokens) == list(range(1, r["attempt"] + 1)), i  # one per claim
            assert r["attempt"] >= self.last_attempt.get(i, 0), f"shard {i} attempt went back"
            self.last_attempt[i] = r["attempt"]
            if r["status"] in SHARD_FINAL:
                assert r["finished_at"] is not None, i
                assert self.frozen.setdefault(i, r) == r, f"final shard {i} changed"

        assert unfinished == sum(r["status"] in (SHARD_PENDING, SHARD_RUNNING) for r in rows)
        assert progress == repositories.Progress(
            records_succeeded=sum(r["records_succeeded"] for r in rows),
            records_failed=sum(r["records_failed"] for r in rows),
            shards_done=sum(r["status"] in SHARD_FINAL for r in rows),
            shards_running=sum(r["status"] == SHARD_RUNNING for r in rows),
        )

        # The job only moves forwards along TRANSITIONS, and its events tell the same story.
        assert job.status == self.job_status
        previous = self.seen_job_statuses[-1]
        if job.status != previous:
            assert job.status in TRANSITIONS[previous], f"job went {previous} -> {job.status}"
            self.seen_job_statuses.append(job.status)
        assert [QUEUED, *(e.to_status for e in events)] == self.seen_job_statuses
        assert (job.finished_at is not None) == (job.status in FINAL)


@pytest.fixture(autouse=True)
def _bind_database(database_url: str) -> None:
    ShardLeaseMachine.url = database_url


TestShardLeases = ShardLeaseMachine.TestCase
TestShardLeases.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, database=None
)


# --- examples ---------------------------------------------------------------------------------


def new_job_with_shard(url: str, status: str = RUNNING) -> tuple[uuid.UUID, uuid.UUID]:
    with session_scope(url) as session:
        job = make_job(session, make_tenant(session), status=status)
        return job.id, make_shard(session, job).id


def race_claims(url: str, shard_id: uuid.UUID, n: int) -> list[int | Exception | None]:
    """``n`` threads, each in its own session, claim the shard at the same moment."""
    start = threading.Barrier(n)
    results: list[int | Exception | None] = [None] * n

    def claim(i: int) -> None:
        try:
            with session_scope(url) as session:
                start.wait(timeout=10)
                results[i] = repositories.claim_shard(session, shard_id, f"w{i}", LEASE)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def wait_for_lock_waiter(url: str, timeout: float = 10) -> bool:
    """True once some backend of this database is blocked on a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(url) as session:
            waiting = session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return True
        time.sleep(0.02)
    return False


class TestConcurrentClaims:
    def test_a_claim_waits_for_an_uncommitted_claim_and_loses(self, database_url: str) -> None:
        """The second UPDATE blocks on the row lock, then re-checks its WHERE and finds it taken."""
        _, shard_id = new_job_with_shard(database_url)
        second: list[int | Exception | None] = []
        thread = threading.Thread(
            target=lambda: second.extend(race_claims(database_url, shard_id, 1))
        )
        with session_scope(database_url) as first:
            assert repositories.claim_shard(first, shard_id, "w1", LEASE) == 1
            thread.start()
            assert wait_for_lock_waiter(database_url), "the second claim did not wait"
        thread.join(timeout=30)
        assert second == [None]
        r = load_row(database_url, shard_id)
        assert (r["status"], r["attempt"], r["worker"]) == (SHARD_RUNNING, 1, "w1")

    @pytest.mark.parametrize("expired", [False, True], ids=["pending", "expired-lease"])
    def test_racing_claims_exactly_one_wins(self, database_url: str, expired: bool) -> None:
        for _ in range(3):
            _, shard_id = new_job_with_shard(database_url)
            if expired:
                with session_scope(database_url) as session:
                    assert repositories.claim_shard(session, shard_id, "dead", EXPIRED) == 1
            results = race_claims(database_url, shard_id, 4)
            assert not [r for r in results if isinstance(r, Exception)], results
            winners = [(i, r) for i, r in enumerate(results) if r is not None]
            expected = 2 if expired else 1
            assert [r for _, r in winners] == [expected], results
            row_ = load_row(database_url, shard_id)
            assert (row_["attempt"], row_["worker"]) == (expected, f"w{winners[0][0]}")


class TestClaimRefused:
    def test_a_cancelled_shard_cannot_be_claimed(self, database_url: str) -> None:
        job_id, shard_id = new_job_with_shard(database_url)
        with session_scope(database_url) as session:
            job = repositories.get_job(session, job_id)
            assert job is not None
            transition(session, job, CANCELLING)
            assert repositories.cancel_pending_shards(session, job_id) == 1
        before = load_row(database_url, shard_id)
        assert before["status"] == SHARD_CANCELLED
        for lease in (LEASE, EXPIRED):
            with session_scope(database_url) as session:
                assert repositories.claim_shard(session, shard_id, "w1", lease) is None
        assert load_row(database_url, shard_id) == before

    def test_a_finished_shard_cannot_be_claimed_or_settled(self, database_url: str) -> None:
        _, shard_id = new_job_with_shard(database_url)
        with session_scope(database_url) as session:
            assert repositories.claim_shard(session, shard_id, "w1", EXPIRED) == 1
            assert repositories.finish_shard(
                session,
                shard_id,
                1,
                SHARD_SUCCEEDED,
                succeeded=10,
                failed=0,
                output_key="out/part-00000.jsonl",
                errors_key=None,
            )
        before = load_row(database_url, shard_id)
        with session_scope(database_url) as session:
            assert repositories.claim_shard(session, shard_id, "w2", LEASE) is None
            assert not repositories.settle_unstarted_shard(session, shard_id, SHARD_FAILED, "x")
        assert load_row(database_url, shard_id) == before


@pytest.mark.parametrize("how", ["released-then-cancelled", "expired-then-settled"])
def test_a_shard_settled_unrun_reports_no_records(database_url: str, how: str) -> None:
    job_id, shard_id = new_job_with_shard(database_url)
    with session_scope(database_url) as session:
        assert repositories.claim_shard(session, shard_id, "w1", LEASE) == 1
        assert repositories.heartbeat_shard(session, shard_id, 1, LEASE, 5, 1)
    with session_scope(database_url) as session:
        if how == "released-then-cancelled":
            job = repositories.get_job(session, job_id)
            assert job is not None
            assert repositories.release_shard(session, shard_id, 1, "CUDA OOM")
            transition(session, job, CANCELLING)
            assert repositories.cancel_pending_shards(session, job_id) == 1
        else:  # the worker died; its lease ran out; the runner settles the shard
            session.execute(
                update(Shard)
                .where(Shard.id == shard_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
            assert repositories.settle_unstarted_shard(session, shard_id, SHARD_CANCELLED, "x")
    r = load_row(database_url, shard_id)
    assert r["status"] == SHARD_CANCELLED and r["output_key"] is None  # no part was written
    with session_scope(database_url) as session:
        progress = repositories.progress_for(session, [job_id])[job_id]
    assert (r["records_succeeded"], r["records_failed"]) == (0, 0)
    assert (progress.records_succeeded, progress.records_failed) == (0, 0)


@pytest.mark.parametrize("job_status", [CANCELLING, FAILED])
def test_a_stopping_jobs_shard_whose_worker_died_is_cancelled(
    database_url: str, job_status: str
) -> None:
    """The reconciler's ``cancel_abandoned_shards``: a running shard of a cancelling or failed
    job whose lease ran out is cancelled (nothing else would settle it: a stopping job's unit is
    never claimed again) and the dead attempt's settle is fenced off. A live lease, and an
    expired one of a running job (taken over instead), are left alone."""
    stopping, dead = new_job_with_shard(database_url)
    _, alive = new_job_with_shard(database_url, status=job_status)
    running, taken_over = new_job_with_shard(database_url)
    with session_scope(database_url) as session:
        assert repositories.claim_shard(session, dead, "w1", EXPIRED) == 1
        assert repositories.claim_shard(session, taken_over, "w1", EXPIRED) == 1
        job = repositories.get_job(session, stopping)
        assert job is not None
        transition(session, job, job_status)
    with session_scope(database_url) as session:
        # make_job gave ``alive``'s job its status directly; its shard holds a live lease
        assert repositories.claim_shard(session, alive, "w2", LEASE) == 1
    before = {s: load_row(database_url, s) for s in (alive, taken_over)}
    with session_scope(database_url) as session:
        found = repositories.cancel_abandoned_shards(session, utcnow(), 100)
    assert stopping in found and running not in found
    r = load_row(database_url, dead)
    assert r["status"] == SHARD_CANCELLED and r["lease_expires_at"] is None
    assert (r["records_succeeded"], r["records_failed"], r["output_key"]) == (0, 0, None)
    assert {s: load_row(database_url, s) for s in (alive, taken_over)} == before
    with session_scope(database_url) as session:
        assert not repositories.finish_shard(
            session,
            dead,
            1,
            SHARD_SUCCEEDED,
            succeeded=10,
            failed=0,
            output_key="out/part-00000.jsonl",
            errors_key=None,
        )
    assert load_row(database_url, dead)["status"] == SHARD_CANCELLED
