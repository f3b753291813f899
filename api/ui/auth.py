"""Signing in and out of the console, and who a request acts as.

Sign-in takes an API key once (a form POST, never a URL), checks it as the API does, and
opens a session (``api.ui.session``) naming the key's id. Every page then re-checks that key
(``signed_in``): revoked or expired, it is signed out. A state-changing form (sign-out,
cancel, retry) must carry the session's CSRF token (``check_csrf``); one without it is a 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.responses import Response as StarletteResponse

from api.deps import UoW
from api.ui import session as sessions
from api.ui.render import templates
from barge.errors import BargeError, Forbidden, Unauthorized
from barge.settings import Settings
from services.tenants import Principal, principal_for_authorization, principal_for_key_id

router = APIRouter()


class SignInRequired(Exception):
    """No session, or one whose key no longer works: the sign-in page, saying why."""

    def __init__(self, message: str = "") -> None:
        self.message = message
        super().__init__(message)


class ConsoleOff(Exception):
    """No secret to sign sessions with (``BARGE_CONSOLE_SECRET``)."""

    message = (
        "The console is off: set BARGE_CONSOLE_SECRET (at least 32 random characters) "
        "for the API to sign its sessions with."
    )


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def secret(request: Request) -> str:
    found = sessions.secret_of(settings_of(request))
    if found is None:
        raise ConsoleOff()
    return found


def current_session(request: Request) -> sessions.Session | None:
    settings = settings_of(request)
    max_age = settings.console_session_hours * 3600
    return sessions.verify(secret(request), request.cookies.get(sessions.COOKIE), max_age)


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    session: sessions.Session


def signed_in(request: Request, uow: UoW) -> SignedIn:
    """The request's principal, from its session; ``SignInRequired`` without a working one."""
    found = current_session(request)
    if found is None or found.key_id is None:
        raise SignInRequired()
    try:
        principal = principal_for_key_id(uow.session, found.key_id)
    except Unauthorized as exc:
        raise SignInRequired(exc.message) from None
    return SignedIn(principal, found)


Signed = Annotated[SignedIn, Depends(signed_in)]


def check_csrf(signed: SignedIn, token: str | None) -> None:
    if not sessions.csrf_ok(signed.session, token):
        raise Forbidden(
            "this form is missing its CSRF token or carries a stale one: reload the page and try "
            "again"
        )


def set_cookie(request: Request, response: StarletteResponse, value: str) -> None:
    settings = settings_of(request)
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=int(settings.console_session_hours * 3600),
        path=sessions.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=settings.console_secure_cookie or request.url.scheme == "https",
    )


def ui_root(request: Request) -> str:
    """Where the console is mounted (``/ui``, behind any proxy prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/") or "/ui"


def safe_next(request: Request, target: str | None) -> str:
    """``target`` when it is a page of the console, else the jobs list."""
    root = ui_root(request)
    parts = urlsplit(target or "")
    if (
        target
        and not parts.scheme
        and not parts.netloc
        and parts.path.startswith(f"{root}/")
        and "//" not in parts.path
        and "\\" not in target
    ):
        return target
    return f"{root}/jobs"


def login_url(request: Request, message: str = "") -> str:
    url = f"{ui_root(request)}/login?next={quote(str(request.url.path), safe='/')}"
    if request.url.query:
        url = f"{url}{quote('?' + request.url.query, safe='')}"
    return f"{url}&why={quote(message)}" if message else url


def page(
    request: Request,
    name: str,
    context: dict[str, Any],
    signed: SignedIn | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A template rendered with what every page shows (the console's root, who is signed in,
    the CSRF token its forms carry)."""
    base = {
        "ui": ui_root(request),
        "principal": signed.principal if signed else None,
        "csrf": signed.session.csrf if signed else None,
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return page(
        request, "error.html", {"status": status_code, "message": message}, None, status_code
    )


def _login_form(
    request: Request, found: sessions.Session | None, message: str, status_code: int = 200
) -> HTMLResponse:
    fresh = found if found is not None else sessions.new_session(None)
    response = page(
        request,
        "login.html",
        {
            "login_csrf": fresh.csrf,
            "next": safe_next(request, request.query_params.get("next")),
            "message": message,
        },
        status_code=status_code,
    )
    if found is None:
        set_cookie(request, response, sessions.sign(secret(request), fresh))
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, why: str = "") -> HTMLResponse:
    return _login_form(request, current_session(request), why[:300])


@router.post("/login", response_model=None)
def login(
    request: Request,
    uow: UoW,
    key: Annotated[str, Form(max_length=1000)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Check the key as the API would, then open a session naming it."""
    found = current_session(request)
    if found is None or not sessions.csrf_ok(found, csrf):
        return _login_form(request, None, "The sign-in form expired: try again.", 403)
    try:
        principal = principal_for_authorization(uow.session, f"Bearer {key.strip()}")
    except BargeError as exc:
        return _login_form(request, found, exc.message, exc.status_code)
    response = RedirectResponse(safe_next(request, next), status_code=303)
    fresh = sessions.new_session(principal.key_id)  # a new CSRF token with the new session
    set_cookie(request, response, sessions.sign(secret(request), fresh))
    return response


@router.post("/logout", response_model=None)
def logout(
    request: Request, signed: Signed, csrf: Annotated[str, Form(max_length=200)] = ""
) -> RedirectResponse:
    check_csrf(signed, csrf)
    response = RedirectResponse(f"{ui_root(request)}/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path=sessions.COOKIE_PATH)
    return response


def require_admin_page(signed: SignedIn) -> None:
    if not signed.principal.is_admin:
        raise Forbidden("this page is for admin keys")
