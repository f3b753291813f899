"""The console's pages: jobs (filters, search, live progress), a job (throughput over time,
shard timeline, errors, events, usage; a fine-tune's curves; cancel, pause, resume and retry),
workers, models, and for admins tenants with their quotas and the audit log. Thin: what they show
comes from ``services.console``.

A job's page polls ``/ui/jobs/{id}/live`` (JSON) once a second while the job runs, and stops
once it is final; the jobs list refreshes its rows every two seconds while one of them runs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from api.deps import UoW
from api.ui.auth import (
    Signed,
    SignedIn,
    check_csrf,
    page,
    require_admin_page,
    settings_of,
    ui_root,
)
from api.ui.auth import router as auth_router
from api.ui.render import fragment
from barge.errors import NotFound, excerpt
from barge.status import JOB_STATUSES
from db import repositories as repo
from db.models import Job
from services import audit, console, retries
from services import jobs as jobs_service
from services.context import ServiceContext
from services.tenants import describe_tenants

router = APIRouter()
router.include_router(auth_router)

Status = Annotated[str | None, Query(max_length=32)]
Text = Annotated[str | None, Query(max_length=200)]
Cursor = Annotated[str | None, Query(max_length=256)]


def _context(request: Request, uow: UoW, signed: SignedIn) -> ServiceContext:
    """The signed-in key's service context (services audit and check scopes through it)."""
    return ServiceContext(uow, settings_of(request), request.app.state.store, signed.principal)


def _job(uow: UoW, signed: SignedIn, job_id: str) -> Job:
    """The tenant's job; another tenant's (or none) is a 404, as on the API."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {excerpt(job_id)}") from None
    job = repo.get_job(uow.session, parsed, signed.principal.tenant.id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


@router.get("/", response_class=HTMLResponse)
def home(request: Request, signed: Signed) -> RedirectResponse:
    return RedirectResponse(f"{ui_root(request)}/jobs", status_code=303)


def _jobs_context(
    request: Request,
    uow: UoW,
    signed: SignedIn,
    status: str | None,
    text: str | None,
    cursor: str | None,
) -> dict[str, Any]:
    status = status if status in JOB_STATUSES else None
    text = (text or "").strip() or None
    rows, more = console.find_jobs(
        uow.session,
        settings_of(request),
        signed.principal.tenant.id,
        status=status,
        text=text,
        cursor=cursor,
    )
    return {
        "jobs": rows,
        "status": status,
        "text": text or "",
        "cursor": cursor,
        "next_cursor": more,
        "statuses": JOB_STATUSES,
        "live": any(not row["final"] for row in rows),
    }


@router.get("/jobs", response_class=HTMLResponse)
def jobs(
    request: Request,
    uow: UoW,
    signed: Signed,
    status: Status = None,
    q: Text = None,
    cursor: Cursor = None,
) -> HTMLResponse:
    return page(
        request, "jobs.html", _jobs_context(request, uow, signed, status, q, cursor), signed
    )


@router.get("/jobs/rows", response_class=HTMLResponse)
def job_rows(
    request: Request,
    uow: UoW,
    signed: Signed,
    status: Status = None,
    q: Text = None,
    cursor: Cursor = None,
) -> HTMLResponse:
    """The jobs list's rows, for its live refresh."""
    context = _jobs_context(request, uow, signed, status, q, cursor)
    return page(request, "_job_rows.html", context, signed)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, uow: UoW, signed: Signed) -> HTMLResponse:
    settings = settings_of(request)
    job = _job(uow, signed, job_id)
    data = console.job_data(uow.session, settings, job)
    errors = console.first_errors(_context(request, uow, signed), job)
    context = {"data": data, "job": data["job"], "errors": errors, "job_type": job.type}
    return page(request, "job.html", jsonable_encoder(context), signed)


@router.get("/jobs/{job_id}/live")
def job_live(
    request: Request, job_id: str, uow: UoW, signed: Signed, errors: bool = False
) -> JSONResponse:
    """What the job page updates (polled while the job runs): its data, and its tables rendered
    as the page renders them; its first errors when asked."""
    settings = settings_of(request)
    job = _job(uow, signed, job_id)
    data = jsonable_encoder(console.job_data(uow.session, settings, job))
    context = {"data": data, "usage": data["job"]["resources"], "ui": ui_root(request)}
    names = ["events", "usage"]
    if errors:
        context["errors"] = console.first_errors(_context(request, uow, signed), job)
        names.append("errors")
    if job.type == "finetune":
        names += ["epochs", "confusion", "finetune_outputs"]
    data["html"] = {name: fragment(f"_{name}.html", context) for name in names}
    return JSONResponse(data)


