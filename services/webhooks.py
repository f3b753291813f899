"""Webhooks: a tenant's endpoints (a URL and the event types it wants; its signing secret is
shown once, at create and at each rotation), the checks a target passes, and how a delivery
is signed. The outbox rows are written by ``db.outbox`` with each final status; the control
worker sends them (``worker.control.webhooks``).

Signing is Standard Webhooks', as OpenAI signs its webhooks: the secret is ``whsec_`` and the
base64 of 32 random bytes; ``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256, keyed
with those bytes, of ``{webhook-id}.{webhook-timestamp}.{body}`` (space-separated signatures,
one per secret, while a rotated secret's grace lasts).

A target must be ``http(s)://`` with a host and no user info, and every address its host
resolves to must be global: loopback, private, link-local (cloud metadata at 169.254.169.254
included), shared, reserved and multicast addresses are refused unless one of
``BARGE_WEBHOOK_ALLOWED_NETWORKS`` holds them. Checked at create and again at each send, after
DNS (the send connects to the very address checked).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import SplitResult, urlsplit

from barge.errors import Conflict, InvalidSpec, NotFound, excerpt
from barge.settings import Settings
from db import repositories as repo
from db.base import utcnow
from db.models import WebhookDelivery, WebhookEndpoint
from db.outbox import EVENT_TYPES
from services import audit
from services.context import ServiceContext

SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048
MAX_DELIVERIES = 100  # listed per page
ENDPOINT_ID = re.compile(r"whep_[0-9a-f]{24}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(InvalidSpec):
    """The webhook's target is refused."""

    code = "webhook_target_refused"


@dataclass(frozen=True)
class Target:
    """A checked target: its parts, and the addresses its host resolved to (all allowed)."""

    url: SplitResult
    host: str
    port: int
    addresses: tuple[str, ...]


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}`` keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    message = f"{webhook_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def secrets_in_use(endpoint: WebhookEndpoint) -> tuple[str, ...]:
    """The secrets a delivery is signed with now: the current one, and the previous one while
    its grace after a rotation lasts."""
    until = endpoint.previous_secret_until
    if endpoint.previous_secret and until is not None and until > utcnow():
        return (endpoint.secret, endpoint.previous_secret)
    return (endpoint.secret,)


def signature_header(used: tuple[str, ...], webhook_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: one signature per secret in use, space-separated."""
    return " ".join(sign(s, webhook_id, timestamp, body) for s in used)


def address_problem(address: str, settings: Settings) -> str | None:
    """Why a target may not be sent to at ``address`` (None: it may)."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for cidr in settings.webhook_allowed_networks:
        network = ipaddress.ip_network(cidr, strict=False)
        if ip.version == network.version and ip in network:
            return None
    if ip.is_global and not ip.is_multicast:
        return None
    kind = (
        "loopback"
        if ip.is_loopback
        else "link-local (cloud metadata lives there)"
        if ip.is_link_local
        else "private"
        if ip.is_private
        else "not a public"
    )
    return (
        f"{address} is a {kind} address; webhooks go to public addresses only "
        "(an operator may allow a network with BARGE_WEBHOOK_ALLOWED_NETWORKS)"
    )


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a literal address: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_target(url: str, settings: Settings, field: str = "url") -> Target:
    """The target ``url`` checked: its form, then every address it resolves to now."""
    parts = _parse(url, field)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError, ValueError):  # no such name; a name no resolver takes
        raise TargetRefused(
            f"{field}: the host {excerpt(host)} does not resolve", field=field
        ) from None
    for address in addresses:
        problem = address_problem(address, settings)
        if problem:
            raise TargetRefused(f"{field}: {host} resolves to {problem}", field=field)
    return Target(parts, host, port, tuple(addresses))


