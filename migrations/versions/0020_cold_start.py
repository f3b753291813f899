"""cold start: a shard's model load apart from its processing

- ``shard_attempts.load_seconds``: of an attempt's wall seconds, those of its cold start (a
  worker process's first import of the kind's run step, fetching and loading the model). NULL
  for attempts ended before this revision.
- ``throughput.loads``, ``throughput.load_seconds``: the succeeded shards that paid a cold
  start and its seconds, summed apart; ``throughput.seconds`` is processing only from now on
  (rows summed before hold cold starts in it).

Revision ID: 0020_cold_start
Revises: 0019_source_size
Create Date: 2026-12-06 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_cold_start"
down_revision: str | None = "0019_source_size"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shard_attempts") as batch:
        batch.add_column(sa.Column("load_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("throughput") as batch:
        batch.add_column(sa.Column("loads", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("load_seconds", sa.Float(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("throughput") as batch:
        batch.drop_column("load_seconds")
        batch.drop_column("loads")
    with op.batch_alter_table("shard_attempts") as batch:
        batch.drop_column("load_seconds")
