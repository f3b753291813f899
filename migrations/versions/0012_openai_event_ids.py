"""openai fine-tuning event ids: each fine-tuning job's own secret key, with which the ids of its
events and checkpoints are sealed (opaque ids, no hint of the global event sequence)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 10:00:00.000000
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("openai_fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("id_key", sa.String(length=64), nullable=True))
    jobs = sa.table(
        "openai_fine_tuning_jobs", sa.column("id", sa.String), sa.column("id_key", sa.String)
    )
    conn = op.get_bind()
    for (job_id,) in conn.execute(sa.select(jobs.c.id)).all():
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(id_key=secrets.token_hex(16)))
    with op.batch_alter_table("openai_fine_tuning_jobs") as batch:
        batch.alter_column("id_key", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("openai_fine_tuning_jobs") as batch:
        batch.drop_column("id_key")
