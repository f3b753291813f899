"""Drop folders: every new object under ``<prefix>incoming/`` becomes exactly one job.

The scheduler sends ``scan_drops`` every few seconds (from every scheduler that runs). A scan
claims each new object by inserting its (rule, key, ETag) row; the unique constraint makes sure
exactly one scan, and so exactly one job, wins. When the job ends the input (and its
``<name>.job.json``) moves to ``done/`` or ``failed/`` with ``<name>.status.json`` beside it.
Files Barge cannot read go to ``failed/`` at once, with the reason; a bad file never stops a scan.
A file in a subfolder of ``incoming/`` is taken like any other and named by its path there
(``incoming/2024/05/reviews.csv``: outputs in ``outputs/2024/05/reviews/``, then
``done/2024/05/reviews.csv`` and ``done/2024/05/reviews.status.json``). No file is ignored:
only folder markers (keys ending in ``/``) and ``<name>.job.json`` overrides, which wait for
their data file, stay where they are.
An object whose tenant is at its ``max_active_jobs`` quota is left where it is, unclaimed, for a
later scan to pick up.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from pydantic import ValidationError

from barge.errors import BargeError, NotFound, QuotaExceeded
from barge.storage import ObjectInfo, S3Uri
from barge.uris import key_problem
from db import repositories as repo
from db import state
from db.models import DropObject, DropRule
from services import drops, scopes
from services.context import ServiceContext
from services.drops import OVERRIDE_SUFFIX, drop_name
from services.submission import SubmitJob, submit
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def scan(ctx: WorkerContext) -> dict[str, int]:
    """One pass over every enabled rule: pick up new objects, settle finished ones."""
    with ctx.session() as session:
        rules = repo.enabled_drop_rules(session)
    counts = {"submitted": 0, "rejected": 0, "deferred": 0, "settled": 0}
    for rule in rules:
        if not _in_scope(ctx, rule):
            continue
        try:
            for outcome in _pick_up(ctx, rule):
                counts[outcome] += 1
            counts["settled"] += _settle(ctx, rule)
        except Exception:  # one rule's trouble (a missing bucket) never stops the others
            log.exception("drop folder %s (%s) could not be scanned", rule.name, rule.prefix)
    return counts


def _in_scope(ctx: WorkerContext, rule: DropRule) -> bool:
    """A rule is scanned only while its prefix lies inside its tenant's write scopes as they
    are now (an edited row or narrowed scopes never widen what a scan touches)."""
    with ctx.session() as session:
        allowed = scopes.scopes_for(session, ctx.settings, rule.tenant_id).may_write(rule.prefix)
    if not allowed:
        log.warning(
            "drop folder %s of tenant %s is outside the tenant's write scopes; not scanned",
            rule.name,
            rule.tenant_id,
        )
    return allowed


def _pick_up(ctx: WorkerContext, rule: DropRule) -> list[str]:
    incoming = S3Uri.parse(rule.prefix).join("incoming/")
    objects = ctx.store.list(incoming)
    overrides = {
        o.uri.key[len(incoming.key) : -len(OVERRIDE_SUFFIX)]: o
        for o in objects
        if o.uri.key.endswith(OVERRIDE_SUFFIX)
    }
    outcomes = []
    for info in objects:
        relative = info.uri.key[len(incoming.key) :]  # 2024/05/reviews.csv in a subfolder
        if not relative or relative.endswith("/") or relative.endswith(OVERRIDE_SUFFIX):
            continue  # a folder marker, or an override read with its data file
        try:
            outcome = _take(ctx, rule, info, relative, overrides.get(drop_name(relative)))
        except QuotaExceeded as exc:  # nothing kept: the rest waits in incoming/ for a later scan
            log.info("drop %s: %s waits: %s", rule.name, info.uri, exc.message)
            outcomes.append("deferred")
            break
        except Exception:
            log.exception("drop %s: could not pick up %s", rule.name, info.uri)
            continue
        if outcome:
            outcomes.append(outcome)
    return outcomes


def _take(
    ctx: WorkerContext,
    rule: DropRule,
    info: ObjectInfo,
    relative: str,
    override: ObjectInfo | None,
) -> str | None:
    name = drop_name(safe_path(relative))
    with ctx.unit_of_work() as uow:
        session = uow.session
        drop = DropObject(
            id=uuid.uuid4(), rule_id=rule.id, key=info.uri.key, etag=info.etag, name=name
        )
        if not repo.add_drop_object(session, drop):
            return None  # seen before, by this scan or another scheduler's
        try:
            spec = drops.spec_for_object(session, ctx.store, rule, info, override, relative)
            job, _ = submit(  # plan_job is sent after the commit
                ServiceContext.for_worker(uow, ctx.settings, ctx.store, rule.tenant_id),
                SubmitJob(spec, f"drop:{rule.id}:{info.uri.key}:{info.etag}"[:200]),
            )
        except QuotaExceeded:
            raise  # rolls the claim back: the object stays new
        except (BargeError, ValidationError, ValueError) as exc:
            drop.status = "failed"
            drop.error = _reason(exc)
            session.flush()
            job_id = None
        else:
            drop.job_id = job.id
            job_id = job.id
    if job_id is None:
        _move(ctx, rule, drop, "failed", {"status": "rejected", "error": drop.error})
        return "rejected"
    return "submitted"


def safe_path(relative: str) -> str:
    """``relative`` as a path under done/ or failed/: itself when it is a usable key, else its
    usable segments joined with ``_`` (a key with ``..`` or ``//`` in it is rejected, and its
    status file must still land inside the drop folder)."""
    if key_problem(relative) is None:
        return relative
    parts = [p for p in relative.split("/") if p not in ("", ".", "..")]
    flat = "_".join(parts)
    return "".join(c if c.isprintable() else "_" for c in flat) or "unnamed"


def _reason(exc: Exception) -> str:
    if isinstance(exc, BargeError):
        return exc.message
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _settle(ctx: WorkerContext, rule: DropRule) -> int:
    """Move the inputs of finished jobs to done/ or failed/ with their status files."""
    with ctx.session() as session:
        rows = repo.finished_drops(session, rule.id)
    settled = 0
    for drop, job in rows:
        target = "done" if job.status == state.SUCCEEDED else "failed"
        manifest = job.manifest or {}
        _move(
            ctx,
            rule,
            drop,
            target,
            {
                "job_id": str(job.id),
                "status": job.status,
                "records": manifest.get("records"),
                "error": job.error,
                "output": job.output_uri,
            },
        )
        with ctx.session() as session:
            settled += repo.settle_drop(session, drop.id, target)
    return settled


def _move(
    ctx: WorkerContext, rule: DropRule, drop: DropObject, folder: str, status: dict[str, Any]
) -> None:
    """Copy the input (and its override) to ``folder``/, delete the originals, then write the
    status file last: whoever sees it sees the move complete (``incoming/`` emptied of them).
    Idempotent: a second scan finishing the same move finds the sources gone (their copies
    made already) and writes the status file."""
    prefix = S3Uri.parse(rule.prefix)
    source = S3Uri(prefix.bucket, drop.key)
    relative = safe_path(drop.key[len(prefix.join("incoming/").key) :])
    dest = prefix.join(f"{folder}/{relative}")
    body = {
        "name": drop.name,
        "input": str(source),
        "moved_to": str(dest),
        "job_id": None,
        **status,
    }
    override = prefix.join(f"incoming/{drop.name}{OVERRIDE_SUFFIX}")
    for src, dst in (
        (source, dest),
        (override, prefix.join(f"{folder}/{drop.name}{OVERRIDE_SUFFIX}")),
    ):
        try:
            if ctx.store.head(src) is not None:
                ctx.store.copy(src, dst)
        except NotFound:
            pass
    ctx.store.delete(source)
    ctx.store.delete(override)
    ctx.store.put_bytes(
        prefix.join(f"{folder}/{drop.name}.status.json"),
        json.dumps(body, indent=2, default=str).encode() + b"\n",
    )
