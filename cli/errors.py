"""The errors of the ``barge`` command and the exit status of each: the one place that maps
them. ``cli.main`` prints an error as ``barge: <message>`` (never a traceback) and exits with
``exit_code(error)``.

=======  =====================================================================================
status   meaning
=======  =====================================================================================
0        done
1        the job ended but did not succeed (``wait``, ``submit --wait``)
2        usage: an unknown option or a bad argument (argparse's own status), a spec file that
         cannot be read, an id that matches no job, a profile that does not exist, bad settings
3        refused: the API answered 4xx (a bad or missing key, no such job, an invalid spec, a
         quota)
4        server error: the API answered 5xx
5        unreachable: no answer from the API at its URL (nothing listening, a name that does not
         resolve, a timeout)
130      interrupted (Ctrl-C)
141      whoever read the output went away (``barge list | head -1``)
=======  =====================================================================================

Imports: nothing of ours.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_SERVER = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

# Each status with what it means, in the order of ``barge --help``'s list.
EXIT_CODES = (
    (EXIT_OK, "done"),
    (EXIT_JOB_FAILED, "the job ended but did not succeed (wait, submit --wait)"),
    (EXIT_USAGE, "usage: a bad option, argument, spec file, job id, profile or setting"),
    (EXIT_REFUSED, "refused: the API answered 4xx (key, not found, invalid spec, quota)"),
    (EXIT_SERVER, "server error: the API answered 5xx"),
    (EXIT_UNREACHABLE, "unreachable: no answer from the API at its URL"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)

# The most of an error body that is shown when it is not the API's own JSON error.
_BODY_CHARS = 300


class CliError(Exception):
    """What is wrong and where in what the user gave, in words for the person at the terminal."""

    exit_code = EXIT_USAGE


def _message(body: Any) -> str:
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body
        if isinstance(message, dict | list):
            return str(message)[:_BODY_CHARS]
        return str(message)
    text = str(body).strip()
    return text[:_BODY_CHARS] + ("..." if len(text) > _BODY_CHARS else "") or "(no body)"


class ApiError(Exception):
    """The API answered with an error status: 4xx (refused) or 5xx (a server error)."""

    def __init__(self, status: int, body: Any, message: str | None = None):
        self.status = status
        self.body = body
        if message is None:
            kind = "refused" if 400 <= status < 500 else "server error"
            message = f"{kind}: {_message(body)} (HTTP {status})"
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if 400 <= self.status < 500 else EXIT_SERVER


class Unreachable(ApiError):
    """No answer from the API at ``url``: nothing listens there, the name does not resolve, or it
    did not answer in time. An ``ApiError`` with status 0, so that one ``except`` covers both."""

    def __init__(self, url: str, reason: str):
        self.url = url
        super().__init__(
            0,
            reason,
            f"cannot reach the API at {url} ({reason}); is it running? (`barge up`), or point "
            "barge at it: BARGE_API_URL, --api-url or `barge login --api-url URL`",
        )

    @property
    def exit_code(self) -> int:
        return EXIT_UNREACHABLE


def exit_code(exc: BaseException) -> int:
    """The exit status for an error a command raised (see the table above)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    return int(getattr(exc, "exit_code", EXIT_USAGE))
