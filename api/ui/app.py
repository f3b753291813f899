"""The console as an app of its own, mounted at ``/ui`` in the API's process: its pages, its
static assets (``/ui/static/``, vendored: nothing comes from a CDN), its error pages (HTML,
where the API answers JSON) and the headers every answer carries (a strict Content Security
Policy: scripts from this origin only; no framing; no caching of pages)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ui import auth, pages
from api.ui.render import STATIC
from barge.errors import BargeError

log = logging.getLogger(__name__)

MOUNT = "/ui"

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class _Headers:
    """Adds the console's headers to every answer; pages (not static assets) are not cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{MOUNT}/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = HEADERS if static else [*HEADERS, (b"cache-control", b"no-store")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_json(request: Request) -> bool:
    return request.url.path.endswith("/live")


async def _sign_in(request: Request, exc: auth.SignInRequired) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": "unauthorized", "message": exc.message}, status_code=401)
    return RedirectResponse(auth.login_url(request, exc.message), status_code=303)


async def _barge_error(request: Request, exc: BargeError) -> Response:
    if _wants_json(request):
        return JSONResponse(exc.to_body(), status_code=exc.status_code)
    return auth.error_page(request, exc.status_code, exc.message)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = "no such page" if exc.status_code == 404 else str(exc.detail)
    return auth.error_page(request, exc.status_code, message)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()
    )
    return auth.error_page(request, 422, problems[:500] or "invalid request")


async def _db_unavailable(request: Request, exc: OperationalError) -> Response:
    log.warning("database unavailable: %s", exc)
    return auth.error_page(request, 503, "the database is unavailable; retry shortly")


async def _off(request: Request, exc: auth.ConsoleOff) -> HTMLResponse:
    return auth.error_page(request, 503, exc.message)


def create_console_app(parent: FastAPI) -> FastAPI:
    """The console, sharing the API's settings, object store and Celery app."""
    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state.settings = parent.state.settings
    console.state.store = parent.state.store
    console.state.celery = parent.state.celery
    console.add_middleware(_Headers)
    console.add_exception_handler(auth.SignInRequired, _sign_in)  # type: ignore[arg-type]
    console.add_exception_handler(auth.ConsoleOff, _off)  # type: ignore[arg-type]
    console.add_exception_handler(BargeError, _barge_error)  # type: ignore[arg-type]
    console.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    console.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    console.add_exception_handler(OperationalError, _db_unavailable)  # type: ignore[arg-type]
    console.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    console.include_router(pages.router)
    return console


def install_console(app: FastAPI) -> None:
    """Mount the console at ``/ui`` (``/ui`` itself redirects to ``/ui/``)."""

    @app.get(MOUNT, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(f"{MOUNT}/", status_code=307)

    app.mount(MOUNT, create_console_app(app), name="console")
