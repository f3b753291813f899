"""pack: many small input objects in one shard

- ``shards.pack_objects``, ``shards.pack_first``, ``shards.pack_last``: what a packed shard
  (``input_format`` ``pack``, a byte range of its job's pack listing) reads, for views: how
  many objects, the first and the last. NULL for a shard of one object.

Revision ID: 0018_pack
Revises: 0017_scale
Create Date: 2026-12-06 11:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_pack"
down_revision: str | None = "0017_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("pack_objects", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pack_first", sa.Text(), nullable=True))
        batch.add_column(sa.Column("pack_last", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("pack_last")
        batch.drop_column("pack_first")
        batch.drop_column("pack_objects")
