"""Waiting for jobs to end without polling them: ``GET /v1/jobs/{id}?wait=S`` holds its answer
until the job is final or ``S`` seconds have passed.

One ``JobWaits`` per API process. A request that waits parks an ``asyncio`` future here (no
thread, no database connection held while it waits); one daemon thread, running only while
someone waits, wakes their waiters. On Postgres it listens for the ``NOTIFY`` a job's move to a
final state sends as it commits (``db.state``), on one connection of its own, and reads the
awaited jobs' statuses (one query on the primary key for all of them) only when a waiter
arrives and once a second beside; on another database it reads them every ``CHECK_SECONDS``.
Reading them every 25 ms while a 4-second job ran cost the API 0.25 s of CPU, on the cores the
model shares. A client that polls
the full job view every 20 ms costs the API a few milliseconds of CPU per poll (the job, its
progress, usage and retries: five queries and the response); a waiter costs one row of that
shared query.

Imports ``db.session`` and ``services``; never ``worker`` or ``cli``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import Any

from sqlalchemy.engine import make_url

from db.session import session_scope
from db.state import JOB_FINAL_CHANNEL
from services import jobs

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.025  # how often the awaited jobs' statuses are read, where nothing notifies
CHECK_SECONDS_LISTENING = 1.0  # and on Postgres, beside the notifications
ARRIVAL_SECONDS = 0.05  # the longest a new waiter waits for its job's first check
LINGER_SECONDS = 10.0  # how long the listening thread outlives its last waiter
MAX_WAIT_SECONDS = 60.0  # the longest a request may wait (``wait`` above it is a 422)


class JobWaits:
    """The jobs this API process's requests wait on, and the thread that watches them."""

    def __init__(self, database_url: str, check_seconds: float = CHECK_SECONDS) -> None:
        self.database_url = database_url
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self._waiting: dict[
            uuid.UUID, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
        ] = {}
        self._thread: threading.Thread | None = None
        self._arrived = False  # a waiter came since the statuses were last read

    async def until_final(self, job_id: uuid.UUID, timeout: float) -> bool:
        """Wait until the job is final (True) or ``timeout`` seconds have passed (False)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            self._waiting.setdefault(job_id, []).append(entry)
            self._arrived = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, daemon=True, name="barge-job-waits"
                )
                self._thread.start()
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                entries = self._waiting.get(job_id, [])
                with contextlib.suppress(ValueError):
                    entries.remove(entry)
                if not entries:
                    self._waiting.pop(job_id, None)

    def waiting(self) -> int:
        """How many requests wait now."""
        with self._lock:
            return sum(len(v) for v in self._waiting.values())

    def _watch(self) -> None:
        """While anyone waits: wake the waiters of the jobs now final. On Postgres it listens
        for ``NOTIFY barge_job_final`` (``db.state``), and reads the statuses once at the start,
        when a waiter arrives and every ``CHECK_SECONDS_LISTENING`` (a notification missed
        while a waiter was arriving, or a job made final without one); elsewhere it reads them
        every ``check_seconds``. Ends when no one waits (listening, once no one has waited for
        ``LINGER_SECONDS``, so that waits one after another share its connection); the next
        waiter starts it again."""
        listener = _Listener.open(self.database_url)
        last_check, idle_since = 0.0, None
        try:
            while True:
                now = time.monotonic()
                with self._lock:
                    ids = list(self._waiting)
                    idle_since = None if ids else (idle_since or now)
                    if idle_since is not None and (
                        listener is None or now - idle_since >= LINGER_SECONDS
                    ):
                        self._thread = None
                        return
                    arrived, self._arrived = self._arrived, False
                if listener is None:
                    time.sleep(self.check_seconds)
                    self._wake_jobs(self._final_among(ids))
                    continue
                if ids and (arrived or now - last_check >= CHECK_SECONDS_LISTENING):
                    last_check = now
                    self._wake_jobs(self._final_among(ids))
                try:
                    self._wake_jobs(listener.next_ids(timeout=ARRIVAL_SECONDS))
                except Exception as exc:  # the connection lost: read the statuses instead
                    log.warning("stopped listening for final jobs (%s); checking instead", exc)
                    listener.close()
                    listener = None
        finally:
            if listener is not None:
                listener.close()

    def _final_among(self, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        try:
            with session_scope(self.database_url) as session:
                return jobs.final_among(session, ids)
        except Exception as exc:  # the database away a moment: the waiters time out at worst
            log.warning("could not read the awaited jobs' statuses (%s)", exc)
            return set()

    def _wake_jobs(self, done: set[uuid.UUID]) -> None:
        if not done:
            return
        with self._lock:
            woken = [e for job_id in done for e in self._waiting.get(job_id, [])]
        for loop, fut in woken:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody to wake
                loop.call_soon_threadsafe(_wake, fut)


class _Listener:
    """A connection of its own (not the pool's) that listens on ``JOB_FINAL_CHANNEL``."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    def open(cls, database_url: str) -> _Listener | None:
        """Listening, on Postgres; None on another database, or when it cannot connect (the
        statuses are read instead)."""
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            return None
        try:
            import psycopg

            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = psycopg.connect(conninfo, autocommit=True)
            conn.execute(f"LISTEN {JOB_FINAL_CHANNEL}")
        except Exception as exc:
            log.warning("cannot listen for final jobs (%s); checking instead", exc)
            return None
        return cls(conn)

    def next_ids(self, timeout: float) -> set[uuid.UUID]:
        """The job ids notified within ``timeout`` seconds (returns at the first)."""
        out = set()
        for note in self._conn.notifies(timeout=timeout, stop_after=1):
            with contextlib.suppress(ValueError):
                out.add(uuid.UUID(note.payload))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
