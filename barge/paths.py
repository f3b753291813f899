"""The one place a storage key becomes a local file name (model copies, checkpoints, the
embedded object store): no absolute part, no dot segments, no control characters, and the
resolved path stays inside its directory."""

from __future__ import annotations

from pathlib import Path

from barge.errors import InvalidSpec, excerpt
from barge.uris import key_problem

MAX_NAME_BYTES = 255  # one path component, as local filesystems allow


class UnsafePath(InvalidSpec):
    """A storage key that cannot safely become a local path."""

    code = "unsafe_path"


def local_path(root: Path, relative: str) -> Path:
    """The local path for ``relative`` (a key, or a key's part below some prefix) under
    ``root``: the one place where a key taken from storage becomes a file name.

    Refused (``UnsafePath``): an empty key, an absolute part, empty, ``.`` or ``..`` segments,
    control characters, components longer than the filesystem allows, and anything whose
    resolved path (symlinks followed) leaves ``root``."""
    problem = key_problem(relative) if relative else "it is empty"
    if problem is None and relative.endswith("/"):
        problem = "it names a folder, not a file"
    if problem is None and any(
        len(part.encode("utf-8")) > MAX_NAME_BYTES for part in relative.split("/")
    ):
        problem = f"a path component is longer than {MAX_NAME_BYTES} bytes"
    if problem is None:
        base = root.resolve()
        path = (base / relative).resolve()
        if base not in path.parents:
            problem = "it resolves outside its directory"
        else:
            return path
    raise UnsafePath(f"the key {excerpt(relative)} cannot be a local file name: {problem}")


__all__ = ["MAX_NAME_BYTES", "UnsafePath", "local_path"]
