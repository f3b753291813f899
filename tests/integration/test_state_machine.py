"""The job state machine (db.state) and the repositories (db.repositories) on a real Postgres."""

from __future__ import annotations

import threading
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, select, update

from barge.errors import IllegalTransition
from db import repositories
from db.models import Job, JobEvent, Shard
from db.session import session_scope
from db.state import (
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL,
    JOB_STATUSES,
    PAUSED,
    PAUSING,
    QUEUED,
    RUNNING,
    SHARD_CANCELLED,
    SHARD_FAILED,
    SHARD_PENDING,
    SHARD_RUNNING,
    SHARD_SUCCEEDED,
    SUCCEEDED,
    TRANSITIONS,
    transition,
)
from services import jobs as job_service
from tests.factories import make_job, make_shard, make_tenant, new_job, new_shard

# The lifecycle as DESIGN.md states it, written out independently of db.state.
LEGAL = {
    (QUEUED, RUNNING),
    (QUEUED, FAILED),  # e.g. the input cannot be planned
    (RUNNING, SUCCEEDED),
    (RUNNING, FAILED),
    (QUEUED, CANCELLING),
    (RUNNING, CANCELLING),
    (CANCELLING, CANCELLED),
    # Pause and resume: a paused job holds no worker; the shards running at the pause may
    # still settle the job (succeed or fail it), and it can be cancelled or resumed.
    (RUNNING, PAUSING),
    (PAUSING, PAUSED),
    (PAUSING, RUNNING),
    (PAUSED, RUNNING),
    (PAUSING, SUCCEEDED),
    (PAUSED, SUCCEEDED),
    (PAUSING, FAILED),
    (PAUSED, FAILED),
    (PAUSING, CANCELLING),
    (PAUSED, CANCELLING),
}
ILLEGAL = sorted({(src, dst) for src in JOB_STATUSES for dst in (*JOB_STATUSES, "bogus")} - LEGAL)
LEASE = timedelta(minutes=5)
EXPIRED = timedelta(seconds=-1)


def load_job(url: str, job_id: uuid.UUID) -> Job:
    with session_scope(url) as session:
        job = repositories.get_job(session, job_id)
        assert job is not None
        return job


def status_events(url: str, job_id: uuid.UUID) -> list[JobEvent]:
    with session_scope(url) as session:
        return [e for e in repositories.list_events(session, job_id) if e.kind == "status"]


def load_shard(url: str, shard_id: uuid.UUID) -> Shard:
    with session_scope(url) as session:
        shard = session.get(Shard, shard_id)
        assert shard is not None
        return shard


# --- transitions ------------------------------------------------------------------------------


