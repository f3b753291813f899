"""Tenants and their API keys: a key is shown once and stored hashed."""

from __future__ import annotations

from sqlalchemy.orm import Session

from barge.errors import Unauthorized
from db import repositories as repo
from db.models import Tenant


def create_key(session: Session, tenant_name: str) -> str:
    """A new key for ``tenant_name`` (created if new); the only time the key is seen."""
    return repo.create_api_key(session, tenant_name)


def tenant_for_authorization(session: Session, authorization: str | None) -> Tenant:
    """The tenant an ``Authorization: Bearer <key>`` header names, or Unauthorized saying what
    to send."""
    if not authorization:
        raise Unauthorized()
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Authorization header must be `Bearer <key>`")
    tenant = repo.tenant_for_key(session, key.strip())
    if tenant is None:
        raise Unauthorized("unknown or revoked API key")
    return tenant
