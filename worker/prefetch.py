"""Reading ahead on a background thread, so that the store's I/O and decoding overlap the model:
used by the inference, ONNX-columns and OpenAI-batch runners.

Imports: the standard library only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def prefetch(it: Iterator[T], size: int, name: str = "barge-prefetch") -> Iterator[T]:
    """``it``'s items, read up to ``size`` ahead on a daemon thread; an exception of the reader
    is raised here, in order. Closing the iterator early stops the reader."""
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    threading.Thread(target=pump, daemon=True, name=name).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()
