"""A claimed unit of work (``ShardWork``) and the lease its attempt holds (``Lease``), with the
two ways a lease interrupts the work: ``Stop`` (the job is no longer running) and ``LeaseLost``
(another attempt holds the unit; nothing of this one may be written).

Imports: ``barge``, ``db``, ``worker.context``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from barge.records import Format, Range
from barge.specs import FinetuneSpec, JobSpec, parse_spec
from db import repositories as repo
from db import state
from db.models import Job, Shard
from services.scopes import Scopes
from worker.context import WorkerContext

log = logging.getLogger(__name__)


class Stop(Exception):
    """Stop working on the unit: the job is no longer running."""

    def __init__(self, job_status: str):
        self.job_status = job_status
        super().__init__(f"job is {job_status}")


class LeaseLost(Exception):
    """Another attempt holds the unit now; this one must not write anything."""


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

    @classmethod
    def of(
        cls,
        shard: Shard,
        job: Job,
        attempt: int,
        denied: str | None = None,
        scopes: Scopes | None = None,
    ) -> ShardWork:
        return cls(
            shard_id=shard.id,
            job_id=job.id,
            index=shard.index,
            attempt=attempt,
            source=shard.source_uri,
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
        )

    @property
    def label(self) -> str:
        """How messages to users name this unit."""
        if isinstance(self.spec, FinetuneSpec):
            return "fine-tune"
        return f"shard {self.index} ({self.source})"

    @property
    def log_name(self) -> str:
        """How log lines name this unit."""
        if isinstance(self.spec, FinetuneSpec):
            return f"job {self.job_id} fine-tune"
        return f"job {self.job_id} shard {self.index}"

    @property
    def failed_attempts(self) -> int:
        """Attempts that count against BARGE_MAX_ATTEMPTS (hand-offs are not failures)."""
        return self.attempt - self.handoffs


class Lease:
    """This attempt's hold on its unit. Between batches: is the job still running (else
    ``Stop``)? Every ``BARGE_HEARTBEAT_SECONDS`` a keeper thread renews the lease and records
    progress (``succeeded``, ``failed``, ``steps_done``), whatever the work is doing: a long
    batch, a model load or an upload never lets a short lease lapse while the process lives.
    When the process dies (or freezes) the renewals stop and the lease ends within
    ``BARGE_LEASE_SECONDS``. ``beat()`` right before a write is the fencing check, on the
    work's own thread (else ``LeaseLost``); so is a renewal the keeper found refused.
    ``close()`` stops the keeper once the unit is settled.

    ``check_seconds`` throttles the status check (a fine-tune's steps can be milliseconds)."""

    def __init__(self, ctx: WorkerContext, work: ShardWork, check_seconds: float = 0.0):
        self.ctx = ctx
        self.work = work
        self.succeeded = 0
        self.failed = 0
        self.steps_done: int | None = None
        self.check_seconds = check_seconds
        self._last_beat = time.monotonic()
        self._last_check = float("-inf")
        self._lost = threading.Event()
        self._closed = threading.Event()
        self._keeper = threading.Thread(target=self._keep, daemon=True, name="barge-lease")
        self._keeper.start()

    def close(self) -> None:
        """Stop renewing (the unit is settled, or this attempt gave up on it)."""
        self._closed.set()

    def _keep(self) -> None:
        """Renew every heartbeat until closed, or until a renewal is refused (another attempt
        holds the unit, or it was settled). A renewal that fails (the database away for a
        moment) is tried again at the next beat: the lease outlasts several."""
        every = self.ctx.settings.heartbeat_seconds
        while not self._closed.wait(every):
            try:
                held = self._renew()
            except Exception as exc:
                log.warning("%s: lease renewal failed, trying again: %s", self.work.log_name, exc)
                continue
            if not held:
                self._lost.set()
                return

    def _renew(self) -> bool:
        with self.ctx.session() as session:
            held = repo.heartbeat_shard(
                session,
                self.work.shard_id,
                self.work.attempt,
                timedelta(seconds=self.ctx.settings.lease_seconds),
                self.succeeded,
                self.failed,
                self.steps_done,
            )
        if held:
            self._last_beat = time.monotonic()
        return held

    def between_batches(self) -> None:
        if self._lost.is_set():
            raise LeaseLost()
        now = time.monotonic()
        if now - self._last_check < self.check_seconds:
            return
        self._last_check = now
        with self.ctx.session() as session:
            status = repo.job_status(session, self.work.job_id)
        if status != state.RUNNING:
            raise Stop(status or "gone")
        if time.monotonic() - self._last_beat >= self.ctx.settings.heartbeat_seconds:
            self.beat()

    def beat(self) -> None:
        if not self._renew():
            self._lost.set()
            raise LeaseLost()
