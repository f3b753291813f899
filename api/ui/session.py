"""The console's session: a signed cookie naming the API key it was opened with (its id, never
the key) and a CSRF token, valid for ``BARGE_CONSOLE_SESSION_HOURS``.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it), ``Path=/ui`` and ``Secure`` over https (or with ``BARGE_CONSOLE_SECURE_COOKIE``).
Its payload is HMAC-SHA256-signed with ``BARGE_CONSOLE_SECRET``; the key it names is looked
up again on every request, so a revoked or expired key ends its sessions at once. Before
sign-in the cookie carries only a CSRF token, for the sign-in form.

The secret: ``BARGE_CONSOLE_SECRET``; in dev, when unset, a random one kept in
``BARGE_HOME/console-secret`` (made once, readable by its owner only); anywhere else the
console is off until it is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from barge.settings import Settings

COOKIE = "barge_console"
COOKIE_PATH = "/ui"
SECRET_FILE = "console-secret"
_CONTEXT = b"barge-console-session-v1."  # what the signature covers, besides the payload


@dataclass(frozen=True)
class Session:
    """A verified cookie: the key it names (None before sign-in) and its CSRF token."""

    key_id: uuid.UUID | None
    csrf: str
    issued: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), _CONTEXT + payload.encode(), hashlib.sha256).digest())


def sign(secret: str, session: Session) -> str:
    """The cookie's value for ``session``."""
    body: dict[str, object] = {
        "k": str(session.key_id) if session.key_id else None,
        "c": session.csrf,
        "t": session.issued,
    }
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_signature(secret, payload)}"


def verify(
    secret: str, value: str | None, max_age: float, now: float | None = None
) -> Session | None:
    """The session a cookie value holds, or None when it is missing, forged, malformed or
    older than ``max_age`` seconds."""
    if not value or value.count(".") != 1 or len(value) > 4096:
        return None
    payload, signature = value.split(".")
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        return None
    try:
        body = json.loads(_unb64(payload))
        key_id = uuid.UUID(body["k"]) if body.get("k") else None
        csrf, issued = str(body["c"]), float(body["t"])
    except (ValueError, KeyError, TypeError):
        return None
    now = time.time() if now is None else now
    if not csrf or issued > now + 60 or now - issued > max_age:
        return None
    return Session(key_id, csrf, issued)


def new_session(key_id: uuid.UUID | None) -> Session:
    return Session(key_id, secrets.token_urlsafe(24), time.time())


def csrf_ok(session: Session | None, token: str | None) -> bool:
    """Whether a form's CSRF token is the session's."""
    if session is None or not token:
        return False
    return hmac.compare_digest(session.csrf.encode(), token.encode())


def _dev_secret(home: Path) -> str:
    """The dev secret in ``home`` (made once: the first process to write it wins)."""
    path = home / SECRET_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    return secret if len(secret) >= 32 else ""


def secret_of(settings: Settings) -> str | None:
    """The secret sessions are signed with, or None: the console is off."""
    if settings.console_secret:
        return settings.console_secret
    if settings.env == "dev":
        return _dev_secret(settings.home) or None
    return None
