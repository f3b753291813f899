"""Waiting for jobs to end without polling them: ``GET /v1/jobs/{id}?wait=S`` holds its answer
until the job is final or ``S`` seconds have passed.

One ``JobWaits`` per API process. A request that waits parks an ``asyncio`` future here (no
thread, no database connection held while it waits); one daemon thread, running only while
someone waits, asks the database every ``CHECK_SECONDS`` which of the awaited jobs are final,
in one query on the primary key for all of them, and wakes their waiters. A client that polls
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

from db.session import session_scope
from services import jobs

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.025  # how often the awaited jobs' statuses are read while someone waits
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

    async def until_final(self, job_id: uuid.UUID, timeout: float) -> bool:
        """Wait until the job is final (True) or ``timeout`` seconds have passed (False)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            self._waiting.setdefault(job_id, []).append(entry)
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
        """Every ``check_seconds`` while anyone waits: wake the waiters of the jobs now final.
        Ends when no one waits (the next waiter starts it again)."""
        while True:
            time.sleep(self.check_seconds)
            with self._lock:
                ids = list(self._waiting)
                if not ids:
                    self._thread = None
                    return
            try:
                with session_scope(self.database_url) as session:
                    done = jobs.final_among(session, ids)
            except Exception as exc:  # the database away a moment: the waiters time out at worst
                log.warning("could not read the awaited jobs' statuses (%s)", exc)
                continue
            with self._lock:
                woken = [e for job_id in done for e in self._waiting.get(job_id, [])]
            for loop, fut in woken:
                with contextlib.suppress(RuntimeError):  # its loop closed: nobody to wake
                    loop.call_soon_threadsafe(_wake, fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
