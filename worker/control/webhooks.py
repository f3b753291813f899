"""Sending webhooks (run by the scheduler every ``BARGE_WEBHOOK_SEND_SECONDS``): the due
deliveries of the outbox are claimed (each attempt counted, the row held for a while so a
sender that dies leaves it to the next pass), then sent outside any transaction, and each
answer noted: a 2xx delivers; anything else is tried again with exponential back-off until
``BARGE_WEBHOOK_RETRY_HOURS`` after the event, then the delivery is ``failed``. Settled
deliveries older than ``BARGE_WEBHOOK_RETENTION_DAYS`` are pruned on the way.

Each send checks its target again after DNS and connects to the very address it checked (no
rebinding between check and connect), with a short timeout; redirects are never followed (a
3xx is a failed attempt) and only an excerpt of the answer is read and kept. A watchdog
cuts an exchange that outlives the timeout as a whole (an answer trickled byte by byte too).

Imports: ``barge``, ``db``, ``services.webhooks``, ``worker.context``; never ``api`` or
``cli``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from barge import __version__
from barge.errors import BargeError, describe
from db import repositories as repo
from db.base import utcnow
from db.models import WebhookDelivery, WebhookEndpoint
from db.outbox import DELIVERED, GAVE_UP, PENDING
from services import webhooks
from worker.context import WorkerContext

log = logging.getLogger(__name__)

EXCERPT_BYTES = 512  # of an answer's body, read and kept
SENDERS = 8  # deliveries sent at once


@dataclass(frozen=True)
class Claimed:
    """A claimed delivery and what sending it needs, read before the claim committed."""

    id: str
    attempt: int
    body: str
    url: str
    secrets: tuple[str, ...]  # what it is signed with
    created_at: datetime


def send_due(ctx: WorkerContext, limit: int = 100) -> int:
    """Send the due deliveries; how many were attempted."""
    settings = ctx.settings
    # A send ends within the timeout (a watchdog cuts it there): a claimed row is not due again
    # before twice that and a margin, so only a sender that died leaves it to another.
    hold = timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
    now = utcnow()
    with ctx.session() as session:
        rows = repo.take_due_deliveries(session, now, limit, hold)
        claimed = [_claimed(d, e) for d, e in rows]
        retention = timedelta(days=settings.webhook_retention_days)
        repo.prune_deliveries(session, now - retention, limit)
    if not claimed:
        return 0
    with ThreadPoolExecutor(max_workers=min(SENDERS, len(claimed))) as pool:
        outcomes = list(pool.map(lambda c: _attempt(ctx, c), claimed))
    with ctx.session() as session:
        for item, outcome in zip(claimed, outcomes, strict=True):
            _note(ctx, session, item, outcome)
    log.info("webhooks: %d attempted", len(claimed))
    return len(claimed)


def _claimed(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> Claimed:
    return Claimed(
        delivery.id,
        delivery.attempts,
        delivery.body,
        endpoint.url,
        webhooks.secrets_in_use(endpoint),
        delivery.created_at,
    )


def _attempt(ctx: WorkerContext, item: Claimed) -> dict[str, Any]:
    """One attempt: ``{at, status_code, response, error, ms}`` (``status_code`` None when no
    answer came)."""
    started = time.monotonic()
    outcome: dict[str, Any] = {"at": utcnow().isoformat(), "status_code": None}
    try:
        code, excerpt = post(ctx, item)
        outcome["status_code"], outcome["response"] = code, excerpt
        if not 200 <= code < 300:
            outcome["error"] = f"answered {code}" + (
                " (redirects are not followed)" if 300 <= code < 400 else ""
            )
    except BargeError as exc:  # the target refused by its check
        outcome["error"] = exc.message
    except (OSError, http.client.HTTPException, ValueError) as exc:
        outcome["error"] = describe(exc, 300)
    outcome["ms"] = round((time.monotonic() - started) * 1000)
    return outcome


def post(ctx: WorkerContext, item: Claimed) -> tuple[int, str]:
    """POST the delivery, signed, to an address its target's check allowed now; the status
    code and an excerpt of the answer."""
    settings = ctx.settings
    target = webhooks.check_target(item.url, settings)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Barge-Webhooks/{__version__}",
        "webhook-id": item.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.signature_header(item.secrets, item.id, timestamp, item.body),
    }
    timeout = settings.webhook_timeout_seconds
    conn = _connection(target, timeout)
    watchdog = threading.Timer(timeout, _cut, (conn,))  # the whole exchange, not each read
    watchdog.start()
    try:
        path = target.url.path or "/"
        if target.url.query:
            path += "?" + target.url.query
        conn.request("POST", path, body=item.body.encode(), headers=headers)
        answer = conn.getresponse()
        data = answer.read(EXCERPT_BYTES)
        return answer.status, data.decode("utf-8", "replace")
    finally:
        watchdog.cancel()
        conn.close()


def _cut(conn: http.client.HTTPConnection) -> None:
    """End a send that outlived its timeout: its blocked read returns at once."""
    if conn.sock is not None:
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTP(http.client.HTTPConnection):
    """Plain HTTP to the checked address, with the target's Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked address, verifying the certificate against the target's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _connection(target: webhooks.Target, timeout: float) -> http.client.HTTPConnection:
    kind = _PinnedHTTPS if target.url.scheme == "https" else _PinnedHTTP
    return kind(target.host, target.port, target.addresses[0], timeout)


def _note(ctx: WorkerContext, session: Any, item: Claimed, outcome: dict[str, Any]) -> None:
    settings, now = ctx.settings, utcnow()
    code = outcome["status_code"]
    if code is not None and 200 <= code < 300:
        status, next_at = DELIVERED, now
    else:
        next_at = now + webhooks.backoff(settings, item.attempt)
        status = GAVE_UP if webhooks.gives_up(settings, item.created_at, next_at) else PENDING
    repo.record_delivery_attempt(session, item.id, item.attempt, outcome, status, now, next_at)
