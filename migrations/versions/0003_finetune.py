"""fine-tune progress and hand-offs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("steps_total", sa.BigInteger(), nullable=True))
    op.add_column("shards", sa.Column("handoffs", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "shards", sa.Column("steps_done", sa.BigInteger(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("shards", "steps_done")
    op.drop_column("shards", "handoffs")
    op.drop_column("jobs", "steps_total")
