"""Simulated GPU workers for ``bench/scale.py``: a Celery worker on the ``gpu`` queue whose
``barge.run_shard`` runs Barge's own lifecycle (``worker.lifecycle.claim``, ``run_claimed``:
the lease and its keeper's heartbeats with progress, the status checks between batches, the
fenced part upload to S3 and the fenced settle, finalize when last) with the model step
replaced by a sleep. Run with the threads pool, one thread per simulated GPU worker:

    BENCH_SHARD_SECONDS=1 BENCH_TIMINGS=/tmp/t.log \\
        celery -A bench.scale_worker worker -Q gpu -P threads -c 300

Each claim and settle writes a line to ``BENCH_TIMINGS``: ``claim <ms> <claimed 0|1>`` and
``run <outcome> <ms>``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from celery import Task

from barge.queue import RUN_SHARD, make_celery
from barge.settings import get_settings
from worker import lifecycle, usage
from worker.context import WorkerContext, get_context
from worker.kinds import JobKind
from worker.lease import Lease, Result, ShardWork
from worker.shard import ShardRun

SHARD_SECONDS = float(os.environ.get("BENCH_SHARD_SECONDS", "1"))
BATCH_SECONDS = 0.5  # a simulated batch: the lease's checks run between two
_timings_lock = threading.Lock()
_timings = open(os.environ.get("BENCH_TIMINGS", os.devnull), "a", buffering=1)  # noqa: SIM115

app = make_celery(get_settings(), name="barge-bench-gpu")
# What a GPU worker finds once at its start (its devices: torch is imported), found here before
# the first claim rather than inside it.
usage.process_devices(get_settings())


def note(line: str) -> None:
    with _timings_lock:
        _timings.write(line + "\n")


def sleep_run(ctx: WorkerContext, work: ShardWork, lease: Lease) -> Result:
    """A shard's run step with the model replaced by sleeps: batches of ``BATCH_SECONDS``
    (the lease checks the job's status between them), one tiny row per record, then the
    fenced PUT of the part."""
    batches = max(1, round(SHARD_SECONDS / BATCH_SECONDS))
    with ctx.scratch() as tmp:
        run: ShardRun[None] = ShardRun(ctx, work, lease, None, tmp)

        def step(i: int) -> None:
            run.next_batch()
            time.sleep(SHARD_SECONDS / batches)
            if i == batches - 1:
                rows = [
                    {"id": work.record_offset + n, "embedding": [0.0]}
                    for n in range(work.rng.record_count)
                ]
                run.part.write_rows(rows)
                lease.succeeded = len(rows)

        stopped = run.walk(range(batches), step)
        return run.upload(stopped)


SLEEP = JobKind("sleep", lambda _spec: True, sleep_run)


@app.task(name=RUN_SHARD, bind=True)
def run_shard(self: Task, shard_id: str, job_id: str = "", index: int = -1) -> None:
    ctx = get_context()
    started = time.monotonic()
    work = lifecycle.claim(ctx, uuid.UUID(shard_id))
    note(f"claim {(time.monotonic() - started) * 1000:.2f} {int(work is not None)}")
    if work is None:
        return
    started = time.monotonic()
    outcome = lifecycle.run_claimed(ctx, work, SLEEP)
    note(f"run {outcome.value} {(time.monotonic() - started) * 1000:.2f}")
