"""A backlog that is merely not reached yet is not re-sent: the reconciler re-sends a pending
shard only when the GPU queue cannot be holding its message, so the queue never fills with
duplicates (it once held 1,683 of them after a 2,000-shard job)."""

from __future__ import annotations

import time
from typing import Any

from kombu import Connection

from barge.queue import GPU_QUEUE
from tests.faults.conftest import World, dataset


def _ready(broker_url: str) -> int:
    with Connection(broker_url) as conn:
        _, ready, _ = conn.channel().queue_declare(queue=GPU_QUEUE, passive=True)
        return int(ready)


def test_a_backlog_is_not_re_sent_while_its_messages_wait_in_the_queue(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    # 120 shards behind one worker take many dispatch grace periods (2 s) and reconciler runs
    # (every 1 s): before, each pending shard was re-sent every grace period.
    data, rows = dataset(s3, bucket, 600)
    world.worker()
    world.start_scheduler()
    job_id = world.submit(
        {
            "model": minilm_uri,
            "task": "embed",
            "input": data,
            "output": f"s3://{bucket}/backlog/",
            "shard_size": 5,
        }
    )
    samples: list[tuple[int, int]] = []
    deadline = time.monotonic() + 300
    while world.job(job_id)["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish"
        pending = sum(s.status == "pending" for s in world.shards(job_id))
        samples.append((pending, _ready(world.env["BARGE_BROKER_URL"])))
        time.sleep(0.5)
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"]["records_succeeded"] == len(rows)
    assert len(samples) > 8, "the job finished too fast to show a backlog"
    assert max(p for p, _ in samples) > 50, samples  # there was a real backlog
    # Each pending shard has at most one message waiting (a message delivered but not yet
    # claimed may be re-sent once: a little slack).
    excess = max(ready - pending for pending, ready in samples)
    assert excess <= 3, samples
    time.sleep(3)  # a few more reconciler runs after the job ended
    assert _ready(world.env["BARGE_BROKER_URL"]) == 0
