"""Request boundary: one session per request, committed at the end, then queued task sends."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from barge.errors import Unauthorized
from barge.queue import send
from barge.settings import Settings
from barge.storage import ObjectStore
from db import repositories as repo
from db.models import Tenant
from db.session import session_factory

log = logging.getLogger(__name__)


@dataclass
class UnitOfWork:
    """A request's session plus its outbox: tasks to send only after the commit succeeds."""

    session: Session
    outbox: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def send_after_commit(self, task_name: str, *args: Any) -> None:
        self.outbox.append((task_name, args))


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_uow(request: Request) -> Iterator[UnitOfWork]:
    settings: Settings = request.app.state.settings
    session = session_factory(settings.resolved_database_url)()
    uow = UnitOfWork(session)
    try:
        yield uow
        session.commit()
    except BaseException:
        session.rollback()
        uow.outbox.clear()  # dropped with the rollback
        raise
    finally:
        session.close()
    for task_name, args in uow.outbox:
        try:
            send(request.app.state.celery, task_name, *args)
        except Exception as exc:  # committed already: the reconciler dispatches it later
            log.warning(
                "could not publish %s%s now (%s); the reconciler will", task_name, args, exc
            )


# scope="function": commit (and publish) before the response goes out, never after.
UoW = Annotated[UnitOfWork, Depends(get_uow, scope="function")]


def current_tenant(uow: UoW, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    if not authorization:
        raise Unauthorized()
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Authorization header must be `Bearer <key>`")
    tenant = repo.tenant_for_key(uow.session, key.strip())
    if tenant is None:
        raise Unauthorized("unknown or revoked API key")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
