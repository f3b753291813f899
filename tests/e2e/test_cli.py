"""The `barge` CLI against a real API process, worker and stores; and `barge demo` (make demo)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import put_jsonl, read_jsonl
from tests.services import ROOT, free_port

pytestmark = pytest.mark.e2e
BARGE = [sys.executable, "-m", "cli"]


def barge(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BARGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_cli_keys_submit_wait_status_list_events_cancel(
    api_url: str,
    barge_env: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    tmp_path: Path,
) -> None:
    env = {**os.environ, **barge_env}
    created = barge("keys", "create", "--tenant", "cli-team", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bk_") and "\n" not in key  # only the key on stdout
    env.update(BARGE_API_URL=api_url, BARGE_API_KEY=key)

    data = put_jsonl(
        s3, bucket, "cli.jsonl", [{"id": f"q{i}", "text": f"cli record {i}"} for i in range(50)]
    )
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "type": "inference",
                "model": minilm_uri,
                "task": "embed",
                "input": data,
                "output": f"s3://{bucket}/cli-out/",
                "id_field": "id",
            }
        )
    )
    submitted = barge("submit", str(spec_file), "--wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert "succeeded" in submitted.stderr and "records" in submitted.stderr
    assert len(read_jsonl(s3, bucket, "cli-out/part-00000.jsonl")) == 50

    status = barge("status", job_id, "--json", env=env)
    assert json.loads(status.stdout)["status"] == "succeeded"
    listing = barge("list", env=env)
    assert job_id in listing.stdout and "succeeded" in listing.stdout
    events = barge("events", job_id, env=env)
    assert "queued -> running" in events.stdout and "running -> succeeded" in events.stdout
    cancel = barge("cancel", job_id, env=env)
    assert cancel.returncode == 2 and "already succeeded" in cancel.stderr
    waited = barge("wait", job_id, env=env)
    assert waited.returncode == 0 and "succeeded" in waited.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "type": "inference",
                "model": minilm_uri,
                "task": "embed",
                "input": data,
                "output": f"s3://{bucket}/x/",
                "batch_size": 0,
            }
        )
    )
    refused = barge("submit", str(bad), env=env)
    assert refused.returncode == 2 and "batch_size" in refused.stderr
    assert "Traceback" not in refused.stderr

    no_api = barge(
        "status", job_id, env={**env, "BARGE_API_URL": f"http://127.0.0.1:{free_port()}"}
    )
    assert no_api.returncode == 2 and "cannot reach the Barge API" in no_api.stderr


def in_terminal(
    *args: str, env: dict[str, str], until: str | None = None, timeout: float = 120
) -> tuple[int, str]:
    """Run ``barge`` with stdin, stdout and stderr on a pseudo-terminal 160 columns wide; its
    exit status and all it wrote. With ``until``: send SIGINT once the output holds it twice
    (a live view that has redrawn)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        [*BARGE, *args], env=env, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"barge {' '.join(args)} still running after {timeout} s: {out!r}"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            out += data
            if until and not interrupted and out.decode(errors="replace").count(until) >= 2:
                proc.send_signal(signal.SIGINT)
                interrupted = True
        return proc.wait(30), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_tables_in_a_pipe_and_on_a_terminal(
    api_url: str,
    barge_env: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    tmp_path: Path,
) -> None:
    """In a pipe a table is plain text: a header, one line per row, no escape codes or box
    lines, even with FORCE_COLOR set; ``--json`` is JSON. On a terminal the same table is boxed
    with coloured statuses (not under NO_COLOR), ``wait`` draws a progress bar and ``top``
    redraws in place and ends on Ctrl-C with status 0."""
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env = {**base, **barge_env}
    key = barge("keys", "create", "--tenant", "cli-tables", env=env).stdout.strip()
    env.update(BARGE_API_URL=api_url, BARGE_API_KEY=key, TERM="xterm-256color")
    data = put_jsonl(
        s3, bucket, "tables.jsonl", [{"id": f"t{i}", "text": f"t {i}"} for i in range(5)]
    )
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {"model": minilm_uri, "task": "embed", "input": data, "output": f"s3://{bucket}/tt/"}
        )
    )
    rc, shown = in_terminal("submit", str(spec), "--wait", env=env)
    assert rc == 0, shown
    submitted = re.search(r"submitted job ([0-9a-f-]{36})", shown)
    assert submitted, shown
    job_id = submitted[1]
    assert "━" in shown and "5/5 records" in shown, shown  # the live progress bar
    assert "\x1b[?25l" in shown and "\x1b[?25h" in shown  # the cursor hidden, then shown again

    piped = barge("list", env={**env, "FORCE_COLOR": "1"})
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout and not set("│─╭╮╰╯┃━") & set(piped.stdout), piped.stdout
    rows = piped.stdout.splitlines()
    assert rows[0].split() == ["ID", "TYPE", "STATUS", "DONE", "CREATED"]
    (row,) = [r for r in rows[1:] if r.startswith(job_id)]
    assert row.split()[:5] == [job_id, "inference", "succeeded", "5/5", "records"]
    shards = barge("shards", job_id[:8], env=env)
    header = ["#", "STATUS", "ATT", "RECORDS", "WORKER", "LAST", "ERROR"]
    assert shards.stdout.splitlines()[0].split() == header, shards.stdout
    assert [r.split()[:4] for r in shards.stdout.splitlines()[1:]] == [
        ["0", "succeeded", "1", "5/5"]
    ]
    as_json = barge("list", "--json", env=env)
    assert as_json.stdout.startswith("{\n") and job_id in {
        j["id"] for j in json.loads(as_json.stdout)["jobs"]
    }

    rc, shown = in_terminal("list", env=env)
    assert rc == 0, shown
    assert "╭" in shown and "╰" in shown and job_id in shown
    assert "\x1b[32msucceeded" in shown  # green
    rc, shown = in_terminal("list", env={**env, "NO_COLOR": "1"})
    assert rc == 0 and "╭" in shown and job_id in shown, shown
    assert "\x1b[32m" not in shown

    rc, shown = in_terminal("top", "--interval", "0.2", env=env, until="barge top")
    assert rc == 0, shown
    assert "╭" in shown and "DONE/TOTAL" in shown and "\x1b[?25h" in shown, shown


