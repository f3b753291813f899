"""Each worker process says it is alive: its host and pid, the queues it consumes, its device
and the models it keeps warm, every ``BARGE_WORKER_PRESENCE_SECONDS`` from a thread of its own
(started in ``worker_process_init``), and goes when it stops cleanly. The console's workers
page reads these rows; the reconciler forgets a worker not seen for a day.

Imports: ``db``, ``worker.context``, ``worker.usage``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from db import repositories as repo
from db.base import utcnow
from worker import usage
from worker.context import WorkerContext
from worker.models.cache import held_by

log = logging.getLogger(__name__)

_stop = threading.Event()


def note(ctx: WorkerContext, queues: list[str], computes: bool) -> None:
    """Write this process's row now (``computes``: it runs models, so it has a device)."""
    devices = usage.process_devices(ctx.settings)[0] if computes else []
    with ctx.session() as session:
        repo.note_worker(
            session,
            ctx.name,
            utcnow(),
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=queues,
            device=",".join(d.id for d in devices) or None,
            device_name=", ".join(dict.fromkeys(d.name for d in devices)) or None,
            models=held_by(ctx),
        )


def _loop(ctx: WorkerContext, queues: list[str], computes: bool) -> None:
    while True:
        try:
            note(ctx, queues, computes)
        except Exception as exc:  # the database away for a moment: next time
            log.warning("worker presence not noted: %s", exc)
        if _stop.wait(ctx.settings.worker_presence_seconds):
            return


def start(ctx: WorkerContext, queues: list[str], computes: bool) -> None:
    """Note this process alive now and from then on, on a daemon thread."""
    _stop.clear()
    threading.Thread(
        target=_loop, args=(ctx, queues, computes), daemon=True, name="barge-presence"
    ).start()


def stop(ctx: WorkerContext) -> None:
    """This process stops: its row goes."""
    _stop.set()
    try:
        with ctx.session() as session:
            repo.remove_worker(session, ctx.name)
    except Exception as exc:
        log.warning("worker presence not removed: %s", exc)
