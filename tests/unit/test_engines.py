"""One engine per database URL per process, however many threads ask for it first at once (a
threads pool of simulated workers made one engine, and one pool of connections, per thread),
its pool sized by the settings."""

from __future__ import annotations

import threading
from pathlib import Path

from db.session import dispose_engines, get_engine, make_engine


def test_threads_asking_at_once_share_one_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    start = threading.Barrier(32)
    found: list[object] = []
    lock = threading.Lock()

    def ask() -> None:
        start.wait()
        engine = get_engine(url)
        with lock:
            found.append(engine)

    threads = [threading.Thread(target=ask) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(found) == 32
        assert len({id(engine) for engine in found}) == 1
    finally:
        dispose_engines()


def test_the_pool_is_sized_as_asked() -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", 3, 2)
    assert engine.pool.size() == 3  # type: ignore[attr-defined]
