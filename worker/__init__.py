"""The Celery worker: thin tasks over plain functions (planning, shard runs, finalizing)."""
