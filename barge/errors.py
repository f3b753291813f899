"""Errors that carry their meaning: an HTTP status and a message that says what to fix."""

from __future__ import annotations

import re
from typing import Any

EXCERPT_CHARS = 80


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was: messages that name
    user input never echo more than this."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}…{size}"


# An absolute local path (not part of an s3:// URI): "/var/cache/barge/models/x/config.json".
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def describe(exc: BaseException, limit: int = 1000) -> str:
    """``Type: message`` of an unexpected exception, fit for a job's error or events: its first
    line only (a database error goes on with SQL and parameters), local paths cut to their
    last part (worker paths stay in the worker's log), no NUL, at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = without_paths(text).replace("\x00", "\\x00")
    return text if len(text) <= limit else text[:limit] + "…"


def without_paths(text: str) -> str:
    """``text`` with each absolute local path cut to its last part (``…/config.json``)."""
    return _LOCAL_PATH.sub(r"…/\1", text)


class BargeError(Exception):
    """Something went wrong."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str | None = None, *, field: str | None = None, **detail: Any):
        self.message = message or (self.__doc__ or self.code).strip()
        self.field = field
        self.detail = detail
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.detail:
            body["detail"] = self.detail
        return body

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the API answers this error with (``Retry-After``, say)."""
        return {}


class InvalidSpec(BargeError):
    """The job spec is invalid."""

    status_code = 422
    code = "invalid_spec"


class NotFound(BargeError):
    """Not found."""

    status_code = 404
    code = "not_found"


class Unauthorized(BargeError):
    """Missing or invalid API key: send `Authorization: Bearer <key>` (create one with `barge keys create`)."""

    status_code = 401
    code = "unauthorized"


class Forbidden(BargeError):
    """Not allowed for this API key."""

    status_code = 403
    code = "forbidden"


class Conflict(BargeError):
    """The request conflicts with the current state."""

    status_code = 409
    code = "conflict"


class QuotaExceeded(BargeError):
    """A quota of the tenant is used up; retry later, or ask an admin to raise it."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int, **detail: Any):
        super().__init__(message, **detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(BargeError):
    """A service Barge depends on is unavailable; retry shortly."""

    status_code = 503
    code = "service_unavailable"


class IllegalTransition(BargeError):
    """A job state transition that the state machine does not allow."""

    status_code = 409
    code = "illegal_transition"


class StorageError(BargeError):
    """The object store refused or failed a request."""

    status_code = 502
    code = "storage_error"


class PermanentJobError(BargeError):
    """A failure that retrying cannot fix (bad model directory, unreadable input): fail the job."""

    status_code = 422
    code = "permanent_error"


def etags_then_now(expected: str, current: str | None) -> str:
    """How an input-changed message names the two ETags: ``ETag "a" then, "b" now``."""
    now = f'"{current}"' if current else "another"
    return f'ETag "{expected}" then, {now} now'


class InputChanged(PermanentJobError):
    """What a job read is not what it was planned from: its ETag changed (``ObjectChanged``,
    ``ListingChanged``). No retry can read what was planned; the job has to be submitted
    again."""

    status_code = 409
    code = "input_changed"

    def __init__(self, message: str, uri: object, expected: str, current: str | None):
        super().__init__(message, uri=str(uri), expected_etag=expected, current_etag=current)
        self.uri = str(uri)
        self.expected = expected
        self.current = current


class ObjectChanged(InputChanged):
    """An input object is no longer the one its job was planned from."""

    def __init__(self, uri: object, expected: str, current: str | None):
        super().__init__(
            f"input object {uri} changed after the job was planned "
            f"({etags_then_now(expected, current)}); resubmit the job to read its new contents",
            uri,
            expected,
            current,
        )


class ListingChanged(InputChanged):
    """Barge's own listing of a job's inputs (a pack listing, an images listing), written under
    the job's output when it was planned, is not the one Barge wrote: it was edited since. Its
    shards read only what planning listed. The same of Barge's ``copy`` of a pack's small
    objects (``barge.records.packs``)."""

    def __init__(
        self, uri: object, expected: str, current: str | None, what: str = "listing"
    ) -> None:
        super().__init__(
            f"{uri} is Barge's {what} of the job's inputs, written when the job was planned, "
            f"and it was edited after planning ({etags_then_now(expected, current)}); Barge "
            f"reads only the {what} it wrote: resubmit the job",
            uri,
            expected,
            current,
        )
