"""Operating Barge as a person does: `barge up` stops every child on SIGTERM and refuses a taken
port; the CLI never prints a traceback for bad input; job ids work by prefix; the API logs where
it listens and each request; workers log one line per unit naming its job and shard."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ApiProcess
from tests.helpers import put_jsonl
from tests.services import ROOT, free_port

pytestmark = pytest.mark.e2e
BARGE = [sys.executable, "-m", "cli"]


def embedded_env(home: Path) -> dict[str, str]:
    """No BARGE_ settings from the test session: the embedded stack (SQLite, files) in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BARGE_", "AWS_"))}
    return {**env, "PYTHONPATH": str(ROOT), "BARGE_HOME": str(home)}


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in found:
                found.add(k)
                todo.append(k)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_sigterm_to_barge_up_stops_every_child(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*BARGE, "up", "--port", str(port)],
        cwd=tmp_path,
        env=embedded_env(tmp_path / ".barge"),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while "Barge is up" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        children = descendants(proc.pid)
        assert len(children) >= 4, children  # api, worker, control worker, scheduler (+ pools)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        deadline = time.monotonic() + 30
        while left := {p for p in children if alive(p)}:
            assert time.monotonic() < deadline, f"still running after SIGTERM: {left}"
            time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in descendants(proc.pid):
            os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("command", ["up", "api", "demo"])
def test_a_taken_port_is_refused_by_name(tmp_path: Path, held_port: int, command: str) -> None:
    result = subprocess.run(
        [*BARGE, command, "--port", str(held_port)],
        cwd=tmp_path,
        env=embedded_env(tmp_path / ".barge"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{held_port}" in result.stderr
    assert "Barge is up" not in result.stderr and "Traceback" not in result.stderr


def test_bad_cli_input_is_a_message_never_a_traceback(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / ".barge")
    (tmp_path / "comma.json").write_text('{"type": "inference",\n "task": "embed",\n}')
    (tmp_path / "tab.yaml").write_text("type: inference\ntask:\n\tembed\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases = {
        ("submit", "missing.json"): "missing.json: no such file",
        ("submit", "comma.json"): "comma.json: not valid JSON: line 3, column 1",
        ("submit", "tab.yaml"): "tab.yaml: not valid YAML: line 3, column 1",
        ("submit", "list.json"): "must be a JSON/YAML object",
        ("drops", "add", "d", "--prefix", "s3://b-1/x/", "--template", "nope.yaml"): "no such file",
        ("status", "not-an-id!"): "is not a job id",
    }
    for args, expected in cases.items():
        result = subprocess.run(
            [*BARGE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    version = subprocess.run([*BARGE, "--version"], env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("barge ")


def test_ids_by_prefix_json_views_and_a_closed_pipe(
    api_process: ApiProcess,
    barge_env: dict[str, str],
    s3: Any,
    bucket: str,
    minilm_uri: str,
    worker: Any,
    tmp_path: Path,
) -> None:
    env = {**os.environ, **barge_env}
    key = subprocess.run(
        [*BARGE, "keys", "create", "--tenant", "ops-team"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env.update(BARGE_API_URL=api_process.url, BARGE_API_KEY=key)
    data = put_jsonl(s3, bucket, "ops.jsonl", [{"text": f"ops record {i}"} for i in range(5)])
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {"model": minilm_uri, "task": "embed", "input": data, "output": f"s3://{bucket}/ops/"}
        )
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BARGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )

    submitted = run("submit", str(spec), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    status = run("status", job_id[:8], "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["id"] == job_id
    shards = run("shards", job_id[:8], "--json")
    assert shards.returncode == 0, shards.stderr
    assert [s["status"] for s in json.loads(shards.stdout)] == ["succeeded"]
    events = run("events", job_id[:10], "--json")
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
    assert kinds[0] == "created" and len(kinds) >= 3
    missing = run("status", "ffffffff")
    assert missing.returncode == 2 and "no job id starts with 'ffffffff'" in missing.stderr
    for args in (("models", "list", "--json"), ("drops", "list", "--json"), ("top", "--json")):
        shown = run(*args)
        assert shown.returncode == 0, (args, shown.stderr)
        json.loads(shown.stdout)

    # A reader that went away (`barge list | head -0`): no traceback.
    proc = subprocess.Popen(
        [*BARGE, "list"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) in (0, 141) and "Traceback" not in err, err

    api_log = api_process.log.read_text()
    assert "Uvicorn running on http://127.0.0.1:" in api_log
    assert f"GET /v1/jobs/{job_id} HTTP/1.1" in api_log  # the access log
    worker_log = worker.log.read_text()
    assert f"job {job_id} shard 0 attempt 1 succeeded: 5 records, 0 failed" in worker_log
    assert "Task barge.run_shard[" not in worker_log  # Celery's per-task lines stay out
