"""The shared vocabulary of job and shard statuses (the state machine itself is in db.state)."""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLING = "cancelling"
CANCELLED = "cancelled"

JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Shard statuses (moved by conditional UPDATEs in db.repositories.shards).
SHARD_PENDING = "pending"
SHARD_RUNNING = "running"
SHARD_SUCCEEDED = "succeeded"
SHARD_FAILED = "failed"
SHARD_CANCELLED = "cancelled"
SHARD_FINAL = frozenset({SHARD_SUCCEEDED, SHARD_FAILED, SHARD_CANCELLED})
