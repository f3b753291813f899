"""/healthz, the readiness check: does the API reach its database, at the current schema, and its
broker?"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from db.migrate import SchemaNotCurrent
from db.session import ping, require_current_schema

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    database: str = Field(
        description="`ok`, `unavailable: <error type>`, or, before `barge db upgrade`, "
        "`the database schema is missing or old: run ...`"
    )
    broker: str = Field(description="`ok`, or `unavailable: <error type>`")


DEGRADED = {"status": "degraded", "database": "ok", "broker": "unavailable: OperationalError"}


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={
        503: {
            "model": HealthOut,
            "description": "The database or the broker does not answer, or the database's "
            "schema is not current (`barge db upgrade` comes first); the body says which.",
            "content": {"application/json": {"example": DEGRADED}},
        }
    },
)
def healthz(request: Request) -> JSONResponse:
    """200 when the database (at the current schema) and the broker answer; 503 naming what
    does not. The readiness check: a load balancer or orchestrator sends no traffic before."""
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        ping(settings.resolved_database_url)
        require_current_schema(settings.resolved_database_url)
        checks["database"] = "ok"
    except SchemaNotCurrent as exc:
        checks["database"] = exc.message
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
