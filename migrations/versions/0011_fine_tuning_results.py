"""openai fine-tuning results: the results file (CSV of the training and validation metrics by
step) a succeeded fine-tuning job of the OpenAI-compatible surface lists in result_files

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 04:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("openai_fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("result_file_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("openai_fine_tuning_jobs") as batch:
        batch.drop_column("result_file_id")
