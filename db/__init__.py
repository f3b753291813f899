"""Persistence: SQLAlchemy models, session scopes, repositories and the job state machine."""
