"""This process's cold start: the seconds it spent importing a kind's run step the first time
(``worker.kinds.Runs``) and fetching and loading models or engines (a model cache call that
loaded something, a vLLM engine built), summed. ``worker.usage`` reads the sum at an attempt's
start and end: the difference is the attempt's ``load_seconds``, which its throughput leaves
out.

Imports: nothing of ours (the control worker's registry of kinds imports it: no torch).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_seconds = [0.0]


def seconds() -> float:
    """The cold-start seconds of this process so far."""
    return _seconds[0]


def note(spent: float) -> None:
    """Add ``spent`` seconds of cold start."""
    with _lock:
        _seconds[0] += max(0.0, spent)
