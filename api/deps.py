"""Request boundary: one session per request, committed at the end, then queued task sends;
the request's principal (authenticated by the request guard) and the service context the
handlers hand to the services."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from barge.queue import send
from barge.settings import Settings
from barge.storage import ObjectStore
from db.models import Tenant
from db.session import session_factory, session_scope
from services.context import Principal, ServiceContext
from services.tenants import principal_for_authorization, require_admin
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


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
    for task_name, args, options in uow.outbox:
        try:
            send(request.app.state.celery, task_name, *args, **options)
        except Exception as exc:  # committed already: the reconciler dispatches it later
            log.warning(
                "could not publish %s%s now (%s); the reconciler will", task_name, args, exc
            )


# scope="function": commit (and publish) before the response goes out, never after.
UoW = Annotated[UnitOfWork, Depends(get_uow, scope="function")]


# The scope["state"] key under which the request guard (api.guard) leaves the principal (tenant,
# key, role) it authenticated before the body was read.
PRINCIPAL_STATE = "barge_principal"

# Documents the key in the OpenAPI schema (the "Authorize" button of /docs); the check itself is
# principal_for_authorization, run by the request guard.
bearer = HTTPBearer(
    auto_error=False, description="An API key: `barge keys create --tenant T` prints one."
)


def authenticate(settings: Settings, authorization: str | None) -> Principal:
    """``principal_for_authorization`` in a short session of its own, committed (it may note
    the key's last use); blocking: run it in a thread."""
    with session_scope(settings.resolved_database_url) as session:
        return principal_for_authorization(session, authorization)


def current_principal(
    request: Request,
    uow: UoW,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Who the request acts as: the principal the request guard authenticated (no second
    lookup), its tenant attached to the request's session; looked up here only when the app
    runs without the guard."""
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if principal is None:
        return principal_for_authorization(uow.session, request.headers.get("authorization"))
    return replace(principal, tenant=uow.session.merge(principal.tenant, load=False))


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def current_tenant(principal: CurrentPrincipal) -> Tenant:
    """The request's tenant (its principal's)."""
    return principal.tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def service_context(
    uow: UoW, settings: SettingsDep, store: StoreDep, principal: CurrentPrincipal
) -> ServiceContext:
    """What the request's services act in: its unit of work, the app's settings and store,
    and its principal."""
    return ServiceContext(uow, settings, store, principal)


Context = Annotated[ServiceContext, Depends(service_context)]


def admin_context(ctx: Context) -> ServiceContext:
    """The request's context, whose principal must hold an admin key (403 for a member's)."""
    require_admin(ctx.principal)
    return ctx


AdminContext = Annotated[ServiceContext, Depends(admin_context)]
