"""The API app factory: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from api.routers import drops, health, jobs, metrics, models
from barge import __version__
from barge.errors import BargeError
from barge.queue import make_celery
from barge.settings import Settings, get_settings
from barge.storage import make_store

log = logging.getLogger(__name__)


JOB_TYPE_TAGS = ("inference", "finetune")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
        if loc[0] == "body" and parts and parts[0] in JOB_TYPE_TAGS:
            parts = parts[1:]  # the job type the body was validated as
    return ".".join(parts) or "body"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        field = _field(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "union_tag_invalid":
            field, msg = "type", f"type must be one of {', '.join(JOB_TYPE_TAGS)}"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        problems.append({"field": field, "message": msg})
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse(
        status_code=422,
        content={
            "error": "invalid_request",
            "message": message,
            "field": problems[0]["field"] if problems else None,
            "detail": problems,
        },
    )


async def _barge_error(_: Request, exc: BargeError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=exc.to_body())


async def _db_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse(
        status_code=503,
        content={
            "error": "database_unavailable",
            "message": "the database is unavailable; retry shortly",
        },
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return JSONResponse(
        status_code=500,
        content={
            "error": "internal_error",
            "message": f"unexpected {type(exc).__name__}; see the API logs",
        },
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Barge",
        version=__version__,
        description="Bulk inference and fine-tune jobs on your own GPUs.",
    )
    app.state.settings = settings
    app.state.store = make_store(settings)
    app.state.celery = make_celery(settings, name="barge-api")
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(BargeError, _barge_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _db_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router)
    app.include_router(drops.router)
    app.include_router(models.router)
    return app
