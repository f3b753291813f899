"""Each worker process says it is alive: its host and pid, the queues it consumes, its device
and the models it keeps warm, every ``BARGE_WORKER_PRESENCE_SECONDS`` from a thread of its own
(started in ``worker_process_init``), and at once when a unit changed the models it keeps warm
(``note_if_models_changed``, called as the unit's run step returns, before it settles), and
goes when it stops cleanly. The console's workers page reads these rows; a dry run's estimate
reads which workers hold its model warm; the reconciler forgets a worker not seen for a day.

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
# What ``start`` was given (queues, computes), and the warm models last written.
_started: tuple[list[str], bool] | None = None
_noted: list[dict[str, str]] | None = None


def note(ctx: WorkerContext, queues: list[str], computes: bool) -> None:
    """Write this process's row now (``computes``: it runs models, so it has a device)."""
    global _noted
    devices = usage.process_devices(ctx.settings)[0] if computes else []
    models = held_by(ctx)
    _noted = models
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
            models=models,
        )


def note_if_models_changed(ctx: WorkerContext) -> None:
    """Write this process's row now if the models it keeps warm changed since it was last
    written (a unit loaded or evicted one): a dry run asking whether a worker holds a model
    warm need not wait for the next ``BARGE_WORKER_PRESENCE_SECONDS``. A failure is logged."""
    if _started is None or _noted == held_by(ctx):
        return
    try:
        note(ctx, *_started)
    except Exception as exc:
        log.warning("worker presence not noted: %s", exc)


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
    global _started
    _started = (queues, computes)
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
