"""The worker's Celery app. Run: ``barge worker`` (or ``celery -A worker.celery_app worker``).

One worker process per GPU (``barge worker --gpu N`` sets ``CUDA_VISIBLE_DEVICES=N`` before this
module is imported; each is named ``gpu-N@host``, unique on its host), prefork with one child,
consuming the ``gpu`` queue: CUDA, the database engine and the model cache are created in the
child (``worker_process_init``). Control work (``control`` queue: planning, finalizing, reconciling,
drop scans) runs in a worker of its own that never loads a model (``barge worker`` runs both).
The tasks are imported through ``include`` (``worker.tasks``).

Imports: ``barge``, ``db``, ``worker``; never ``api`` or ``cli``.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_process_shutdown,
)

from barge import logs
from barge.queue import CONTROL_QUEUE, GPU_QUEUE, make_celery
from barge.settings import get_settings

app = make_celery(get_settings(), name="barge-worker")
app.conf.include = ["worker.tasks"]


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """BARGE_LOG_FORMAT on Celery's handlers; Celery's per-task INFO lines kept out (Barge logs
    one line per unit of work, naming its job and shard)."""
    logs.apply(logger, get_settings().log_format)


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    from billiard.process import current_process

    from worker import metrics, presence
    from worker.context import init_context

    logging.getLogger("barge").setLevel(logging.INFO)
    ctx = init_context(app)
    presence.start(ctx, consumed_queues(), runs_gpu_work())
    if runs_gpu_work():  # a control worker runs no model: nothing to measure, no port to take
        metrics.serve(
            ctx.settings.worker_metrics_port,
            getattr(current_process(), "index", 0),
            ctx.settings.worker_metrics_host,
        )
    # What the process holds from its start (modules, the app, the engine) lives as long as
    # it does: out of the collector's reach, a full collection (every few jobs) scans only
    # what came since, not the ~100k objects of the imports (~0.1 to 0.2 s a pass on 2 cores).
    gc.collect()
    gc.freeze()


def consumed_queues() -> list[str]:
    """The queues this worker consumes (``-Q``; every queue when none was named)."""
    return sorted(app.amqp.queues.consume_from or ()) or [GPU_QUEUE, CONTROL_QUEUE]


def runs_gpu_work() -> bool:
    """Whether this worker consumes the GPU queue (``-Q``, inherited from the pool's parent)."""
    consumed = app.amqp.queues.consume_from
    return not consumed or GPU_QUEUE in consumed


@worker_process_shutdown.connect
def _shutdown_child(**_: Any) -> None:
    from db.session import dispose_engines
    from worker import presence
    from worker.context import get_context

    presence.stop(get_context())

    dispose_engines()
