"""Engines and session scopes. Only the boundaries (a request, a task) commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from barge.settings import get_settings
from db.migrate import check_schema

_engines: dict[str, Engine] = {}
# Many threads may ask for an engine first at once (a threads pool, the API's threadpool):
# without the lock each could make its own, each with a pool of connections of its own.
_engines_lock = threading.Lock()
_current_schema: set[str] = set()  # the URLs whose schema was found current: checked once


def make_engine(
    url: str, pool_size: int = 5, max_overflow: int = 5, prepared_statements: bool = True
) -> Engine:
    """An engine on ``url``. ``prepared_statements=False`` turns off psycopg's server-side
    prepared statements (``prepare_threshold=None``): a pooler in transaction mode (PgBouncer
    before 1.21, or without ``max_prepared_statements``) hands each transaction a different
    server connection, where a statement prepared on another does not exist. Nothing else
    of a session outlives its transaction: no ``SET``, advisory locks only per transaction
    (``pg_advisory_xact_lock``), no ``LISTEN``, no temporary tables."""
    # hide_parameters: a logged database error never shows values (a key's hash, a user's text).
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True, "hide_parameters": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800)
        if not prepared_statements and url.startswith("postgresql+psycopg"):
            kwargs["connect_args"] = {"prepare_threshold": None}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def get_engine(url: str) -> Engine:
    """One engine per URL per process (create it after fork, never in a prefork parent), its
    pool as the settings size it (``BARGE_DATABASE_POOL_SIZE``, ``..._MAX_OVERFLOW``,
    ``..._PREPARED_STATEMENTS``)."""
    engine = _engines.get(url)
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            settings = get_settings()
            engine = _engines[url] = make_engine(
                url,
                settings.database_pool_size,
                settings.database_max_overflow,
                settings.database_prepared_statements,
            )
    return engine


def require_current_schema(url: str) -> None:
    """Raise ``db.migrate.SchemaNotCurrent`` (a 503, and ``barge: ...`` exit 2 in the CLI)
    unless the database at ``url`` is at the migrations' head; once it is, never asked again."""
    if url in _current_schema:
        return
    with get_engine(url).connect() as conn:
        check_schema(conn)
    _current_schema.add(url)


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(url: str) -> sessionmaker[Session]:
    """Sessions on ``url``, once its schema is current (every unit of work starts here)."""
    require_current_schema(url)
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on error, always closes."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> None:
    """Raise unless the database answers a trivial query."""
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))