class TestTransitions:
    def test_table_matches_the_design(self) -> None:
        assert {(s, d) for s, targets in TRANSITIONS.items() for d in targets} == LEGAL
        assert set(TRANSITIONS) == set(JOB_STATUSES)
        assert {s for s in JOB_STATUSES if not TRANSITIONS[s]} == FINAL

    @pytest.mark.parametrize(("src", "dst"), sorted(LEGAL))
    def test_legal_transition(self, database_url: str, src: str, dst: str) -> None:
        job_id = new_job(database_url, src)
        before = load_job(database_url, job_id)

        with session_scope(database_url) as session:
            job = repositories.get_job(session, job_id)
            assert job is not None
            event = transition(session, job, dst, message="why")
            assert job.status == dst  # the loaded object is updated too
            assert (event.from_status, event.to_status, event.kind) == (src, dst, "status")

        after = load_job(database_url, job_id)
        assert after.status == dst
        assert after.updated_at > before.updated_at
        assert (after.started_at is not None) == (dst == RUNNING)
        assert (after.finished_at is not None) == (dst in FINAL)
        if after.started_at is not None:
            assert after.started_at == after.updated_at
        if after.finished_at is not None:
            assert after.finished_at == after.updated_at
        events = status_events(database_url, job_id)
        assert [(e.from_status, e.to_status, e.message) for e in events] == [(src, dst, "why")]
        assert events[0].at == after.updated_at

    def test_full_lifecycle_keeps_started_at(self, database_url: str) -> None:
        job_id = new_job(database_url)
        for to in (RUNNING, CANCELLING, CANCELLED):
            with session_scope(database_url) as session:
                job = repositories.get_job(session, job_id)
                assert job is not None
                transition(session, job, to)
            if to == RUNNING:
                started = load_job(database_url, job_id).started_at
        job = load_job(database_url, job_id)
        assert job.started_at == started
        assert job.finished_at is not None and job.finished_at > job.started_at  # type: ignore[operator]
        assert [(e.from_status, e.to_status) for e in status_events(database_url, job_id)] == [
            (QUEUED, RUNNING),
            (RUNNING, CANCELLING),
            (CANCELLING, CANCELLED),
        ]

    def test_failure_records_the_error(self, database_url: str) -> None:
        job_id = new_job(database_url, RUNNING)
        with session_scope(database_url) as session:
            job = repositories.get_job(session, job_id)
            assert job is not None
            transition(session, job, FAILED, error="too many failed records", data={"ratio": 0.5})
        assert load_job(database_url, job_id).error == "too many failed records"
        [event] = status_events(database_url, job_id)
        assert (event.message, event.data) == ("too many failed records", {"ratio": 0.5})

    @pytest.mark.parametrize(("src", "dst"), ILLEGAL)
    def test_illegal_transition(self, database_url: str, src: str, dst: str) -> None:
        job_id = new_job(database_url, src)
        before = load_job(database_url, job_id)
        with session_scope(database_url) as session:
            job = repositories.get_job(session, job_id)
            assert job is not None
            with pytest.raises(IllegalTransition) as exc:
                transition(session, job, dst)
            assert exc.value.status_code == 409
            assert f"from {src} to {dst}" in exc.value.message
        after = load_job(database_url, job_id)
        assert (after.status, after.updated_at, after.finished_at) == (
            before.status,
            before.updated_at,
            before.finished_at,
        )
        assert status_events(database_url, job_id) == []

    @pytest.mark.parametrize("final", sorted(FINAL))
    def test_final_states_never_change(self, database_url: str, final: str) -> None:
        job_id = new_job(database_url, final)
        for to in JOB_STATUSES:
            with session_scope(database_url) as session:
                job = repositories.get_job(session, job_id)
                assert job is not None
                with pytest.raises(IllegalTransition):
                    transition(session, job, to)
        assert load_job(database_url, job_id).status == final


def started_behind_a_stale_copy(
    stack: ExitStack, database_url: str, job_id: uuid.UUID
) -> tuple[Any, Job]:
    """A session holding the queued job (b), then the job started in another session: b's copy
    is stale."""
    a = stack.enter_context(session_scope(database_url))
    b = stack.enter_context(session_scope(database_url))
    job_a = repositories.get_job(a, job_id)
    job_b = repositories.get_job(b, job_id)
    assert job_a is not None and job_b is not None
    transition(a, job_a, RUNNING)
    a.commit()
    return b, job_b


