"""The shared vocabulary of job and shard statuses (the state machine itself is in db.state)."""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
# Pause: ``pausing`` while the shards running at the pause finish (a fine-tune checkpoints and
# gives its worker back), ``paused`` once none runs; ``resume`` moves either back to running.
PAUSING = "pausing"
PAUSED = "paused"

JOB_STATUSES = (QUEUED, RUNNING, PAUSING, PAUSED, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Planned and not stopping: its running shards go on and it counts as active (quotas).
PAUSE_STATES = frozenset({PAUSING, PAUSED})
IN_PROGRESS = frozenset({RUNNING, PAUSING, PAUSED})
# Shard statuses (moved by conditional UPDATEs in db.repositories.shards).
SHARD_PENDING = "pending"
SHARD_RUNNING = "running"
SHARD_SUCCEEDED = "succeeded"
SHARD_FAILED = "failed"
SHARD_CANCELLED = "cancelled"
SHARD_FINAL = frozenset({SHARD_SUCCEEDED, SHARD_FAILED, SHARD_CANCELLED})
