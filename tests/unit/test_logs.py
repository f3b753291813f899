"""Log output: BARGE_LOG_FORMAT=json gives one JSON object per line (with the job and shard of a
unit-of-work line), and uvicorn's config logs where it listens and each request."""

from __future__ import annotations

import json
import logging
import logging.config
import uuid

import pytest

from barge import logs


def test_json_lines_carry_the_job_and_shard() -> None:
    record = logging.LogRecord(
        "worker.lifecycle", logging.INFO, __file__, 1, "%s done", ("x",), None
    )
    job_id = uuid.uuid4()
    record.job_id, record.shard = job_id, 3
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "x done" and entry["level"] == "INFO"
    assert entry["logger"] == "worker.lifecycle"
    assert entry["job_id"] == str(job_id) and entry["shard"] == 3
    assert entry["ts"].endswith("+00:00")


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_uvicorn_config_logs_access_lines(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(logs.uvicorn_config(fmt))
    try:
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8000")
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/jobs", "1.1", 200
        )
        lines = capsys.readouterr().err.splitlines()
    finally:
        for name in ("uvicorn", "uvicorn.access", "barge", "api"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    assert len(lines) == 2, lines  # each once: the access logger does not propagate
    messages = [json.loads(line)["message"] for line in lines] if fmt == "json" else lines
    assert "Uvicorn running on http://127.0.0.1:8000" in messages[0]
    assert '"GET /v1/jobs HTTP/1.1" 200' in messages[1]
