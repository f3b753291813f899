"""Log output of Barge's processes: plain lines (the default) or one JSON object per line
(``BARGE_LOG_FORMAT=json``, for log pipelines), the chatter of libraries kept out of it, and
the uvicorn logging config of ``barge api``.

Imports: the standard library only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Library loggers that say, at INFO, what Barge's own lines already say better: Celery's
# "Task ... received" / "... succeeded in" for every task (periodic ones every second).
QUIETED = ("celery.app.trace", "celery.worker.strategy")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message (and exc_info's text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        for key in ("job_id", "shard", "process"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = str(value) if key == "job_id" else value
        return json.dumps(entry, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN)


def apply(logger: logging.Logger, fmt: str) -> None:
    """Give every handler of ``logger`` the format ``fmt`` (``json`` or ``plain``) and keep the
    libraries' per-task chatter out."""
    if fmt == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.WARNING)


def uvicorn_config(fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn: where it listens, and one access line per
    request, as plain text or JSON."""
    formatter_spec: dict[str, Any] = (
        {"()": "barge.logs.JsonFormatter"} if fmt == "json" else {"format": PLAIN}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"barge": formatter_spec},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "barge",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "barge": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "api": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
