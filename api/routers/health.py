"""/healthz: does the API reach its database and broker?"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from db.session import ping

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    database: str = Field(description="`ok`, or `unavailable: <error type>`")
    broker: str = Field(description="`ok`, or `unavailable: <error type>`")


DEGRADED = {"status": "degraded", "database": "ok", "broker": "unavailable: OperationalError"}


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={
        503: {
            "model": HealthOut,
            "description": "The database or the broker does not answer; the body says which.",
            "content": {"application/json": {"example": DEGRADED}},
        }
    },
)
def healthz(request: Request) -> JSONResponse:
    """200 when the database and the broker answer; 503 naming what does not."""
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        ping(settings.resolved_database_url)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=settings.broker_timeout_seconds)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", **checks}, 200 if ok else 503)
