"""The OpenAI-compatible surface, mounted at ``/openai/v1``: Files, Batches and fine-tuning jobs, same API keys
and tenant scoping as ``/v1``, errors in OpenAI's envelope. An app of its own (its schema at
``/openai/v1/openapi.json``) so its error handlers answer only here.

- ``files``: ``/files`` (upload, list, content, delete); ``upload``: reading a multipart upload
  to disk as it streams;
- ``batches``: ``/batches``;
- ``fine_tuning``: ``/fine_tuning/jobs``, their events and checkpoints;
- ``models``: ``/models``, the aliases and the tenant's registered models;
- ``errors``: OpenAI's error envelope for every answer of the surface.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.openapi import install_openapi
from api.routers.openai import batches, errors, files, fine_tuning, models
from barge.errors import BargeError
from services.openai_files import check_text

MOUNT = "/openai/v1"


def storable_query(request: Request) -> None:
    """Every query parameter of every route, name and value, checked once before the route
    runs: a NUL never reaches the database (a 400 naming the parameter)."""
    for name, value in request.query_params.multi_items():
        check_text(name, value)


def create_openai_app(parent: FastAPI) -> FastAPI:
    """The surface's app (files, batches, fine-tuning jobs and models; any other route is
    answered in OpenAI's envelope, naming it), sharing the parent's settings, store and Celery
    app."""
    app = FastAPI(
        title="Barge: OpenAI-compatible Files, Batches, Fine-tuning and Models",
        description="Point the official `openai` client's base_url here.",
        # Its schema is at /openai/v1/openapi.json (with a key); no docs pages of its own, whose
        # assets a browser could not fetch behind the key.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(storable_query)],
    )
    app.state.settings = parent.state.settings
    app.state.store = parent.state.store
    app.state.celery = parent.state.celery
    app.add_exception_handler(RequestValidationError, errors.validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(BargeError, errors.barge_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, errors.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, errors.db_unavailable)  # type: ignore[arg-type]
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(fine_tuning.router)
    app.include_router(models.router)
    install_openapi(app)
    return app
