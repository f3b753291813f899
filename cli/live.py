"""What keeps a live view (``barge top``) stoppable: SIGINT and SIGTERM end it at once, with
status 0, wherever they land, and a full or closed pipe on stdout never holds the process.

- The handlers only record the signal: no KeyboardInterrupt is raised in the middle of an HTTP
  request (inside httpx/httpcore, whose clean-up takes locks) or of a write.
- They are installed even where the signal was inherited as ignored: a command started in the
  background by a non-interactive shell (``cmd &``, and whatever it starts, a test run included)
  ignores SIGINT, and Python then installs no KeyboardInterrupt handler at all, so Ctrl-C or
  ``kill -INT`` would never stop the view.
- Slow work (the HTTP requests) runs in a daemon thread while the main thread waits for it or
  for a signal, whichever comes first; on a signal the thread is left behind, so a request that
  hangs does not hold the exit.
- Waits are ``select`` on the signal wakeup fd: a signal ends a wait at once, never lost between
  a check and the wait.
- Writes wait for the output to take the data or for a signal, whichever comes first, and go out
  in pieces a pipe takes without blocking; nothing is left in Python's stdout buffer, so the
  process does not block at exit flushing into a pipe nobody reads.

On a terminal the view is drawn by ``rich.live`` instead (``cli.commands``), from the main thread
between waits; the signals, waits and daemon-thread requests above are the same.

Imports: the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context manager (main thread only): while it is open, SIGINT and SIGTERM set
    ``stopped`` instead of raising or killing; on leaving, the previous handlers come back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1

    def __enter__(self) -> StopSignals:
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_wakeup_fd)
        self._wake_r.close()
        self._wake_w.close()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return at once on a stop signal. True when stopped."""
        if not self.stopped:
            select.select([self._wake_r], [], [], max(0.0, seconds))
            self._drain()
        return self.stopped

    def run(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` in a daemon thread: its result (or its exception), or None as soon as a stop
        signal comes, leaving the thread to finish or time out on its own."""
        outcome: list[tuple[bool, Any]] = []

        def target() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                self._wake()

        threading.Thread(target=target, name="barge-live", daemon=True).start()
        while not outcome:
            if self.stopped:
                return None
            select.select([self._wake_r], [], [])
            self._drain()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def write(self, fd: int, data: bytes) -> bool:
        """Write all of ``data`` to ``fd`` unless a stop signal comes first. False when stopped
        or when the reader has gone (a closed pipe): either way the view should end."""
        view = memoryview(data)
        while view:
            if self.stopped:
                return False
            _, writable, _ = select.select([self._wake_r], [fd], [])
            self._drain()
            if not writable:
                continue
            try:
                # A pipe select calls writable takes PIPE_BUF bytes without blocking.
                written = os.write(fd, view[: select.PIPE_BUF])
            except BrokenPipeError:
                return False
            view = view[written:]
        return True

    def _wake(self) -> None:
        # OSError: full (the main thread wakes anyway) or closed (the main thread has gone).
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(512):
                pass
