"""The API app factory: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.docs import install_docs
from api.errors import barge_error, db_unavailable, http_error, validation_error
from api.guard import RequestGuard
from api.openapi import install_openapi
from api.routers import admin, drops, health, jobs, metrics, models, webhooks
from api.routers.openai import MOUNT, create_openai_app
from api.ui.app import install_console
from api.waits import JobWaits
from barge import __version__
from barge.errors import BargeError
from barge.queue import make_celery
from barge.settings import Settings, get_settings
from barge.storage import make_store

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Barge",
        version=__version__,
        description="Bulk inference and fine-tune jobs on your own GPUs. Every /v1 call needs "
        "`Authorization: Bearer <key>` (the Authorize button); every error is "
        '`{"error", "message", "field", "detail"}`.',
        docs_url=None,  # served by api.docs from local assets, never a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = make_store(settings)
    app.state.celery = make_celery(settings, name="barge-api")
    app.state.job_waits = JobWaits(settings.resolved_database_url)
    app.add_middleware(RequestGuard, settings=settings)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(BargeError, barge_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, db_unavailable)  # type: ignore[arg-type]
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router)
    app.include_router(drops.router)
    app.include_router(webhooks.router)
    app.include_router(models.router)
    app.include_router(admin.router)
    app.include_router(admin.audit_router)
    app.mount(MOUNT, create_openai_app(app))
    install_console(app)
    install_docs(app)
    install_openapi(app)
    return app
