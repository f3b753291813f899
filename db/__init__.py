"""Persistence: SQLAlchemy models (``models``) on a declarative base with naming conventions and
tz-aware timestamps (``base``), engines and session scopes (``session``), all SQL
(``repositories``, one module per aggregate), the job state machine (``state``), the webhook outbox a final
status writes to (``outbox``) and running the migrations (``migrate``).

Imports ``barge`` only. Repositories flush; the boundary that opened the session commits.
"""