CsrfField = Annotated[str, Form(max_length=200)]


def _act(
    request: Request, job_id: str, uow: UoW, signed: Signed, csrf: str, action: str
) -> RedirectResponse:
    """Cancel, pause or resume the job (its owner, or an admin; the form's CSRF token
    checked), then back to its page."""
    check_csrf(signed, csrf)
    job = _job(uow, signed, job_id)
    ctx = _context(request, uow, signed)
    if action == "cancel":
        jobs_service.cancel(ctx, job, "cancelled from the console")
    elif action == "pause":
        jobs_service.pause(ctx, job)
    else:
        jobs_service.resume(ctx, job)
    return RedirectResponse(f"{ui_root(request)}/jobs/{job.id}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
def cancel(
    request: Request, job_id: str, uow: UoW, signed: Signed, csrf: CsrfField = ""
) -> RedirectResponse:
    return _act(request, job_id, uow, signed, csrf, "cancel")


@router.post("/jobs/{job_id}/pause")
def pause(
    request: Request, job_id: str, uow: UoW, signed: Signed, csrf: CsrfField = ""
) -> RedirectResponse:
    """Pause a running job: running shards finish, no new one starts."""
    return _act(request, job_id, uow, signed, csrf, "pause")


@router.post("/jobs/{job_id}/resume")
def resume(
    request: Request, job_id: str, uow: UoW, signed: Signed, csrf: CsrfField = ""
) -> RedirectResponse:
    """Resume a pausing or paused job."""
    return _act(request, job_id, uow, signed, csrf, "resume")


@router.post("/jobs/{job_id}/retry")
def retry(
    request: Request, job_id: str, uow: UoW, signed: Signed, csrf: CsrfField = ""
) -> RedirectResponse:
    """Submit a failed or cancelled job again (a new job, writing beside the first)."""
    check_csrf(signed, csrf)
    job = _job(uow, signed, job_id)
    new = console.retry(_context(request, uow, signed), job)
    return RedirectResponse(f"{ui_root(request)}/jobs/{new.id}", status_code=303)


@router.post("/jobs/{job_id}/retry-failed")
def retry_failed(
    request: Request, job_id: str, uow: UoW, signed: Signed, csrf: CsrfField = ""
) -> RedirectResponse:
    """Run again only the records the job (or its newest retry) left failed or unprocessed:
    a child job over exactly those (``POST /v1/jobs/{id}/retry``), then the child's page."""
    check_csrf(signed, csrf)
    job = _job(uow, signed, job_id)
    child = retries.retry(_context(request, uow, signed), retries.RetryJob(job))
    return RedirectResponse(f"{ui_root(request)}/jobs/{child.id}", status_code=303)


@router.get("/workers", response_class=HTMLResponse)
def workers(request: Request, uow: UoW, signed: Signed) -> HTMLResponse:
    found = console.workers_view(uow.session, settings_of(request), signed.principal)
    return page(request, "workers.html", {"workers": found}, signed)


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, uow: UoW, signed: Signed) -> HTMLResponse:
    found = console.models_view(uow.session, signed.principal.tenant.id)
    return page(request, "models.html", {"models": found}, signed)


@router.get("/admin/tenants", response_class=HTMLResponse)
def tenants(request: Request, uow: UoW, signed: Signed) -> HTMLResponse:
    require_admin_page(signed)
    found = describe_tenants(_context(request, uow, signed))
    return page(request, "tenants.html", {"tenants": found}, signed)


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    uow: UoW,
    signed: Signed,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> HTMLResponse:
    require_admin_page(signed)
    entries = audit.entries(uow.session, before_id=before, limit=100)
    shown = [audit.present(e) for e in entries]
    more = shown[-1].id if len(shown) == 100 else None
    return page(request, "audit.html", {"entries": shown, "more": more}, signed)
