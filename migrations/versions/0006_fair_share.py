"""fair share and quotas: shard back-off (not_before), the indexes of the fair claim and of the
active-jobs quota

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSETTLED = sa.text("status IN ('pending', 'running')")


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("not_before", db.base.UTCDateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_shards_unsettled",
        "shards",
        ["job_id", "index"],
        postgresql_where=UNSETTLED,
        sqlite_where=UNSETTLED,
    )
    op.create_index("ix_shards_job_started", "shards", ["job_id", "started_at"])
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_status", table_name="jobs")
    op.drop_index("ix_shards_job_started", table_name="shards")
    op.drop_index("ix_shards_unsettled", table_name="shards")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("not_before")
