"""OpenAI's error envelope, ``{"error": {"message", "type", "param", "code"}}``, for every
answer of the ``/openai/v1`` surface (the request guard's refusals included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import DB_UNAVAILABLE, PROBLEM_CHARS, allowed_methods, clip, error_body
from barge.errors import BargeError
from barge.jsonvalues import field_name

PREFIX = "/openai/"
SERVED = "files, batches, fine_tuning/jobs and models"

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def status_of(status: int) -> int:
    """The status this surface answers for Barge's ``status``: OpenAI has no 422 (a request
    it cannot use, a body that is no JSON included, is a 400)."""
    return 400 if status == 422 else status


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def envelope(status: int, body: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """Barge's error body (``{"error", "message", "field"?, "detail"?}``) in OpenAI's shape;
    ``kind`` is its ``type`` when the status alone does not say it."""
    body = error_body(body)
    detail = body.get("detail")
    code = detail.get("code") if isinstance(detail, dict) else None
    if kind is None:
        kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": body.get("message", ""),
            "type": kind,
            "param": body.get("field"),
            "code": code or body.get("error"),
        }
    }


def _respond(
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    kind: str | None = None,
) -> Any:
    status = status_of(status)
    return JSONResponse(
        status_code=status, content=envelope(status, body, kind), headers=dict(headers or {})
    )


async def barge_error(_: Request, exc: BargeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
    headers.update(exc.headers)  # Retry-After and x-should-retry with a 429, as on /v1
    return _respond(exc.status_code, exc.to_body(), headers)  # type: ignore[no-any-return]


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # Only where and pydantic's message: never the error's `input`, which holds the user's value.
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = field_name(loc) or None
    msg = clip(str(first.get("msg", "invalid")).removeprefix("Value error, "), PROBLEM_CHARS)
    if first.get("type") == "json_invalid":
        param, msg = None, "the body is not valid JSON"
    message = f"{param}: {msg}" if param else msg
    return _respond(  # type: ignore[no-any-return]
        400, {"error": "invalid_request", "message": message, "field": param}
    )


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals, naming the method and the route: one the surface does not
    serve (as OpenAI answers an invalid URL: a 404 ``invalid_request_error``), or a method
    the route does not take (405, with ``Allow``)."""
    headers = dict(exc.headers or {})
    where = f"{request.method} {clip(request.url.path, PROBLEM_CHARS)}"
    body = {"error": f"http_{exc.status_code}", "message": clip(str(exc.detail))}
    kind = None
    if exc.status_code == 404 and exc.detail == "Not Found":
        kind = "invalid_request_error"
        body = {
            "error": "unknown_url",
            "message": f"Barge does not serve {where}: {PREFIX}v1 serves {SERVED} (listed in "
            f"{PREFIX}v1/openapi.json)",
        }
    elif exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        body = {
            "error": "method_not_allowed",
            "message": f"method not allowed: {where}; allowed: {headers['Allow']}",
        }
    return _respond(exc.status_code, body, headers, kind)  # type: ignore[no-any-return]


async def db_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    return _respond(503, dict(DB_UNAVAILABLE))  # type: ignore[no-any-return]
