"""Alembic migrations: the only way Barge's schema changes.

``env`` is Alembic's environment (the URL and the models' metadata); ``versions/`` holds one file
per revision, ``NNNN_name.py``, each ``down_revision`` the one before it.
"""
