"""The context a service acts in: the unit of work, the settings, the object store and the
principal acting, as the worker's tasks have their ``WorkerContext``.

A principal is who acts: a tenant through one of its API keys (with the key's role), a worker
doing a tenant's work (a drop folder's submission, a fine-tune registering its model), or the
local operator (the ``barge`` admin commands on the database itself, with no key and no tenant
of its own). Each boundary builds the context once: the API's request dependency
(``api.deps``) for the request's key, a worker with ``for_worker``, the admin CLI with
``for_operator``. Services take it, and a small command where a call needs more than an id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from barge.errors import Forbidden, NotFound
from barge.settings import Settings
from barge.storage import ObjectStore, make_store
from db.models import Tenant
from services.unit_of_work import UnitOfWork

MEMBER, ADMIN = "member", "admin"  # the roles of keys
WORKER, OPERATOR = "worker", "operator"  # the roles of the principals that hold no key


@dataclass(frozen=True)
class Principal:
    """Who acts for a tenant: one of its keys with that key's role, or a worker doing the
    tenant's work (role ``worker``, no key)."""

    tenant: Tenant
    key_id: uuid.UUID | None
    key_prefix: str | None
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


@dataclass(frozen=True)
class Operator:
    """The local operator: whoever runs the ``barge`` admin commands on the database (and so
    could change it anyway). Acts as an admin, for no tenant of its own."""

    role: str = OPERATOR

    @property
    def is_admin(self) -> bool:
        return True


OPERATOR_PRINCIPAL = Operator()


@dataclass(frozen=True)
class ServiceContext:
    uow: UnitOfWork
    settings: Settings
    store: ObjectStore
    principal: Principal | Operator

    @property
    def session(self) -> Session:
        return self.uow.session

    @property
    def tenant(self) -> Tenant:
        """The tenant the principal acts for; the operator acts for none (Forbidden)."""
        if isinstance(self.principal, Operator):
            raise Forbidden("the local operator acts for no tenant; use a tenant's API key")
        return self.principal.tenant

    @classmethod
    def for_worker(
        cls,
        uow: UnitOfWork | Session,
        settings: Settings,
        store: ObjectStore,
        tenant_id: uuid.UUID,
    ) -> ServiceContext:
        """A worker's context for work of the tenant ``tenant_id``: that tenant, acting through
        the worker. A bare session (a callback inside a task's transaction) is a unit of work
        whose messages nobody sends: only for services that send none."""
        if isinstance(uow, Session):
            uow = UnitOfWork(uow)
        tenant = uow.session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant with id {tenant_id}")
        return cls(uow, settings, store, Principal(tenant, None, None, WORKER))

    @classmethod
    def for_operator(
        cls, uow: UnitOfWork | Session, settings: Settings, store: ObjectStore | None = None
    ) -> ServiceContext:
        """The local operator's context (the admin CLI's): its changes are audited with no key
        and ``"via": "cli"``. A bare session: as in ``for_worker``."""
        if isinstance(uow, Session):
            uow = UnitOfWork(uow)
        return cls(uow, settings, store or make_store(settings), OPERATOR_PRINCIPAL)
