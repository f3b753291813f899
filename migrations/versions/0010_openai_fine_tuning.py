"""openai fine-tuning jobs: a fine-tuning job of the OpenAI-compatible surface and the Barge
fine-tune job that runs it

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 03:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import db.base

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "openai_fine_tuning_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("training_file_id", sa.String(length=64), nullable=False),
        sa.Column("validation_file_id", sa.String(length=64), nullable=True),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("hyperparameters", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_openai_fine_tuning_jobs_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_openai_fine_tuning_jobs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_fine_tuning_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_openai_fine_tuning_jobs_job_id")),
    )
    op.create_index(
        "ix_openai_fine_tuning_jobs_tenant_created",
        "openai_fine_tuning_jobs",
        ["tenant_id", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_openai_fine_tuning_jobs_tenant_created", table_name="openai_fine_tuning_jobs")
    op.drop_table("openai_fine_tuning_jobs")
