"""A claimed unit of work (``ShardWork``), the lease its attempt holds (``Lease``), with the
two ways a lease interrupts the work: ``Stop`` (the job is no longer running) and ``LeaseLost``
(another attempt holds the unit; nothing of this one may be written); and what a run comes to
(``Result``, ending in an ``Outcome``), which the lifecycle settles. ``job_event`` appends an
event to a unit's job (a runner's progress worth telling: a model loaded, a checkpoint, an eval).

Imports: ``barge``, ``db``, ``worker.context``, ``worker.samples`` (a heartbeat notes a
progress sample); never ``api`` or ``cli``.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from barge.records import Format, Range
from barge.specs import JobSpec, parse_spec
from db import repositories as repo
from db import state
from db.models import Job, Shard
from services.scopes import Scopes
from worker import samples
from worker.context import WorkerContext

log = logging.getLogger(__name__)


class Stop(Exception):
    """Stop working on the unit: the job is no longer running (a pausing or paused job still
    is: see ``Lease.pause_requested``)."""

    def __init__(self, job_status: str):
        self.job_status = job_status
        super().__init__(f"job is {job_status}")


class LeaseLost(Exception):
    """Another attempt holds the unit now; this one must not write anything."""


class Outcome(enum.Enum):
    """How a claimed unit ended. The value is the ``status`` label of the shard metric."""

    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"  # the job stopped running (cancelled or failed) meanwhile
    FAILED = "failed"  # the unit, and so the job, failed
    ERROR = "error"  # an unexpected error: re-queued, or failed after BARGE_MAX_ATTEMPTS
    LEASE_LOST = "lease_lost"  # another attempt holds the unit; nothing of this one counts
    HANDED_OFF = "handed_off"  # stopped cleanly at a checkpoint; the next claim continues


@dataclass(frozen=True)
class Result:
    """What a run came to, for ``settle`` to record: SUCCEEDED, CANCELLED (stopped with what it
    finished) or HANDED_OFF (at ``steps_done``).

    ``publish`` is work committed in the same transaction that marks the unit succeeded (a
    fine-tune registers its model): it runs only while the job is still running; otherwise the
    unit ends CANCELLED and nothing is published."""

    outcome: Outcome
    succeeded: int = 0
    failed: int = 0
    output_key: str | None = None
    errors_key: str | None = None
    error: str | None = None
    steps_done: int | None = None
    usage: dict[str, int] | None = None  # token counts of the unit's records
    publish: Callable[[Session, Job], None] | None = None


@dataclass(frozen=True)
class ShardWork:
    """A claimed unit: what to run, and the attempt (fencing token) that holds it."""

    shard_id: uuid.UUID
    job_id: uuid.UUID
    index: int
    attempt: int
    source: str
    fmt: Format
    rng: Range
    record_offset: int
    spec: JobSpec
    model_ref: str
    handoffs: int = 0
    # When ``model_ref`` is a LoRA adapter: the base it applies to (resolved at submit).
    base_ref: str | None = None
    output_uri: str = ""
    # Why the job may not touch its storage now (``services.scopes.denial``, checked in the
    # claim's transaction), or None: the unit then fails before it reads or writes anything.
    denied: str | None = None
    # The tenant's storage scopes at the claim: locations a record names (an image's s3:// URI)
    # are read only inside them.
    scopes: Scopes | None = None
    # When the claim's transaction began (monotonic seconds): the lease it took ends no earlier
    # than this plus BARGE_LEASE_SECONDS (``Lease.fence``). 0 when unknown.
    claim_started: float = 0.0
    # How messages name the unit when it is the whole job (its kind's ``unit_name``: "fine-tune");
    # None for a shard, named by its index and input.
    unit_name: str | None = None
    # How messages name its input: its object, or a pack's objects (``Shard.source_shown``).
    source_shown: str = ""
    # Its object as planning found it (``Shard.source_etag``, ``Shard.source_size``): every
    # read of it is conditional on that ETag. For a packed shard (or an images listing's) they
    # are Barge's listing's, as its PUT wrote it. "" and None: not known (an older shard).
    source_etag: str = ""
    source_size: int | None = None

    @classmethod
    def of(
        cls,
        shard: Shard,
        job: Job,
        attempt: int,
        denied: str | None = None,
        scopes: Scopes | None = None,
        claim_started: float = 0.0,
    ) -> ShardWork:
        return cls(
            shard_id=shard.id,
            job_id=job.id,
            index=shard.index,
            attempt=attempt,
            source=shard.source_uri,
            source_shown=shard.source_shown,
            source_etag=shard.source_etag,
            source_size=shard.source_size,
            fmt=Format(shard.input_format, shard.compressed),
            rng=Range(
                shard.start_record,
                shard.record_count,
                shard.first_line,
                shard.byte_start,
                shard.byte_end,
            ),
            record_offset=shard.record_offset,
            spec=parse_spec(job.spec),
            model_ref=job.model_uri or job.spec["model"],
            handoffs=shard.handoffs,
            base_ref=job.adapter_base_uri,
            output_uri=job.output_uri,
            denied=denied,
            scopes=scopes,
            claim_started=claim_started,
        )

    @property
    def label(self) -> str:
        """How messages to users name this unit."""
        return self.unit_name or f"shard {self.index} ({self.source_shown or self.source})"

    @property
    def log_name(self) -> str:
        """How log lines name this unit."""
        return f"job {self.job_id} {self.unit_name or f'shard {self.index}'}"

    @property
    def failed_attempts(self) -> int:
        """Attempts that count against BARGE_MAX_ATTEMPTS (hand-offs are not failures)."""
        return self.attempt - self.handoffs


def job_event(ctx: WorkerContext, work: ShardWork, kind: str, message: str, **data: Any) -> None:
    """Append an event to the unit's job, in its own transaction."""
    with ctx.session() as session:
        repo.add_event(session, work.job_id, kind, message, **data)


