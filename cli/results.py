"""``barge results`` and ``barge errors``: a job's outputs and its failed records, read through
the API (``GET /v1/jobs/{id}/files``), so no S3 client or S3 credentials are needed.

- ``results JOB``: the job's parts, errors files and manifest into ``--dir`` (``./JOB-ID/``),
  each written whole under a temporary name first; ``--all`` adds the rest (``_SUCCESS``, a
  fine-tune's model and checkpoints). ``--stdout``: the parts, in input order, one after the
  other (JSON Lines; Parquet parts are refused there).
- ``errors JOB``: the failed records' lines (``{"id", "source", "line", "error"}``) as JSON
  Lines, in input order; ``-q`` prints only their ids (``-`` for a record with none: a line
  that was not JSON).

A file name from the API becomes a local path only through ``barge.paths.local_path``.

Imports: ``cli.client``, ``cli.commands``, ``cli.errors``, the kernel (``barge.paths``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from barge.paths import UnsafePath, local_path
from barge.status import FINAL
from cli.client import Client
from cli.commands import connect, resolve_job_id
from cli.errors import CliError

PART, ERRORS, MANIFEST = "part", "errors", "manifest"
RESULT_KINDS = (PART, ERRORS, MANIFEST)


def _job_files(client: Client, given: str) -> tuple[str, dict[str, Any]]:
    """The job's full id and its file list; a note on stderr while it has not ended."""
    job_id = resolve_job_id(client, given)
    job = client.job(job_id)
    if job["status"] not in FINAL:
        print(
            f"note: job {job_id} is {job['status']}: only the parts written so far are there",
            file=sys.stderr,
        )
    return job_id, client.files(job_id)


def _copy(client: Client, job_id: str, name: str, out: IO[bytes]) -> int:
    written = 0
    with client.file(job_id, name) as chunks:
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
    return written


def download(client: Client, job_id: str, names: Iterable[str], root: Path) -> tuple[int, int]:
    """Each file into ``root`` at its name, written under a temporary name and renamed once
    whole; (files, bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    files = total = 0
    for name in names:
        try:
            path = local_path(root, name)
        except UnsafePath as exc:  # only an API that is not Barge's would name such a file
            raise CliError(f"not written: {exc.message}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                total += _copy(client, job_id, name, out)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        files += 1
    return files, total


def cmd_results(args: argparse.Namespace) -> int:
    client = connect(args)
    job_id, listing = _job_files(client, args.id)
    files = listing["files"]
    if args.stdout:
        parts = [f["name"] for f in files if f["kind"] == PART]
        if any(not name.endswith(".jsonl") for name in parts):
            raise CliError(
                "the parts are Parquet files, which do not make one stream; download them "
                "with --dir DIR"
            )
        out = sys.stdout.buffer
        sys.stdout.flush()
        for name in parts:
            _copy(client, job_id, name, out)
        out.flush()
        return 0
    wanted = [f["name"] for f in files if args.all or f["kind"] in RESULT_KINDS]
    root = Path(args.dir) if args.dir else Path(job_id)
    count, size = download(client, job_id, wanted, root)
    print(f"{count} files ({size} bytes) of {listing['output']} in {root}/", file=sys.stderr)
    return 0


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a stream of chunks, each with its newline (the last one given one)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line + b"\n"
    if rest:
        yield rest + b"\n"


def _error_id(line: bytes) -> str:
    """The failed record's id; ``-`` for a record that has none (a line that was not JSON)."""
    try:
        row = json.loads(line)
    except ValueError:
        return "-"
    value = row.get("id") if isinstance(row, dict) else None
    return "-" if value is None else str(value)


def cmd_errors(args: argparse.Namespace) -> int:
    client = connect(args)
    job_id, listing = _job_files(client, args.id)
    names = [f["name"] for f in listing["files"] if f["kind"] == ERRORS]
    out = sys.stdout.buffer
    sys.stdout.flush()
    shown = 0
    for name in names:
        with client.file(job_id, name) as chunks:
            for line in _lines(chunks):
                if args.limit is not None and shown >= args.limit:
                    out.flush()
                    return 0
                out.write(f"{_error_id(line)}\n".encode() if args.ids_only else line)
                shown += 1
    out.flush()
    if not names:
        print(f"job {job_id} has no failed records", file=sys.stderr)
    return 0
