"""scale: the indexes the control plane needs with large tables, and the retention mark

- ``jobs.events_pruned_at``: when retention deleted a finished job's events (each job is
  pruned once; the retention pass finds the next ones by ``ix_jobs_events_to_prune``);
- ``ix_jobs_events_to_prune``: finished jobs not pruned yet, by when they finished;
- ``ix_jobs_unfinalized``: jobs without a manifest, by status (the reconciler's finalize pass
  no longer walks every failed job ever);
- ``ix_shards_pending_dispatched``: pending shards by when they were last sent (the
  reconciler's re-send of lost messages, over a backlog of pending shards).

Revision ID: 0017_scale
Revises: 0015_retry_estimate
Create Date: 2026-12-06 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "0017_scale"
down_revision: str | None = "0015_retry_estimate"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("events_pruned_at", UTC, nullable=True))
    op.create_index(
        "ix_jobs_events_to_prune",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL AND events_pruned_at IS NULL"),
        sqlite_where=sa.text("finished_at IS NOT NULL AND events_pruned_at IS NULL"),
    )
    op.create_index(
        "ix_jobs_unfinalized",
        "jobs",
        ["status"],
        postgresql_where=sa.text("manifest IS NULL"),
        sqlite_where=sa.text("manifest IS NULL"),
    )
    # SQLite (the embedded stack) has no NULLS FIRST in an index, and puts NULLs first anyway.
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_index(
        "ix_shards_pending_dispatched",
        "shards",
        [sa.text("dispatched_at NULLS FIRST") if postgres else sa.text("dispatched_at")],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_shards_pending_dispatched", table_name="shards")
    op.drop_index("ix_jobs_unfinalized", table_name="jobs")
    op.drop_index("ix_jobs_events_to_prune", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("events_pruned_at")
