"""Behind PgBouncer in transaction mode a server connection serves many clients' transactions,
so nothing of a session may outlive its transaction. psycopg prepares a statement on the server
after it ran a few times; ``BARGE_DATABASE_PREPARED_STATEMENTS=false`` turns that off, seen
here in ``pg_prepared_statements`` on real Postgres."""

from __future__ import annotations

from sqlalchemy import text

from db.session import make_engine


def prepared_after_repeats(url: str, prepared_statements: bool) -> int:
    engine = make_engine(url, pool_size=1, max_overflow=0, prepared_statements=prepared_statements)
    try:
        with engine.connect() as conn:
            for n in range(10):  # psycopg prepares after 5 runs of the same statement
                conn.execute(text("SELECT count(*) FROM jobs WHERE records_total > :n"), {"n": n})
            return int(
                conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()
            )
    finally:
        engine.dispose()


def test_prepared_statements_can_be_turned_off(database_url: str) -> None:
    assert prepared_after_repeats(database_url, prepared_statements=True) > 0
    assert prepared_after_repeats(database_url, prepared_statements=False) == 0
