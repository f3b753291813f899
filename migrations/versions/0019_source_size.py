"""source size: the size of a shard's object as planning found it

- ``shards.source_size``: the size in bytes of the object a shard reads, beside its
  ``source_etag``, as planning found them. A shard whose reads are conditional on that ETag
  knows the object's size without a HEAD (a Parquet footer's offset, a CSV object's size
  check). NULL for a packed shard (its listing has each object's size) and for shards
  planned before it (they HEAD their object, as before).

Revision ID: 0019_source_size
Revises: 0018_pack
Create Date: 2026-12-06 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_source_size"
down_revision: str | None = "0018_pack"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("source_size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("source_size")