class Lease:
    """This attempt's hold on its unit. Between batches: is the job still running (else
    ``Stop``; a pausing or paused job still is, and sets ``pause_requested``), and is the shard within its soft time limit (else ``SoftTimeLimitExceeded``, as
    Celery's signal raises it)? Every ``BARGE_HEARTBEAT_SECONDS`` the process's keeper thread renews the lease
    and records progress (``succeeded``, ``failed``, ``steps_done``), whatever the work is
    doing: a long batch, a model load or an upload never lets a short lease lapse while the
    process lives. When the process dies (or freezes) the renewals stop and the lease ends
    within ``BARGE_LEASE_SECONDS``. ``beat()`` is the fencing check on the work's own thread
    (else ``LeaseLost``); so is a renewal the keeper found refused. ``fence()``, right before a
    write, is ``beat()`` unless the hold is young (see there). ``close()`` stops the renewals
    once the unit is settled.

    ``check_seconds`` throttles the status check (a fine-tune's steps can be milliseconds);
    each renewal reads the job's status in its own statement, so a check due within
    ``check_seconds`` of a renewal asks nothing more, and a stop a renewal read is seen at the
    next batch (``BARGE_STATUS_CHECK_SECONDS`` at or above the heartbeat: the renewals are
    the only status checks)."""

    def __init__(self, ctx: WorkerContext, work: ShardWork, check_seconds: float = 0.0):
        self.ctx = ctx
        self.work = work
        self.succeeded = 0
        self.failed = 0
        self.steps_done: int | None = None
        # Token counts of the attempt's records so far (generation runners keep it up to date).
        self.tokens: dict[str, int] | None = None
        self.check_seconds = check_seconds
        # The job was paused (seen by the last status check): a unit that can stop at a
        # checkpoint (a fine-tune) hands itself off; a shard over records just finishes.
        self.pause_requested = False
        # When the newest confirmed hold (the claim, or a renewal) began: its transaction's
        # start, so that the lease it set ends no earlier than this plus BARGE_LEASE_SECONDS.
        self._held_since = work.claim_started or time.monotonic()
        # The shard's soft time limit, checked here too: Celery's signal can land in a weakref
        # callback or a finalizer, where Python prints the exception and carries on.
        self._deadline = self._held_since + ctx.settings.shard_soft_time_limit
        self._last_check = float("-inf")
        # The job's status as the newest renewal read it, and when (its transaction's start):
        # a status check younger than ``check_seconds`` costs no round trip of its own.
        self._status_seen: tuple[float, str | None] = (float("-inf"), state.RUNNING)
        self._next_try = self._held_since + ctx.settings.heartbeat_seconds
        self._lost = threading.Event()
        self._closed = threading.Event()
        KEEPER.add(self)

    def close(self) -> None:
        """Stop renewing (the unit is settled, or this attempt gave up on it)."""
        self._closed.set()
        KEEPER.discard(self)

    @property
    def due(self) -> float:
        """When the keeper renews this lease next (monotonic seconds)."""
        return self._next_try

    def keep(self) -> bool:
        """The keeper's renewal; False once the lease is done with (closed, or refused). A
        renewal that fails (the database away for a moment) is tried again a heartbeat later:
        the lease outlasts several."""
        if self._closed.is_set() or self._lost.is_set():
            return False
        every = self.ctx.settings.heartbeat_seconds
        self._next_try = time.monotonic() + every
        try:
            held = self._renew()
        except Exception as exc:
            log.warning("%s: lease renewal failed, trying again: %s", self.work.log_name, exc)
            return True
        if not held:
            self._lost.set()
            return False
        self._next_try = self._held_since + every
        return True

    def _renew(self) -> bool:
        started = time.monotonic()
        with self.ctx.session() as session:
            status = repo.heartbeat_job_status(
                session,
                self.work.shard_id,
                self.work.attempt,
                timedelta(seconds=self.ctx.settings.lease_seconds),
                self.succeeded,
                self.failed,
                self.steps_done,
                (self.tokens or {}).get("completion_tokens"),
            )
            held = status is not None
            if held:
                samples.on_heartbeat(
                    session,
                    self.ctx.settings,
                    self.work.job_id,
                    self.work.shard_id,
                    self.work.attempt,
                )
        if held:
            self._held_since = max(self._held_since, started)
            self._status_seen = (started, status)  # one tuple: read whole by the work's thread
        return held

    def between_batches(self) -> None:
        if self._lost.is_set():
            raise LeaseLost()
        now = time.monotonic()
        if now >= self._deadline:
            raise SoftTimeLimitExceeded()
        seen_at, seen = self._status_seen
        if seen not in state.IN_PROGRESS:  # a renewal read that the job stopped: stop now
            raise Stop(seen or "gone")
        if now - self._last_check >= self.check_seconds:
            status: str | None = seen
            if now - seen_at < self.check_seconds:  # a renewal read it lately: no round trip
                self._last_check = seen_at
            else:
                self._last_check = now
                with self.ctx.session() as session:
                    status = repo.job_status(session, self.work.job_id)
                if status not in state.IN_PROGRESS:
                    raise Stop(status or "gone")
            self.pause_requested = status in state.PAUSE_STATES
        if time.monotonic() - self._held_since >= self.ctx.settings.heartbeat_seconds:
            self.beat()

    def beat(self) -> None:
        if not self._renew():
            self._lost.set()
            raise LeaseLost()

    def fence(self) -> None:
        """The fencing check right before a write: is this attempt still the holder? While the
        newest confirmed hold is younger than half a lease, it is, without asking: a claim takes
        only a lease that has ended (``repo.claim_shard``), and this one ends no earlier than
        that hold's start plus ``BARGE_LEASE_SECONDS``. So a small shard writes its part
        without a database round trip, and a stale attempt (its renewals stopped a lease ago)
        still asks, and is refused."""
        if self._lost.is_set():
            raise LeaseLost()
        if time.monotonic() - self._held_since < self.ctx.settings.lease_seconds / 2:
            return
        self.beat()


class _Keeper:
    """One thread per process renews every open lease of the process when it is due: a unit of
    work starts no thread of its own, and a unit that ends within a heartbeat costs the
    keeper nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: set[Lease] = set()
        self._wake = threading.Event()
        self._pid: int | None = None

    def add(self, lease: Lease) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (a forked pool child)
                self._leases = set()
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True, name="barge-lease").start()
            self._leases.add(lease)
        self._wake.set()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            self._wake.clear()  # an add() from here on wakes the wait below
            with self._lock:
                leases = list(self._leases)
            now = time.monotonic()
            for lease in sorted(leases, key=lambda held: held.due):
                if lease.due <= now and not lease.keep():
                    self.discard(lease)
            with self._lock:
                due = min((held.due for held in self._leases), default=None)
            wait = 60.0 if due is None else max(0.0, due - time.monotonic())
            self._wake.wait(wait)


KEEPER = _Keeper()
