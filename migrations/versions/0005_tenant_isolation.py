"""tenant isolation: storage scopes, quotas, key roles and expiry, the audit log

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 20:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import db.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("read_scopes", JSON, nullable=True))
        batch.add_column(sa.Column("write_scopes", JSON, nullable=True))
        batch.add_column(sa.Column("quotas", JSON, server_default="{}", nullable=False))
        batch.add_column(sa.Column("updated_at", db.base.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("role", sa.String(length=16), server_default="member", nullable=False)
        )
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("expires_at", db.base.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("last_used_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("tenant_name", sa.String(length=200), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_log_tenant_id_tenants"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"], unique=False)
    op.create_index("ix_audit_log_tenant_id_at", "audit_log", ["tenant_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant_id_at", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
        batch.drop_column("name")
        batch.drop_column("role")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("quotas")
        batch.drop_column("write_scopes")
        batch.drop_column("read_scopes")
