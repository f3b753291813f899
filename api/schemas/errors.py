"""The error body of every /v1 call (``ErrorOut``) and ``errors(...)``: the error responses an
operation declares in the OpenAPI schema, each with what it means."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every error of the /v1 API (the /openai/v1 surface keeps OpenAI's envelope)."""

    error: str = Field(description="A stable code: not_found, invalid_request, forbidden, ...")
    message: str = Field(description="What went wrong and what to do, in words")
    field: str | None = Field(
        None, description="The request field at fault (`body` for the body as a whole), or null"
    )
    detail: Any = Field(None, description="More, when there is more: each problem, a quota")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid_request",
                    "message": "batch_size: Input should be greater than or equal to 1",
                    "field": "batch_size",
                    "detail": [{"field": "batch_size", "message": "Input should be ..."}],
                }
            ]
        }
    )


# What each status means, for the OpenAPI schema: every operation lists only those it can answer.
ERROR_MEANINGS = {
    401: "No API key, or one that is unknown, revoked or expired (`WWW-Authenticate: Bearer`).",
    403: "Outside the tenant's storage scopes, or an admin call made with a member's key.",
    404: "No such resource for this tenant (another tenant's is a 404 too).",
    409: "Conflicts with the resource's state or with an existing one.",
    413: "The body is over BARGE_MAX_BODY_BYTES; refused before it is read.",
    422: "Invalid input: `field` names where, `message` says what is wrong.",
    429: "Over a quota of the tenant (`Retry-After` says when to try again).",
    502: "The object store failed or refused Barge's request.",
    503: "The database is unavailable; retry shortly.",
}
HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}},
}


def errors(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error responses of an authenticated /v1 operation: 401 and 503 always, 413 and 422
    when it takes a body, and ``codes``."""
    every = {401, 503, *codes, *((413, 422) if body else ())}
    return {
        code: {
            "model": ErrorOut,
            "description": ERROR_MEANINGS[code],
            **({"headers": HEADERS[code]} if code in HEADERS else {}),
        }
        for code in sorted(every)
    }
