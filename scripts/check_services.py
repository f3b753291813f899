"""Check that the services the test suite needs are reachable, and that headless Chromium and its
driver are installed (the console's browser tests); say how to start or install what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
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


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def check_chromium() -> str | None:
    """Debian's chromium and chromedriver, of one version (tests/e2e/test_console.py drives
    them; nothing downloads a browser at run time)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        return (
            f"Headless Chromium is not installed ({', '.join(missing)} missing); the console's "
            "browser tests need it.\n"
            "  install it:  apt-get install -y chromium chromium-driver"
        )
    try:
        version = subprocess.run(
            [CHROMEDRIVER, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()[1]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"{CHROMEDRIVER} does not run ({exc}): apt-get install -y chromium chromium-driver"
    return None if version else f"{CHROMEDRIVER} gave no version"


def main() -> int:
    problems = [p for p in (check_postgres(), check_rabbitmq(), check_chromium()) if p]
    if problems:
        print("The test suite needs these services:\n", file=sys.stderr)
        print("\n\n".join(problems), file=sys.stderr)
        return 1
    print(
        "services: PostgreSQL and RabbitMQ are reachable, Chromium and its driver are installed "
        "(the S3 server is started by the tests)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