def test_make_demo_runs_a_real_job_on_the_embedded_stack(tmp_path: Path) -> None:
    """What `make demo` runs, from an empty directory with no BARGE_ settings at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BARGE_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [*BARGE, "demo", "--records", "400", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stderr
    assert "400 embedded, 2 in errors/" in result.stdout
    parts = list(
        (tmp_path / ".barge" / "objects" / "barge" / "demo" / "outputs").rglob("part-*.jsonl")
    )
    rows = [
        json.loads(line)
        for p in parts
        if "errors" not in str(p)
        for line in p.read_text().splitlines()
    ]
    assert len(rows) == 400 and all(len(r["embedding"]) == 384 for r in rows)


def test_commands_on_a_database_before_db_upgrade(
    barge_env: dict[str, str], empty_database_url: str
) -> None:
    """Every command that uses the database says what to run, in one line, exit status 2."""
    env = {**os.environ, **barge_env, "BARGE_DATABASE_URL": empty_database_url}
    message = "the database schema is missing or old: run `barge db upgrade`"
    for args in (
        ("keys", "create", "--tenant", "early"),
        ("keys", "list"),
        ("tenants", "list"),
        ("audit",),
        ("worker", "--queues", "gpu"),
    ):
        result = barge(*args, env=env, timeout=60)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        who = "barge worker" if args[0] == "worker" else "barge"
        assert result.stderr.splitlines() == [f"{who}: {message}"], args
        assert result.stdout == "", args
    assert barge("db", "upgrade", env=env).returncode == 0
    created = barge("keys", "create", "--tenant", "early", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("bk_")


def test_admin_commands_on_an_unreachable_database(barge_env: dict[str, str]) -> None:
    env = {
        **os.environ,
        **barge_env,
        "BARGE_DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/x",
    }
    for args in (("keys", "list"), ("db", "upgrade")):
        result = barge(*args, env=env, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("barge: cannot reach the database 127.0.0.1:1/x: "), line
        assert "pw" not in line  # never the password