class TestConcurrentTransitions:
    def test_stale_copy_loses(self, database_url: str) -> None:
        job_id = new_job(database_url)
        with ExitStack() as stack:
            b, job_b = started_behind_a_stale_copy(stack, database_url, job_id)
            with pytest.raises(IllegalTransition, match="changed concurrently") as exc:
                transition(b, job_b, CANCELLING)
            assert "now running" in exc.value.message
            assert job_b.status == RUNNING  # refreshed from the database
        assert load_job(database_url, job_id).status == RUNNING
        assert [(e.from_status, e.to_status) for e in status_events(database_url, job_id)] == [
            (QUEUED, RUNNING)
        ]

    def test_a_cancel_racing_the_start_cancels_the_running_job(self, database_url: str) -> None:
        """The user's cancel read the job queued; a worker started it before the cancel's
        UPDATE: the cancel takes the job as it is now (running) instead of a 409."""
        from services.unit_of_work import UnitOfWork

        job_id = new_job(database_url)
        with ExitStack() as stack:
            b, job_b = started_behind_a_stale_copy(stack, database_url, job_id)
            uow = UnitOfWork(b)
            job_service.request_cancel(uow, job_b, "racing the start")
            b.commit()
            assert job_b.status == CANCELLING
            assert [name for name, _, _ in uow.outbox] == ["barge.finalize_job"]
        assert load_job(database_url, job_id).status == CANCELLING
        assert [(e.from_status, e.to_status) for e in status_events(database_url, job_id)] == [
            (QUEUED, RUNNING),
            (RUNNING, CANCELLING),
        ]

    def test_a_resume_racing_the_pause_resumes_the_paused_job(self, database_url: str) -> None:
        """The user's resume read the job pausing; its last shard settled and moved it to
        paused before the resume's UPDATE: the resume takes the job as it is now (paused)
        instead of a 409."""
        from barge.settings import Settings
        from barge.storage import make_store
        from db.models import Tenant
        from services.context import MEMBER, Principal, ServiceContext
        from services.unit_of_work import UnitOfWork

        job_id = new_job(database_url)
        with session_scope(database_url) as s:
            job = repositories.get_job(s, job_id)
            assert job is not None
            transition(s, job, RUNNING)
            transition(s, job, PAUSING)
        with ExitStack() as stack:
            a = stack.enter_context(session_scope(database_url))
            b = stack.enter_context(session_scope(database_url))
            job_b = repositories.get_job(b, job_id)
            assert job_b is not None and job_b.status == PAUSING
            assert job_service.pause_if_idle(a, job_id)  # no shard of it runs
            a.commit()
            settings = Settings(database_url=database_url)
            tenant = b.get(Tenant, job_b.tenant_id)
            principal = Principal(tenant, None, None, MEMBER)  # type: ignore[arg-type]
            ctx = ServiceContext(UnitOfWork(b), settings, make_store(settings), principal)
            job_service.resume(ctx, job_b)
            b.commit()
            assert job_b.status == RUNNING
        assert [(e.from_status, e.to_status) for e in status_events(database_url, job_id)] == [
            (QUEUED, RUNNING),
            (RUNNING, PAUSING),
            (PAUSING, PAUSED),
            (PAUSED, RUNNING),
        ]

    @pytest.mark.parametrize(
        "targets", [(RUNNING, CANCELLING), (RUNNING, RUNNING), (FAILED, CANCELLING)]
    )
    def test_two_sessions_racing_exactly_one_wins(
        self, database_url: str, targets: tuple[str, str]
    ) -> None:
        for _ in range(3):
            job_id = new_job(database_url)
            outcomes = race(database_url, job_id, targets)
            winners = [o for o in outcomes if isinstance(o, str)]
            losers = [o for o in outcomes if not isinstance(o, str)]
            assert len(winners) == 1, outcomes
            assert len(losers) == 1 and isinstance(losers[0], IllegalTransition), outcomes
            assert load_job(database_url, job_id).status == winners[0]
            events = status_events(database_url, job_id)
            assert [(e.from_status, e.to_status) for e in events] == [(QUEUED, winners[0])]


def race(url: str, job_id: uuid.UUID, targets: tuple[str, ...]) -> list[str | Exception]:
    """One thread per target: each loads the job, waits for the others, then moves it."""
    loaded = threading.Barrier(len(targets))
    outcomes: list[str | Exception] = [""] * len(targets)

    def attempt(i: int, to: str) -> None:
        try:
            with session_scope(url) as session:
                job = repositories.get_job(session, job_id)
                assert job is not None
                loaded.wait(timeout=10)  # all hold a queued copy before any moves
                transition(session, job, to)
            outcomes[i] = to
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=attempt, args=(i, to)) for i, to in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


# --- shards: claim, heartbeat, finish, fencing ------------------------------------------------


