"""Check that the services the test suite needs are reachable; say how to start any that are not."""

from __future__ import annotations

import os
import sys

PG = os.environ.get(
    "BARGE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
AMQP = os.environ.get("BARGE_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def check_postgres() -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(PG, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return (
            f"PostgreSQL is not reachable at {PG.split('@')[-1]} ({type(exc).__name__}).\n"
            "  start it:  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "  or:        docker compose up -d postgres   (then set BARGE_TEST_DATABASE_URL)"
        )
    return None


def check_rabbitmq() -> str | None:
    from kombu import Connection

    try:
        with Connection(AMQP, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return (
            f"RabbitMQ is not reachable at {AMQP.split('@')[-1]} ({type(exc).__name__}).\n"
            "  start it:  rabbitmq-server -detached\n"
            "  or:        docker compose up -d rabbitmq   (then set BARGE_TEST_BROKER_URL)"
        )
    return None


def main() -> int:
    problems = [p for p in (check_postgres(), check_rabbitmq()) if p]
    if problems:
        print("The test suite needs these services:\n", file=sys.stderr)
        print("\n\n".join(problems), file=sys.stderr)
        return 1
    print("services: PostgreSQL and RabbitMQ are reachable (the S3 server is started by the tests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
