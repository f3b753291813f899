"""Alembic migrations: the only way Barge's schema changes."""
