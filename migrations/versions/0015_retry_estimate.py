"""retry and estimate: a retry's parent job and number, how many requests a cancelled OpenAI
batch left unrun and the batch a batch retries, and the throughput each model reached per task
and device

Revision ID: 0015_retry_estimate
Revises: 0014_webhooks
Create Date: 2026-12-06 07:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "0015_retry_estimate"
down_revision: str | None = "0014_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("openai_batches") as batch:
        batch.add_column(sa.Column("cancelled_requests", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("retry_of", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_openai_batches_retry_of"), ["retry_of"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("retry_index", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_jobs_parent_id_jobs"), "jobs", ["parent_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index(batch.f("ix_jobs_parent_id"), ["parent_id"])
    op.create_table(
        "throughput",
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("shards", sa.BigInteger(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("model", "task", "device", name=op.f("pk_throughput")),
    )


def downgrade() -> None:
    op.drop_table("throughput")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_parent_id"))
        batch.drop_constraint(batch.f("fk_jobs_parent_id_jobs"), type_="foreignkey")
        batch.drop_column("retry_index")
        batch.drop_column("parent_id")
    with op.batch_alter_table("openai_batches") as batch:
        batch.drop_index(batch.f("ix_openai_batches_retry_of"))
        batch.drop_column("retry_of")
        batch.drop_column("cancelled_requests")
