"""Administration: ``barge db upgrade``, ``barge keys``, ``barge tenants`` and ``barge audit``,
the commands that work on the database itself rather than through the API (``up`` and the demo
use some of them too). They act as the local operator: every change is audited with no key
prefix and ``"via": "cli"``. A key is printed only when it is made (``keys create``,
``keys rotate``), alone on stdout; everything else goes to stderr or is a listing.

Listings print through ``cli.output.emit``: tables through ``cli.tables`` (boxed on a terminal,
plain lines in a pipe), or ``-o json|yaml|name``.

Imports: ``services`` (tenants, keys, audit), ``db`` (migrations, session scopes), ``cli.output``,
``cli.tables``, rich, the kernel.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from barge.errors import BargeError, describe
from barge.settings import get_settings
from cli.output import emit
from cli.tables import Column, Item, show, status, table
from db.migrate import upgrade
from db.session import session_scope
from services import audit, tenants
from services.context import ServiceContext
from services.durations import parse_duration


def db_upgrade() -> str:
    """Bring the configured database to the newest migration; return its URL."""
    url = get_settings().resolved_database_url
    upgrade(url)
    return url


def create_key(
    tenant: str,
    *,
    role: str = tenants.MEMBER,
    name: str | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """A new API key for ``tenant`` (created if new); the key itself, shown only this once."""
    with session_scope(get_settings().resolved_database_url) as session:
        return tenants.create_key(
            operator(session), tenant, role=role, name=name, expires_in=expires_in
        )


def operator(session: Session) -> ServiceContext:
    """The local operator's service context on ``session``: changes audited with ``"via": "cli"``."""
    return ServiceContext.for_operator(session, get_settings())


Handler = Callable[[argparse.Namespace], int]


def database_name(url: str) -> str:
    """The database ``url`` names, without its credentials: ``host:port/name``, or a file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or "(in memory)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.host or 'localhost'}{port}/{parsed.database or ''}"


def _refusals_to_stderr(handler: Handler) -> Handler:
    """A refusal (unknown tenant, bad scope, a schema that needs ``barge db upgrade``, ...) or
    an unreachable database is one line on stderr and exit status 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BargeError as exc:
            print(f"barge: {exc.message}", file=sys.stderr)
        except OperationalError as exc:
            where = database_name(get_settings().resolved_database_url)
            why = describe(exc.orig or exc)  # the driver's error, without SQLAlchemy's wrapping
            print(f"barge: cannot reach the database {where}: {why}", file=sys.stderr)
        return 2

    return run


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _duration(text: str | None, field: str, *, allow_zero: bool = False) -> timedelta | None:
    return parse_duration(text, field, allow_zero=allow_zero) if text else None


@_refusals_to_stderr
def cmd_db_upgrade(_: argparse.Namespace) -> int:
    url = db_upgrade()
    print(f"database {database_name(url)} is at the newest schema", file=sys.stderr)
    return 0


# --- keys -----------------------------------------------------------------------------------------


def _key_rows(keys: list[dict[str, Any]]) -> Table:
    times = ("CREATED", "EXPIRES", "LAST USED", "REVOKED")
    return table(
        [
            Column("PREFIX", no_wrap=True),
            *("TENANT", "NAME", "ROLE"),
            Column("STATE", no_wrap=True),
            *(Column(name, no_wrap=True) for name in times),
        ],
        (
            [
                k["prefix"],
                k["tenant"],
                k["name"] or "-",
                k["role"],
                status(k["state"]),
                _when(k["created_at"]),
                _when(k["expires_at"]),
                _when(k["last_used_at"]),
                _when(k["revoked_at"]),
            ]
            for k in keys
        ),
    )


@_refusals_to_stderr
def cmd_keys_create(args: argparse.Namespace) -> int:
    expires_in = _duration(args.expires_in, "--expires-in")
    with session_scope(get_settings().resolved_database_url) as session:
        row, key = tenants.issue_key(
            operator(session),
            args.tenant,
            role=args.role,
            name=args.name,
            expires_in=expires_in,
            new_tenant_ok=True,
        )
        prefix, expires_at = row.prefix, row.expires_at
    print(key)
    until = f", expires {_when(expires_at)} UTC" if expires_at else ""
    print(f"created {args.role} key {prefix} for tenant {args.tenant}{until}", file=sys.stderr)
    return 0


@_refusals_to_stderr
def cmd_keys_list(args: argparse.Namespace) -> int:
    with session_scope(get_settings().resolved_database_url) as session:
        keys = [asdict(k) for k in tenants.list_keys(session, args.tenant)]
    emit(args, keys, [k["prefix"] for k in keys], lambda wide: [_key_rows(keys)])
    return 0


@_refusals_to_stderr
def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with session_scope(get_settings().resolved_database_url) as session:
        row, tenant = tenants.revoke_key(operator(session), args.key)
        prefix, revoked_at, name = row.prefix, row.revoked_at, tenant.name
    print(f"key {prefix} of tenant {name} revoked at {_when(revoked_at)} UTC", file=sys.stderr)
    return 0


@_refusals_to_stderr
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    grace = _duration(args.grace, "--grace", allow_zero=True) or timedelta(0)
    expires_in = _duration(args.expires_in, "--expires-in")
    with session_scope(get_settings().resolved_database_url) as session:
        old, new, key, tenant = tenants.rotate_key(
            operator(session),
            args.key,
            grace=grace,
            **({"expires_in": expires_in} if expires_in is not None else {}),
        )
        old_prefix, new_prefix, name = old.prefix, new.prefix, tenant.name
        until = min(t for t in (old.revoked_at, old.expires_at) if t is not None)
    print(key)
    ends = "was revoked" if grace == timedelta(0) else "stops working"
    print(
        f"new key {new_prefix} for tenant {name}; the old key {old_prefix} {ends} at "
        f"{_when(until)} UTC",
        file=sys.stderr,
    )
    return 0