class TestShardLeases:
    def claim(self, url: str, shard_id: uuid.UUID, worker: str, lease: timedelta) -> int | None:
        with session_scope(url) as session:
            return repositories.claim_shard(session, shard_id, worker, lease)

    def heartbeat(self, url: str, shard_id: uuid.UUID, attempt: int, ok: int = 0) -> bool:
        with session_scope(url) as session:
            return repositories.heartbeat_shard(session, shard_id, attempt, LEASE, ok, 0)

    def finish(self, url: str, shard_id: uuid.UUID, attempt: int, ok: int = 10) -> bool:
        with session_scope(url) as session:
            return repositories.finish_shard(
                session,
                shard_id,
                attempt,
                SHARD_SUCCEEDED,
                succeeded=ok,
                failed=10 - ok,
                output_key=f"out/part-00000.jsonl#{attempt}",
                errors_key=None,
            )

    def test_claim_then_duplicate_claim(self, database_url: str) -> None:
        shard_id = new_shard(database_url)
        assert self.claim(database_url, shard_id, "w1", LEASE) == 1
        shard = load_shard(database_url, shard_id)
        assert (shard.status, shard.attempt, shard.worker) == (SHARD_RUNNING, 1, "w1")
        assert shard.lease_expires_at is not None and shard.started_at is not None
        assert shard.lease_expires_at > datetime.now(UTC) + timedelta(minutes=4)

        assert self.claim(database_url, shard_id, "w2", LEASE) is None  # a duplicate delivery
        assert load_shard(database_url, shard_id).worker == "w1"

    def test_expired_lease_fences_out_the_old_holder(self, database_url: str) -> None:
        shard_id = new_shard(database_url)
        assert self.claim(database_url, shard_id, "w1", EXPIRED) == 1
        assert self.heartbeat(database_url, shard_id, 1, ok=3)

        # w1 stalls; its lease runs out.
        with session_scope(database_url) as session:
            session.execute(
                update(Shard)
                .where(Shard.id == shard_id)
                .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert self.claim(database_url, shard_id, "w2", LEASE) == 2
        shard = load_shard(database_url, shard_id)
        assert (shard.attempt, shard.worker, shard.records_succeeded) == (2, "w2", 0)

        assert not self.heartbeat(database_url, shard_id, 1, ok=9)
        assert not self.finish(database_url, shard_id, 1, ok=9)
        assert load_shard(database_url, shard_id).status == SHARD_RUNNING

        assert self.heartbeat(database_url, shard_id, 2, ok=5)
        assert load_shard(database_url, shard_id).records_succeeded == 5
        assert self.finish(database_url, shard_id, 2, ok=8)
        done = load_shard(database_url, shard_id)
        assert (done.status, done.records_succeeded, done.records_failed) == (
            SHARD_SUCCEEDED,
            8,
            2,
        )
        assert done.output_key == "out/part-00000.jsonl#2"
        assert done.lease_expires_at is None and done.finished_at is not None

        # Finished: no one can claim, heartbeat or finish it again.
        assert self.claim(database_url, shard_id, "w3", EXPIRED) is None
        assert not self.heartbeat(database_url, shard_id, 2)
        assert not self.finish(database_url, shard_id, 2)

    def test_claim_with_an_expired_lease_lets_the_next_claim_in(self, database_url: str) -> None:
        shard_id = new_shard(database_url)
        assert self.claim(database_url, shard_id, "w1", EXPIRED) == 1
        assert self.claim(database_url, shard_id, "w2", EXPIRED) == 2
        assert self.claim(database_url, shard_id, "w3", LEASE) == 3
        assert self.claim(database_url, shard_id, "w4", LEASE) is None

    def test_release_returns_the_shard_to_pending(self, database_url: str) -> None:
        shard_id = new_shard(database_url)
        assert self.claim(database_url, shard_id, "w1", LEASE) == 1
        with session_scope(database_url) as session:
            assert not repositories.release_shard(session, shard_id, 7, "not mine")
            assert repositories.release_shard(session, shard_id, 1, "CUDA OOM")
        shard = load_shard(database_url, shard_id)
        assert (shard.status, shard.last_error, shard.lease_expires_at) == (
            SHARD_PENDING,
            "CUDA OOM",
            None,
        )
        assert self.claim(database_url, shard_id, "w2", LEASE) == 2

    def test_unknown_shard(self, database_url: str) -> None:
        assert self.claim(database_url, uuid.uuid4(), "w1", LEASE) is None


class TestPause:
    """What the reconciler, the claim and the resume read of a pausing or paused job's shards."""

    LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

    def job_with_shards(self, url: str, status: str) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
        """A job in ``status`` with a shard of each kind: pending (sent long ago), running
        under a live lease, running under an expired one, and succeeded."""
        now = datetime.now(UTC)
        with session_scope(url) as session:
            job = make_job(session, make_tenant(session), status=status)
            shards = {
                "pending": make_shard(session, job, 0, dispatched_at=self.LONG_AGO),
                "live": make_shard(
                    session, job, 1, status=SHARD_RUNNING, lease_expires_at=now + LEASE
                ),
                "expired": make_shard(
                    session,
                    job,
                    2,
                    status=SHARD_RUNNING,
                    lease_expires_at=now - timedelta(minutes=1),
                    dispatched_at=self.LONG_AGO,
                ),
                "done": make_shard(session, job, 3, status=SHARD_SUCCEEDED),
            }
            return job.id, {name: shard.id for name, shard in shards.items()}

    def resent(self, url: str) -> set[uuid.UUID]:
        """The shards the reconciler would send again now (and stamps as sent)."""
        now, grace = datetime.now(UTC), timedelta(seconds=60)
        with session_scope(url) as session:
            taken = repositories.take_expired_shards(session, now, grace, 100)
            taken += repositories.take_unclaimed_shards(session, now, grace, 100)
        return {shard_id for shard_id, _, _ in taken}

    @pytest.mark.parametrize("status", [PAUSING, PAUSED])
    def test_the_reconciler_leaves_a_paused_jobs_shards_alone(
        self, database_url: str, status: str
    ) -> None:
        _paused, mine = self.job_with_shards(database_url, status)
        _running, theirs = self.job_with_shards(database_url, RUNNING)
        with session_scope(database_url) as session:
            assert repositories.pending_shard_count(session) == 1  # the running job's only
        assert self.resent(database_url) == {theirs["pending"], theirs["expired"]}
        for shard_id in mine.values():  # nothing of the paused job was stamped or settled
            shard = load_shard(database_url, shard_id)
            assert shard.dispatched_at in (None, self.LONG_AGO)
        assert load_shard(database_url, mine["expired"]).status == SHARD_RUNNING

    def test_resume_takes_every_shard_no_one_holds(self, database_url: str) -> None:
        job_id, shards = self.job_with_shards(database_url, PAUSED)
        with session_scope(database_url) as session:
            now = datetime.now(UTC)
            taken = repositories.take_shards_to_resume(session, job_id, now)
        assert [(s, i) for s, _, i in taken] == [(shards["pending"], 0), (shards["expired"], 2)]
        assert load_shard(database_url, shards["pending"]).dispatched_at == now

    def test_a_pausing_job_is_paused_once_no_shard_runs_under_a_live_lease(
        self, database_url: str
    ) -> None:
        job_id, shards = self.job_with_shards(database_url, PAUSING)
        now = datetime.now(UTC)
        with session_scope(database_url) as session:
            assert repositories.live_shard_count(session, job_id, now) == 1
            assert job_id not in repositories.idle_pausing_jobs(session, now, 100)
            assert not job_service.pause_if_idle(session, job_id)
        assert load_job(database_url, job_id).status == PAUSING
        # Its worker dies: the lease runs out, and the job is paused (the shard stays running,
        # for the resume to send again; nothing fails).
        later = now + LEASE + timedelta(seconds=1)
        with session_scope(database_url) as session:
            assert job_id in repositories.idle_pausing_jobs(session, later, 100)
            session.execute(
                update(Shard).where(Shard.id == shards["live"]).values(lease_expires_at=now)
            )
            assert job_service.pause_if_idle(session, job_id)
            assert not job_service.pause_if_idle(session, job_id)  # once
        assert load_job(database_url, job_id).status == PAUSED
        events = status_events(database_url, job_id)
        assert [(e.from_status, e.to_status) for e in events] == [(PAUSING, PAUSED)]
        assert load_shard(database_url, shards["live"]).status == SHARD_RUNNING

    def test_a_paused_job_counts_as_active_and_is_finalized_when_settled(
        self, database_url: str
    ) -> None:
        with session_scope(database_url) as session:
            tenant = make_tenant(session)
            for status in (QUEUED, RUNNING, PAUSING, PAUSED, CANCELLING, SUCCEEDED, CANCELLED):
                make_job(session, tenant, status=status)
            assert repositories.active_job_count(session, tenant.id) == 4
            settled = make_job(session, tenant, status=PAUSED)
            make_shard(session, settled, 0, status=SHARD_SUCCEEDED)
            waiting = make_job(session, tenant, status=PAUSED)
            make_shard(session, waiting, 0)
            session.execute(update(Job).values(updated_at=datetime(2001, 1, 1, tzinfo=UTC)))
            due = repositories.jobs_to_finalize(session, datetime.now(UTC), 100)
            assert settled.id in due and waiting.id not in due


class TestProgress:
    def test_sums_over_shards(self, database_url: str) -> None:
        with session_scope(database_url) as session:
            tenant = make_tenant(session)
            busy = make_job(session, tenant, status=RUNNING)
            idle = make_job(session, tenant)
            for i, (status, ok, failed) in enumerate(
                [
                    (SHARD_SUCCEEDED, 10, 0),
                    (SHARD_FAILED, 3, 7),
                    (SHARD_RUNNING, 4, 1),
                    (SHARD_PENDING, 0, 0),
                    (SHARD_CANCELLED, 0, 0),
                    (SHARD_RUNNING, 2, 0),
                ]
            ):
                make_shard(
                    session, busy, i, status=status, records_succeeded=ok, records_failed=failed
                )
            progress = repositories.progress_for(session, [busy.id, idle.id])
            assert progress[busy.id] == repositories.Progress(19, 8, 3, 2)
            assert progress[idle.id] == repositories.Progress()
            assert repositories.progress_for(session, []) == {}
            assert repositories.unfinished_shard_count(session, busy.id) == 3


class TestListJobs:
    def test_cursor_round_trip(self, database_url: str) -> None:
        with session_scope(database_url) as session:
            job = make_job(session, make_tenant(session))
            cursor = repositories.encode_cursor(job)
            assert "=" not in cursor and "/" not in cursor and "+" not in cursor
            assert repositories.decode_cursor(cursor) == (job.created_at, job.id)

    def test_pages_have_no_duplicates_or_gaps(self, database_url: str) -> None:
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        # Seven jobs; three share one created_at, so the id must break ties.
        offsets = [0, 1, 2, 2, 2, 3, 4]
        with session_scope(database_url) as session:
            tenant = make_tenant(session)
            other = make_tenant(session)
            jobs = [
                make_job(session, tenant, created_at=t0 + timedelta(seconds=s)) for s in offsets
            ]
            make_job(session, other, created_at=t0 + timedelta(seconds=2))
            tenant_id = tenant.id
        expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]

        seen: list[uuid.UUID] = []
        sizes = []
        cursor = None
        for _ in range(10):
            with session_scope(database_url) as session:
                page = repositories.list_jobs(
                    session,
                    tenant_id,
                    cursor=repositories.decode_cursor(cursor) if cursor else None,
                    limit=3,
                )
            if not page:
                break
            sizes.append(len(page))
            seen.extend(j.id for j in page)
            cursor = repositories.encode_cursor(page[-1])
        assert sizes == [3, 3, 1]
        assert seen == expected

    def test_filters(self, database_url: str) -> None:
        with session_scope(database_url) as session:
            tenant = make_tenant(session)
            running = make_job(session, tenant, status=RUNNING)
            make_job(session, tenant)
            finetune = make_job(session, tenant, type_="finetune")
            by_status = repositories.list_jobs(session, tenant.id, status=RUNNING)
            by_type = repositories.list_jobs(session, tenant.id, type_="finetune")
            assert [j.id for j in by_status] == [running.id]
            assert [j.id for j in by_type] == [finetune.id]
            assert repositories.list_jobs(session, uuid.uuid4()) == []


