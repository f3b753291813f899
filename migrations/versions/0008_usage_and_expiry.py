"""token usage per shard (prompt, completion and total tokens of its records), summed per job at
finalize; an OpenAI batch's expiry (when its completion window ended, and how many of its
requests it left unrun)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import db.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("usage", JSON, nullable=True))
    with op.batch_alter_table("openai_batches") as batch:
        batch.add_column(sa.Column("expired_at", db.base.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expired_requests", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("openai_batches") as batch:
        batch.drop_column("expired_requests")
        batch.drop_column("expired_at")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("usage")
