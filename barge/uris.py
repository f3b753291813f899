"""The one rule for a storage URI a user names: checked (and normalised) before any other check.

A user's ``s3://bucket/key`` must have a valid S3 bucket name and a key without empty, ``.`` or
``..`` segments, control characters or unencodable text, so that two spellings can never name the
same place (``s3://b/x/`` and ``s3://b/./x/``) and no backend can be walked out of its root.
"""

from __future__ import annotations

import re

from barge.errors import InvalidSpec, excerpt

SCHEME = "s3://"
MAX_KEY_BYTES = 1024  # S3's limit
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name, or None."""
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        return (
            "the bucket name must be 3-63 characters of lowercase letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit"
        )
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a key Barge accepts from a user, or None (a trailing "/" is fine)."""
    if _CONTROL.search(key):
        return "it contains a control character (such as NUL or a newline)"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "it contains text that is not valid Unicode (a lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"its key is {size} bytes; S3 allows at most {MAX_KEY_BYTES}"
    segments = key.split("/")
    if segments and segments[-1] == "":
        segments = segments[:-1]  # a prefix's trailing slash
    for segment in segments:
        if segment in ("", ".", ".."):
            shown = "an empty segment (//)" if segment == "" else f"a {segment!r} segment"
            return f"its key has {shown}; write the path without it"
    return None


def uri_problem(uri: object) -> str | None:
    """What is wrong with ``uri`` as a location a user names (showing only an excerpt), or
    None."""
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        return f"must be an s3://bucket/key URI, got {excerpt(uri)}"
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    problem = bucket_problem(bucket) or key_problem(key)
    return f"{excerpt(uri)} is not a usable s3://bucket/key URI: {problem}" if problem else None


def normalise(uri: object, field: str, *, prefix: bool = False) -> str:
    """``uri`` checked as a user-named location; with ``prefix``, ending in "/".

    Raises InvalidSpec naming ``field`` and what to fix."""
    problem = uri_problem(uri)
    if problem:
        raise InvalidSpec(f"{field} {problem}", field=field)
    assert isinstance(uri, str)
    return uri + "/" if prefix and not uri.endswith("/") else uri


def contains(outer: str, inner: str) -> bool:
    """Whether location ``inner`` is ``outer`` or lies under it (both normalised; a prefix ends
    in "/", an object does not)."""
    if outer == inner:
        return True
    return outer.endswith("/") and inner.startswith(outer)


def overlap(a: str, b: str) -> bool:
    """Whether two normalised locations share any object."""
    return contains(a, b) or contains(b, a)