def _parse(url: str, field: str) -> SplitResult:
    if len(url) > MAX_URL_CHARS or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidSpec(
            f"{field} must be a URL of at most {MAX_URL_CHARS} characters, without spaces",
            field=field,
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise InvalidSpec(f"{field}: not a URL ({exc})", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSpec(
            f"{field} must be an http:// or https:// URL with a host, got {excerpt(url)}",
            field=field,
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidSpec(f"{field} must not carry user info (user:password@)", field=field)
    return parts


def check_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e not in EVENT_TYPES]
    if not events or unknown:
        raise InvalidSpec(
            f"events must name at least one of {', '.join(EVENT_TYPES)}"
            + (f"; unknown: {excerpt(unknown[0])}" if unknown else ""),
            field="events",
        )
    return sorted(set(events), key=EVENT_TYPES.index)


@dataclass(frozen=True)
class CreateWebhook:
    url: str
    events: list[str]


def create(ctx: ServiceContext, command: CreateWebhook) -> WebhookEndpoint:
    """A new endpoint of the context's tenant; its ``secret`` is shown to the caller only now."""
    events = check_events(command.events)
    check_target(command.url, ctx.settings)
    tenant = ctx.tenant
    repo.lock_tenant(
        ctx.session, repo.WEBHOOKS_LOCK, tenant.id
    )  # the count below holds against concurrent adds
    limit = ctx.settings.webhook_max_endpoints
    if repo.webhook_endpoint_count(ctx.session, tenant.id) >= limit:
        raise Conflict(
            f"the tenant has {limit} webhook endpoints (BARGE_WEBHOOK_MAX_ENDPOINTS); "
            "delete one first",
            field="url",
        )
    endpoint = repo.add_webhook_endpoint(
        ctx.session,
        WebhookEndpoint(
            id=f"whep_{secrets.token_hex(12)}",
            tenant_id=tenant.id,
            url=command.url,
            events=events,
            secret=new_secret(),
            created_at=utcnow(),
        ),
    )
    audit.record(ctx, "webhook.create", f"webhook:{endpoint.id}", url=endpoint.url, events=events)
    return endpoint


def get(ctx: ServiceContext, endpoint_id: str, lock: bool = False) -> WebhookEndpoint:
    found = (
        repo.webhook_endpoint(ctx.session, ctx.tenant.id, endpoint_id, lock)
        if ENDPOINT_ID.fullmatch(endpoint_id)
        else None  # no endpoint has such an id: no query (a NUL never reaches the database)
    )
    if found is None:
        raise NotFound(f"no such webhook endpoint: {excerpt(endpoint_id)}", field="webhook_id")
    return found


def endpoints(ctx: ServiceContext) -> list[WebhookEndpoint]:
    return repo.webhook_endpoints(ctx.session, ctx.tenant.id)


def delete(ctx: ServiceContext, endpoint_id: str) -> None:
    """The endpoint goes, with its deliveries (those pending are never sent)."""
    endpoint = get(ctx, endpoint_id, lock=True)
    repo.remove_webhook_endpoint(ctx.session, endpoint)
    audit.record(ctx, "webhook.delete", f"webhook:{endpoint_id}", url=endpoint.url)


def rotate(ctx: ServiceContext, endpoint_id: str) -> WebhookEndpoint:
    """A new secret (shown only now); the old one signs too for BARGE_WEBHOOK_SECRET_GRACE_HOURS."""
    endpoint = get(ctx, endpoint_id, lock=True)
    now = utcnow()
    grace = timedelta(hours=ctx.settings.webhook_secret_grace_hours)
    endpoint.previous_secret = endpoint.secret if grace else None
    endpoint.previous_secret_until = now + grace if grace else None
    endpoint.secret = new_secret()
    endpoint.rotated_at = now
    ctx.session.flush()
    audit.record(
        ctx,
        "webhook.rotate",
        f"webhook:{endpoint.id}",
        previous_valid_until=endpoint.previous_secret_until,
    )
    return endpoint


def deliveries(
    ctx: ServiceContext,
    endpoint_id: str,
    limit: int = MAX_DELIVERIES,
    event_type: str | None = None,
) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first, with their attempts."""
    endpoint = get(ctx, endpoint_id)
    if event_type is not None and event_type not in EVENT_TYPES:
        raise InvalidSpec(f"type: unknown event type {excerpt(event_type)}", field="type")
    return repo.webhook_deliveries(ctx.session, endpoint.id, limit, event_type)


def backoff(settings: Settings, attempts: int) -> timedelta:
    """How long after failed attempt number ``attempts`` the next one is due."""
    seconds = settings.webhook_retry_base_seconds * 2 ** min(max(attempts - 1, 0), 30)
    return timedelta(seconds=min(seconds, settings.webhook_retry_max_seconds))


def gives_up(settings: Settings, created_at: datetime, next_at: datetime) -> bool:
    """Whether a delivery due again at ``next_at`` is past its retry window."""
    return next_at - created_at > timedelta(hours=settings.webhook_retry_hours)