# --- a stateful property over the state machine -----------------------------------------------


class JobLifecycle(RuleBasedStateMachine):
    """Random transition attempts on one real job row, checked against the LEGAL table."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.job_id = new_job(url)
        self.status = QUEUED
        self.moves = 0

    @rule(to=st.sampled_from((*JOB_STATUSES, "bogus")))
    def attempt(self, to: str) -> None:
        legal = (self.status, to) in LEGAL
        with session_scope(self.url) as session:
            job = repositories.get_job(session, self.job_id)
            assert job is not None
            try:
                transition(session, job, to)
            except IllegalTransition:
                assert not legal, f"{self.status} -> {to} should be allowed"
                return
        assert legal, f"{self.status} -> {to} should be refused"
        self.status = to
        self.moves += 1

    @invariant()
    def database_matches_the_model(self) -> None:
        with session_scope(self.url) as session:
            job = repositories.get_job(session, self.job_id)
            assert job is not None
            events = session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == self.job_id, JobEvent.kind == "status")
                .order_by(JobEvent.id)
            ).all()
            n_events = session.scalar(
                select(func.count()).select_from(JobEvent).where(JobEvent.job_id == self.job_id)
            )
        assert job.status == self.status
        assert len(events) == n_events == self.moves
        chain = [QUEUED, *(e.to_status for e in events)]
        assert [e.from_status for e in events] == chain[:-1]
        assert all((e.from_status, e.to_status) in LEGAL for e in events)
        assert all(e.from_status not in FINAL for e in events)  # nothing leaves a final state
        assert (job.finished_at is not None) == (job.status in FINAL)


def test_job_lifecycle_state_machine(database_url: str) -> None:
    run_state_machine_as_test(
        lambda: JobLifecycle(database_url),  # type: ignore[arg-type]
        settings=settings(max_examples=30, stateful_step_count=10, deadline=None, database=None),
    )
