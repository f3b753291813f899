"""A job's files as its tenant reads them through the API (``barge results``, ``barge errors``):
every object under the job's output prefix, named relative to it.

A file's kind comes from its name, as the worker writes them: ``part`` (``part-00007.jsonl`` or
``.parquet``, one per shard, in input order by name), ``errors`` (``errors/part-00007.jsonl``,
a fine-tune's ``errors/train.jsonl``), ``manifest`` (``_manifest.json``), ``other``
(``_SUCCESS``, a fine-tune's model and checkpoints, ...). Every job has an output prefix of its
own (``services.locations``), so what lies under it is the job's.

The tenant must still be allowed to read the prefix (``services.scopes``, checked on each
request, as its scopes are now); a name is read only below the prefix (no empty, ``.`` or ``..``
segment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from barge.errors import InvalidSpec, NotFound, excerpt
from barge.storage import ObjectInfo, S3Uri, iter_prefix_files
from barge.uris import key_problem
from db.models import Job
from services import jobs, scopes
from services.context import ServiceContext

PART = "part"
ERRORS = "errors"
MANIFEST = "manifest"
OTHER = "other"
KINDS = (PART, ERRORS, MANIFEST, OTHER)

_PART_NAME = re.compile(r"part-\d+\.(jsonl|parquet)")
_ORDER = {kind: i for i, kind in enumerate(KINDS)}


@dataclass(frozen=True)
class JobFile:
    name: str  # relative to the job's output prefix
    kind: str
    size: int


def kind_of(name: str) -> str:
    if _PART_NAME.fullmatch(name):
        return PART
    if name.startswith("errors/") and name.endswith(".jsonl"):
        return ERRORS
    if name == "_manifest.json":
        return MANIFEST
    return OTHER


def output_prefix(ctx: ServiceContext, job: Job) -> S3Uri:
    """The job's output prefix, once its tenant's scopes (as they are now) let it read there."""
    tenant_scopes = scopes.scopes_for(ctx.session, ctx.settings, job.tenant_id)
    scopes.require_read(tenant_scopes, job.output_uri, "output")
    return jobs.output_prefix(job)


def list_files(ctx: ServiceContext, job: Job) -> list[JobFile]:
    """Every file of the job: its parts, then its errors files, its manifest, the rest; each
    group by name (so parts and errors files come in input order)."""
    prefix = output_prefix(ctx, job)
    found = [
        JobFile(name, kind_of(name), info.size)
        for info, name in iter_prefix_files(ctx.store, prefix)
        if name and not name.endswith("/")
    ]
    return sorted(found, key=lambda f: (_ORDER[f.kind], f.name))


def find_file(ctx: ServiceContext, job: Job, name: str) -> ObjectInfo:
    """The object of the job's file ``name``: InvalidSpec for a name that would leave the
    output prefix, NotFound for one that is not there."""
    problem = key_problem(name) if name else "it is empty"
    if problem is None and name.endswith("/"):
        problem = "it names a folder, not a file"
    if problem is not None:
        raise InvalidSpec(f"file name {excerpt(name)}: {problem}", field="name")
    info = ctx.store.head(output_prefix(ctx, job).join(name))
    if info is None:
        raise NotFound(
            f"job {job.id} has no file {excerpt(name)} (GET /v1/jobs/{job.id}/files lists them)"
        )
    return info
