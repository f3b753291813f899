"""Celery configuration and task names, shared by the API (which sends by name) and the worker.

Task arguments are ids only. Shard work goes to the ``gpu`` queue; planning, finalizing and
reconciling go to ``control``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from barge.settings import Settings

GPU_QUEUE = "gpu"
CONTROL_QUEUE = "control"

PLAN_JOB = "barge.plan_job"
RUN_SHARD = "barge.run_shard"
FINALIZE_JOB = "barge.finalize_job"
RECONCILE = "barge.reconcile"
SCAN_DROPS = "barge.scan_drops"
SEND_WEBHOOKS = "barge.send_webhooks"
RETENTION = "barge.retention"

ROUTES = {
    PLAN_JOB: CONTROL_QUEUE,
    RUN_SHARD: GPU_QUEUE,
    FINALIZE_JOB: CONTROL_QUEUE,
    RECONCILE: CONTROL_QUEUE,
    SCAN_DROPS: CONTROL_QUEUE,
    SEND_WEBHOOKS: CONTROL_QUEUE,
    RETENTION: CONTROL_QUEUE,
}


def task_queues(settings: Settings) -> list[Queue]:
    """The ``gpu`` and ``control`` queues; quorum queues with ``BARGE_BROKER_QUORUM_QUEUES``
    (every process that declares them, API included, must agree: RabbitMQ refuses a declare
    whose type differs from the queue's)."""
    arguments = {"x-queue-type": "quorum"} if settings.broker_quorum_queues else None
    return [
        Queue(GPU_QUEUE, queue_arguments=arguments),
        Queue(CONTROL_QUEUE, queue_arguments=arguments),
    ]


# The longest a periodic message waits for a control worker. RabbitMQ drops an expired
# message only when it reaches the head of its queue, so one long-lived message (retention's,
# hourly) at the head would hold every shorter-lived one behind it while no control worker
# consumes: capped, at most a minute's messages wait behind it.
PERIODIC_EXPIRY_CAP_SECONDS = 60.0


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The periodic messages. One not consumed before the next is due, or within
    ``PERIODIC_EXPIRY_CAP_SECONDS``, expires (RabbitMQ drops it; a worker that gets it late
    discards it): they never pile up behind busy or absent workers."""
    every = {
        "reconcile": (RECONCILE, settings.reconcile_seconds),
        "scan-drops": (SCAN_DROPS, settings.drop_scan_seconds),
        "send-webhooks": (SEND_WEBHOOKS, settings.webhook_send_seconds),
        "retention": (RETENTION, settings.retention_seconds),
    }
    return {
        name: {
            "task": task,
            "schedule": seconds,
            "options": {"expires": min(seconds, PERIODIC_EXPIRY_CAP_SECONDS)},
        }
        for name, (task, seconds) in every.items()
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    transport_options: dict[str, Any] = {}
    if settings.is_filesystem_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        transport_options = {"confirm_publish": True}
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_timeout_seconds,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": task_queues(settings),
        "task_default_queue": CONTROL_QUEUE,
        "task_routes": {name: {"queue": q} for name, q in ROUTES.items()},
        "worker_hijack_root_logger": False,
        # Task events (Flower's view): four or five broker messages per task besides the task.
        "worker_send_task_events": settings.broker_task_events,
        "task_send_sent_event": settings.broker_task_events,
        # The filesystem transport has no fanout exchange for remote control.
        "worker_enable_remote_control": not settings.is_filesystem_broker,
        "beat_schedule": beat_schedule(settings),
    }


def make_celery(settings: Settings, name: str = "barge") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def send(
    app: Celery,
    task_name: str,
    *args: Any,
    countdown: float | None = None,
    expires: float | None = None,
) -> None:
    """Publish a task by name with a bounded retry, so a down broker fails fast, never hangs.
    ``expires``: seconds after which the message is dropped unrun (a re-send that a later one
    replaces)."""
    app.send_task(
        task_name,
        args=list(args),
        queue=ROUTES[task_name],
        countdown=countdown,
        expires=expires,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )


def ready_messages(app: Celery, queues: tuple[str, ...], timeout: float) -> dict[str, int] | None:
    """Messages waiting (ready, not yet delivered) in each queue; a queue not declared yet holds
    none. None when the broker does not answer."""
    from contextlib import suppress

    counts: dict[str, int] = {}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            for name in queues:
                channel = conn.channel()
                try:
                    _, ready, _ = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:
                    ready = 0  # not declared yet: no worker started, nothing waiting
                finally:
                    with suppress(Exception):  # the broker closed it after NOT_FOUND
                        channel.close()
                counts[name] = int(ready)
    except Exception:
        return None
    return counts
