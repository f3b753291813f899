"""Per-process worker resources, created in the pool child (``worker_process_init``), never at
import and never in a prefork parent; and the task scopes that commit.

A task opens ``ctx.unit_of_work()`` when it sends messages (they go after the commit, never
before: the outbox) and ``ctx.session()`` when it sends none. The models a GPU worker keeps warm
are the models room's (``worker.models.cache.cache_for``): the control worker, which shares this
context, never imports model code.

Imports: ``barge``, ``db``, ``services``; never ``api``, ``cli`` or the rest of ``worker``.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session

from barge.queue import make_celery, send
from barge.settings import Settings, get_settings
from barge.storage import ObjectStore, make_store
from db.session import dispose_engines, session_scope
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    store: ObjectStore
    celery: Celery
    name: str

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The task boundary: commit on success, roll back on error."""
        with session_scope(self.settings.resolved_database_url) as session:
            yield session

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        """The task boundary with an outbox: commit, then send the messages queued with
        ``uow.send_after_commit``; a rollback drops them. A send that fails is logged, not
        raised: the transaction is committed already, and the reconciler re-sends lost work."""
        with self.session() as session:
            uow = UnitOfWork(session)
            yield uow
        for task_name, args, options in uow.outbox:
            try:
                self.send(task_name, *args, **options)
            except Exception as exc:
                log.warning(
                    "could not publish %s%s now (%s); the reconciler will", task_name, args, exc
                )

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private directory under ``<BARGE_CACHE_DIR>/tmp`` for a unit's spooled files,
        removed when the unit ends."""
        root = self.settings.resolved_cache_dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            yield Path(tmp)

    def send(
        self,
        task_name: str,
        *args: object,
        countdown: float | None = None,
        expires: float | None = None,
    ) -> None:
        send(self.celery, task_name, *args, countdown=countdown, expires=expires)


_context: WorkerContext | None = None


def init_context(celery: Celery | None = None) -> WorkerContext:
    global _context
    dispose_engines()  # never reuse connections inherited from a parent process
    settings = get_settings()
    store = make_store(settings)
    _context = WorkerContext(
        settings=settings,
        store=store,
        celery=celery or make_celery(settings),
        name=f"{socket.gethostname()}:{os.getpid()}",
    )
    return _context


def get_context() -> WorkerContext:
    return _context or init_context()
