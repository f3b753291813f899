"""Every error the API answers has one shape, `{"error", "message", "field"?, "detail"?}`, and
stays small whatever the input."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from barge.errors import BargeError
from barge.jsonvalues import field_name
from barge.specs import JOB_TYPES

log = logging.getLogger(__name__)


# Error bodies stay small whatever the input: a message is cut to MESSAGE_CHARS, a validation
# error lists at most MAX_PROBLEMS problems of at most PROBLEM_CHARS each.
MESSAGE_CHARS = 1000
PROBLEM_CHARS = 300
MAX_PROBLEMS = 10

# A refusal that leaves more than this of the request body unread closes the connection:
# keeping it alive would mean the server reading (and dropping) the rest.
UNREAD_BODY_KEPT_ALIVE = 64 * 1024
CLOSE = (b"connection", b"close")


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def _bounded(value: Any, depth: int = 0) -> Any:
    """An error body's ``detail`` with every string clipped and every list cut short."""
    if isinstance(value, str):
        return clip(value, PROBLEM_CHARS)
    if depth > 4:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_PROBLEMS]
        return {clip(str(k), PROBLEM_CHARS): _bounded(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_bounded(v, depth + 1) for v in value[:MAX_PROBLEMS]]
    return value


def error_body(body: dict[str, Any]) -> dict[str, Any]:
    """The safety net under every error message: nothing echoes more than an excerpt."""
    out = {**body, "message": clip(str(body.get("message", "")))}
    out.setdefault("field", None)  # always there: null when the error is about no one field
    if out.get("field") is not None:
        out["field"] = clip(str(out["field"]), PROBLEM_CHARS)
    if "detail" in out:
        out["detail"] = _bounded(out["detail"])
    return out


def _field(loc: tuple[Any, ...]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
        if loc[0] == "body" and parts and parts[0] in JOB_TYPES:
            parts = parts[1:]  # the job type the body was validated as
    return field_name(parts) or "body"


def _json_content_type(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    main, _, sub = content_type.partition(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


# pydantic's error types for a value that is not an object where one is expected.
NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "model_type"}


def _body_problem(request: Request, err: dict[str, Any]) -> str | None:
    """What is wrong with the body as a whole, in words, or None if it is not about that."""
    loc, kind = tuple(err.get("loc", ())), err.get("type")
    if loc[:1] == ("body",) and len(loc) == 2 and loc[1] in JOB_TYPES:
        loc = ("body",)  # the job type the whole body was validated as
    if kind == "json_invalid":
        # FastAPI puts the decoder's character offset after "body" in the location.
        at = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        where = f" (at character {at})" if at is not None else ""
        return f"the body is not valid JSON{where}"
    if loc != ("body",) or kind not in NOT_AN_OBJECT | {"missing"}:
        return None
    if not _json_content_type(request):
        return (
            "the body must be a JSON object sent with Content-Type: application/json "
            f"(the request's Content-Type is {request.headers.get('content-type') or 'not set'})"
        )
    if kind == "missing":
        return "the body is missing: send a JSON object"
    return "the body must be a JSON object ({...}), not an array, a string or a number"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Only the location, the type and pydantic's message are used: never the error's `input`
    # or `ctx`, which hold the user's value.
    errors = exc.errors()
    problems = []
    for err in errors[:MAX_PROBLEMS]:
        field = _field(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        body_problem = _body_problem(request, err)
        if body_problem:
            field, msg = "body", body_problem
        elif err.get("type") == "union_tag_invalid":
            field, msg = "type", f"type must be one of {', '.join(JOB_TYPES)}"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        problems.append({"field": field, "message": clip(msg, PROBLEM_CHARS)})
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    if len(errors) > MAX_PROBLEMS:
        message += f"; and {len(errors) - MAX_PROBLEMS} more problems"
    return JSONResponse(
        status_code=422,
        content={
            "error": "invalid_request",
            "message": clip(message),
            "field": problems[0]["field"] if problems else None,
            "detail": problems,
        },
    )


async def barge_error(_: Request, exc: BargeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
    headers.update(exc.headers)  # e.g. Retry-After with a 429
    return JSONResponse(
        status_code=exc.status_code, content=error_body(exc.to_body()), headers=headers
    )


HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """Every method some route of the app takes at this path (Starlette's 405 names only the
    first route that matched the path: POST for /v1/jobs, which GET also serves)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    )


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method) in the same shape as ours."""
    headers = dict(exc.headers or {})
    where = f"{request.method} {clip(request.url.path, PROBLEM_CHARS)}"
    message = str(exc.detail)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such route: {where}; the API's calls are listed at /docs"
    elif exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        message = f"method not allowed: {where}; allowed: {headers['Allow']}"
    return JSONResponse(
        status_code=exc.status_code,
        content=error_body(
            {
                "error": HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}"),
                "message": message,
            }
        ),
        headers=headers,
    )


DB_UNAVAILABLE = {
    "error": "database_unavailable",
    "message": "the database is unavailable; retry shortly",
}


async def db_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse(status_code=503, content=error_body(DB_UNAVAILABLE))
