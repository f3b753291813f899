"""``barge flower``'s process: Celery's own ``celery flower`` command, with Flower's ``/metrics``
and ``/healthcheck`` behind the same basic auth as every other page.

Flower 2 serves those two to anyone, whatever ``--basic-auth`` says; ``/metrics`` names every
worker host and task type. ``cli.processes.flower_argv`` runs this module
(``python -m worker.flower -A worker.celery_app flower ...``) instead of ``python -m celery``.

Imports: nothing of ours (Celery and Flower only).
"""

from __future__ import annotations

import sys

from celery.bin.celery import main
from flower.views import monitor
from tornado import web

# Flower's handlers that do not ask for credentials; every other one is @web.authenticated.
OPEN_HANDLERS = (monitor.Metrics, monitor.Healthcheck)


def require_auth() -> None:
    """Put Flower's open handlers behind its authentication (idempotent). With basic auth a
    request without the right credentials is a 401, as on every other page."""
    for handler in OPEN_HANDLERS:
        if not getattr(handler.get, "barge_authenticated", False):
            guarded = web.authenticated(handler.get)
            guarded.barge_authenticated = True  # type: ignore[attr-defined]
            handler.get = guarded  # type: ignore[method-assign]


if __name__ == "__main__":
    require_auth()
    sys.exit(main())
