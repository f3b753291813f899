"""The request guard, a pure ASGI middleware in front of the app: the body size limit (413) before
reading, authentication before parsing, finite numbers, and unexpected errors answered as a JSON
500 on a connection that stays usable."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import PRINCIPAL_STATE, authenticate
from api.errors import (
    CLOSE,
    DB_UNAVAILABLE,
    PROBLEM_CHARS,
    UNREAD_BODY_KEPT_ALIVE,
    clip,
    error_body,
)
from api.routers.openai.errors import envelope, is_openai_path, status_of
from barge.errors import BargeError
from barge.jsonvalues import field_name, unstorable
from barge.settings import Settings

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    """The request body passed the limit while it was being read."""


def _needs_key(path: str) -> bool:
    return path in ("/v1", "/openai/v1") or path.startswith(("/v1/", "/openai/v1/"))


UPLOAD_OVERHEAD = 1 << 20  # multipart headers and fields around an uploaded file


def _body_limit(settings: Settings, scope: Scope) -> tuple[int, str]:
    """The largest body this request may have, and the setting that says so: an OpenAI file
    upload may be as large as a file (its own limit is checked as it streams)."""
    if scope.get("method") == "POST" and scope["path"].rstrip("/") == "/openai/v1/files":
        return settings.openai_max_file_bytes + UPLOAD_OVERHEAD, "BARGE_OPENAI_MAX_FILE_BYTES"
    return settings.max_body_bytes, "BARGE_MAX_BODY_BYTES"


def _is_json(headers: Headers) -> bool:
    """Whether FastAPI parses this body as JSON (it needs a JSON content type to)."""
    content_type = headers.get("content-type")
    if not content_type:
        return False
    main, _, sub = content_type.partition(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _json_problem(body: bytes) -> tuple[str, str] | None:
    """(field, message) when ``body`` is not JSON that Barge could store, else None.

    FastAPI parses bodies with ``json.loads``, which accepts ``NaN``, ``Infinity`` and ``1e400``
    (an infinite float): Postgres refuses them, so they are refused here, naming where they are.
    """
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return "body", (
            f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        )
    except RecursionError:
        return "body", "the body is not valid JSON: it is nested too deeply"
    except ValueError as exc:  # bytes that are not UTF-8, an integer of thousands of digits
        return "body", f"the body is not valid JSON ({clip(str(exc), PROBLEM_CHARS)})"
    found = unstorable(value, text=False)
    if found is None:
        return None
    path, problem = found
    return field_name(path) or "body", problem


class _Exchange:
    """One request as the guard sees it: bytes received, whether the response has started."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, limit: int, limit_name: str
    ) -> None:
        self.scope = scope
        self.limit_name = limit_name
        self._receive = receive
        self._send = send
        self.limit = limit
        headers = Headers(scope=scope)
        self.headers = headers
        self.declared: int | None = None
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit():
            self.declared = int(length)
        self.has_body = bool(self.declared) or "transfer-encoding" in headers
        self.received = 0
        self.body_done = not self.has_body
        self.over_limit = False
        self.started = False
        self.replaced = False  # the app's response was swapped for the guard's 413

    def too_large(self) -> bool:
        return self.declared is not None and self.declared > self.limit

    async def receive(self) -> Message:
        if self.over_limit:
            raise _BodyTooLarge()
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.over_limit = True
                raise _BodyTooLarge()
            if not message.get("more_body", False):
                self.body_done = True
        return message

    async def read_body(self) -> bytes | None:
        """The whole body (at most ``limit`` bytes), or None if the client went away."""
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def replay(self, body: bytes) -> Receive:
        """A receive that hands the app the body already read, then waits as usual."""
        replayed = False

        async def receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await self.receive()

        return receive

    def _must_close(self) -> bool:
        if self.body_done:
            return False
        if self.over_limit or self.declared is None:
            return True  # chunked: no telling how much is left
        return self.declared - self.received > UNREAD_BODY_KEPT_ALIVE

    async def _send_out(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self._must_close():
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
        await self._send(message)

    async def send(self, message: Message) -> None:
        """The app's send: once the body went over the limit, the app's answer (FastAPI turns a
        failed body read into a 400) is replaced by the 413."""
        if self.replaced:
            return
        if self.over_limit and not self.started:
            self.replaced = True
            await self.respond(413, self.too_large_body())
            return
        await self._send_out(message)

    async def respond(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        content = error_body(body)
        if is_openai_path(self.scope.get("path", "")):
            status = status_of(status)
            content = envelope(status, body)
        response = JSONResponse(content, status_code=status, headers=headers)
        await response(self.scope, self._receive, self._send_out)

    def too_large_body(self) -> dict[str, Any]:
        return {
            "error": "payload_too_large",
            "message": f"the request body must be at most {self.limit} bytes ({self.limit_name})",
        }


class RequestGuard:
    """Pure ASGI middleware for what must happen before FastAPI reads and parses a body:

    - a body over ``max_body_bytes`` is a 413: at once when its Content-Length says so, and as
      soon as the count passes the limit when it is streamed (chunked);
    - a ``/v1/`` request is authenticated (``Authorization: Bearer <key>``, looked up in a thread
      with a short session of its own) before its body is read; the principal (tenant, key
      prefix, role) is left in ``scope["state"]`` for ``api.deps.current_principal``;
    - a JSON body with a NaN or infinite number is a 422 naming where it is;
    - an unexpected exception is logged and answered with the JSON 500 here, so that the
      connection stays usable (Starlette's ServerErrorMiddleware re-raises, and uvicorn then
      drops a keep-alive connection).
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, *_body_limit(self.settings, scope))
        try:
            await self._guard(exchange)
        except Exception as exc:
            if exchange.over_limit:  # the app let our signal through rather than answering
                if not exchange.started:
                    await exchange.respond(413, exchange.too_large_body())
                return
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if not exchange.started:
                await exchange.respond(
                    500,
                    {
                        "error": "internal_error",
                        "message": f"unexpected {type(exc).__name__}; see the API logs",
                    },
                )

    async def _guard(self, exchange: _Exchange) -> None:
        scope = exchange.scope
        if exchange.too_large():
            await exchange.respond(413, exchange.too_large_body())
            return
        if _needs_key(scope["path"]):
            try:
                principal = await anyio.to_thread.run_sync(
                    authenticate, self.settings, exchange.headers.get("authorization")
                )
            except BargeError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
                await exchange.respond(exc.status_code, exc.to_body(), headers)
                return
            except OperationalError as exc:
                log.warning("database unavailable: %s", exc)
                await exchange.respond(503, DB_UNAVAILABLE)
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        receive: Receive = exchange.receive
        if exchange.has_body and _is_json(exchange.headers):
            body = await exchange.read_body()
            if body is None:
                return  # the client went away
            problem = _json_problem(body) if body else None
            if problem:
                field, message = problem
                body_problem = {"field": field, "message": message}
                await exchange.respond(
                    422,
                    {
                        "error": "invalid_request",
                        "message": f"{field}: {message}",
                        "field": field,
                        "detail": [body_problem],
                    },
                )
                return
            receive = exchange.replay(body)
        await self.app(scope, receive, exchange.send)