# --- tenants ---------------------------------------------------------------------------------------


def _quota_changes(pairs: list[str] | None) -> dict[str, object | None]:
    """``--quota key=value``: a JSON value (a number, true/false) or text; ``key=`` or
    ``key=default`` removes the override."""
    changes: dict[str, object | None] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise BargeError(f"--quota {pair!r}: write key=value (key= to go back to the default)")
        value: object | None
        if raw.strip() in ("", "default"):
            value = None
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        changes[key.strip()] = value
    return changes


def _scope_lines(tenant: dict[str, Any]) -> Iterator[Item]:
    for kind in ("read", "write"):
        source = "default template" if tenant[f"{kind}_scopes_default"] else "set for this tenant"
        scopes = ", ".join(tenant[f"{kind}_scopes"]) or "(none)"
        yield f"{kind} scopes ({source}): {scopes}"


def _tenant_lines(tenant: dict[str, Any]) -> Iterator[Item]:
    """A tenant: its scopes, its quotas in a table (each default or set for it), its keys."""
    updated = f", updated {_when(tenant['updated_at'])}" if tenant["updated_at"] else ""
    yield f"tenant {tenant['name']} (created {_when(tenant['created_at'])}{updated})"
    yield from _scope_lines(tenant)
    yield "quotas:"
    overrides = tenant["quota_overrides"]
    yield table(
        [Column("LIMIT", no_wrap=True), "VALUE", "FROM"],
        (
            [
                name,
                json.dumps(value, default=str),
                "set for this tenant" if name in overrides else "default",
            ]
            for name, value in tenant["quotas"].items()
        ),
    )
    yield f"active keys: {tenant['active_keys']}"


def _tenant_rows(items: list[dict[str, Any]]) -> Table:
    def scopes(t: dict[str, Any], kind: str) -> str:
        text = ", ".join(t[f"{kind}_scopes"]) or "(none)"
        return f"{text} (default)" if t[f"{kind}_scopes_default"] else text

    return table(
        [Column("NAME", no_wrap=True), "READ", "WRITE", "QUOTA OVERRIDES", "KEYS"],
        (
            [
                t["name"],
                scopes(t, "read"),
                scopes(t, "write"),
                ", ".join(f"{k}={v}" for k, v in t["quota_overrides"].items()) or "-",
                str(t["active_keys"]),
            ]
            for t in items
        ),
    )


@_refusals_to_stderr
def cmd_tenants_create(args: argparse.Namespace) -> int:
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        tenant = tenants.create_tenant(
            operator(session),
            args.name,
            read_scopes=args.read,
            write_scopes=args.write,
            quota_overrides=_quota_changes(args.quota),
        )
        shown = asdict(tenants.describe_tenant(operator(session), tenant))
    show(*_tenant_lines(shown))
    return 0


@_refusals_to_stderr
def cmd_tenants_update(args: argparse.Namespace) -> int:
    if args.reset_scopes and (args.read is not None or args.write is not None):
        raise BargeError("--reset-scopes goes back to the template: give it without --read/--write")
    reset: dict[str, Any] = {"read_scopes": None, "write_scopes": None} if args.reset_scopes else {}
    given = {
        column: value
        for column, value in (("read_scopes", args.read), ("write_scopes", args.write))
        if value is not None
    }
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        tenant = tenants.update_tenant(
            operator(session), args.name, **reset, **given, quota_changes=_quota_changes(args.quota)
        )
        shown = asdict(tenants.describe_tenant(operator(session), tenant))
    show(*_tenant_lines(shown))
    return 0


@_refusals_to_stderr
def cmd_tenants_show(args: argparse.Namespace) -> int:
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        shown = asdict(
            tenants.describe_tenant(operator(session), tenants.get_tenant(session, args.name))
        )
    emit(args, shown, [shown["name"]], lambda wide: list(_tenant_lines(shown)))
    return 0


@_refusals_to_stderr
def cmd_tenants_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        items = [asdict(t) for t in tenants.describe_tenants(operator(session))]
    emit(args, items, [t["name"] for t in items], lambda wide: [_tenant_rows(items)])
    return 0


# --- the audit log ---------------------------------------------------------------------------------


def _audit_rows(items: list[dict[str, Any]]) -> Table:
    def data(d: dict[str, Any]) -> str:
        text = json.dumps(d, default=str, separators=(",", ":")) if d else ""
        return text if len(text) <= 100 else text[:99] + "…"

    return table(
        [
            Column("AT", no_wrap=True),
            "TENANT",
            Column("KEY", no_wrap=True),
            *("ACTION", "TARGET", "DATA"),
        ],
        (
            [
                e["at"].strftime("%Y-%m-%d %H:%M:%S"),
                e["tenant"],
                e["key_prefix"] or "(cli)",
                e["action"],
                e["target"],
                data(e["data"]),
            ]
            for e in items
        ),
    )


@_refusals_to_stderr
def cmd_audit(args: argparse.Namespace) -> int:
    since = audit.parse_since(args.since) if args.since else None
    with session_scope(get_settings().resolved_database_url) as session:
        found = audit.entries(
            session,
            tenant=args.tenant,
            action=args.action,
            key_prefix=args.key,
            since=since,
            limit=args.limit,
        )
        items = [asdict(audit.present(e)) for e in found]
    emit(args, items, [e["id"] for e in items], lambda wide: [_audit_rows(items)])
    return 0
