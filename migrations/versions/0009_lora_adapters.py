"""LoRA adapters: a registered version may be an adapter over a base model (the base's
resolved location), and an inference job naming one carries that base

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 00:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("adapter_base_uri", sa.Text(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("adapter_base_uri", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("adapter_base_uri")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("adapter_base_uri")
