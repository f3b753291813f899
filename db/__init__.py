"""Persistence: SQLAlchemy models (``models``), engines and session scopes (``session``), all SQL
(``repositories``, one module per aggregate), the job state machine (``state``) and migrations
(``migrate``).

Imports ``barge`` only. Repositories flush; the boundary that opened the session commits.
"""
