"""console: progress samples per job (throttled, from heartbeats), one row per shard attempt
(worker, start, end, outcome and usage: seconds, tokens, energy), live workers, and the tokens
a running attempt generated so far

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import db.base

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(
            sa.Column("tokens_out", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_table(
        "shard_attempts",
        sa.Column("shard_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("seen_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("records_succeeded", sa.BigInteger(), nullable=False),
        sa.Column("records_failed", sa.BigInteger(), nullable=False),
        sa.Column("steps_done", sa.BigInteger(), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("device_name", sa.String(length=200), nullable=True),
        sa.Column("gpus", sa.Integer(), server_default="0", nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=True),
        sa.Column("busy_seconds", sa.Float(), nullable=True),
        sa.Column("cpu_seconds", sa.Float(), nullable=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("energy_joules", sa.Float(), nullable=True),
        sa.Column("devices", JSON, nullable=True),
        sa.Column("tokens_in", sa.BigInteger(), nullable=True),
        sa.Column("tokens_out", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_shard_attempts_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["shard_id"],
            ["shards.id"],
            name=op.f("fk_shard_attempts_shard_id_shards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("shard_id", "attempt", name=op.f("pk_shard_attempts")),
    )
    op.create_index(
        "ix_shard_attempts_job_id_started_at", "shard_attempts", ["job_id", "started_at"]
    )
    op.create_index(
        "ix_shard_attempts_worker_started_at", "shard_attempts", ["worker", "started_at"]
    )
    op.create_table(
        "job_samples",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("records_succeeded", sa.BigInteger(), nullable=False),
        sa.Column("records_failed", sa.BigInteger(), nullable=False),
        sa.Column("steps_done", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("shards_running", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_samples_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "slot", name=op.f("pk_job_samples")),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("device_name", sa.String(length=200), nullable=True),
        sa.Column("models", JSON, nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("seen_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("job_samples")
    op.drop_index("ix_shard_attempts_worker_started_at", table_name="shard_attempts")
    op.drop_index("ix_shard_attempts_job_id_started_at", table_name="shard_attempts")
    op.drop_table("shard_attempts")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("tokens_out")
