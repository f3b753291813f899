"""Operating Barge as a person does: `barge up` stops every child on SIGTERM and refuses a taken
port; the CLI never prints a traceback for bad input; job ids work by prefix; the API logs where
it listens and each request; workers log one line per unit naming its job and shard; one worker
per GPU on one host, with default names, each running shards; `barge up` beside a running worker;
a database without `barge db upgrade` is a 503 naming it, and readiness waits for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from services.usage import worker_label
from tests.conftest import ApiProcess, new_key
from tests.helpers import inference_spec, put_jsonl, wait_job, wait_until
from tests.services import (
    ROOT,
    WorkerProcess,
    create_vhost,
    delete_vhost,
    free_port,
    wait_port,
)

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


# --- several processes on one host, and a database before `barge db upgrade` -------------------

HOST = socket.gethostname()
SCHEMA_MESSAGE = "the database schema is missing or old: run `barge db upgrade`"


@pytest.fixture
def own_broker(barge_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of the test session's stores with a RabbitMQ vhost of this test's own,
    so that its workers (and nobody else's) take what is sent there."""
    name = f"barge_ops_{uuid.uuid4().hex[:8]}"
    url = create_vhost(name)
    yield {**os.environ, **barge_env, "BARGE_BROKER_URL": url, "BARGE_HOME": str(tmp_path)}
    delete_vhost(name)


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().partition("=")[::2] for p in pairs if p)


def test_one_worker_per_gpu_on_one_host_each_runs_shards(
    own_broker: dict[str, str],
    settings: Any,
    database_url: str,
    s3: Any,
    bucket: str,
    minilm_uri: str,
    tmp_path: Path,
) -> None:
    workers = []
    try:
        for gpu in (0, 1):  # as the docs say: one `barge worker --gpu N` per GPU, no names
            w = WorkerProcess(
                own_broker, tmp_path / f"gpu{gpu}.log", named=False, args=("--gpu", str(gpu))
            )
            workers.append(w.start())
        for gpu, w in enumerate(workers):
            log = w.log.read_text()
            assert f"gpu-{gpu}@{HOST} ready." in log and f"control-{gpu}@{HOST} ready." in log
            assert {environ(pid)["CUDA_VISIBLE_DEVICES"] for pid in w.pool_pids()} == {str(gpu)}

        on_vhost = settings.model_copy(update={"broker_url": own_broker["BARGE_BROKER_URL"]})
        with TestClient(create_app(on_vhost)) as api:
            auth = {
                "Authorization": f"Bearer {new_key(database_url, 'gpus-' + uuid.uuid4().hex[:6])}"
            }
            rows = [{"text": f"one worker per GPU, record {i}"} for i in range(40)]
            data = put_jsonl(s3, bucket, "gpus.jsonl", rows)
            spec = inference_spec(minilm_uri, data, f"s3://{bucket}/gpus/", shard_size=5)
            created = api.post("/v1/jobs", json=spec, headers=auth)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            assert wait_job(api, auth, job_id)["status"] == "succeeded"
            shards = api.get(f"/v1/jobs/{job_id}/shards", headers=auth).json()["shards"]
        assert len(shards) == 8
        ran_on = {s["worker"] for s in shards}
        for w in workers:
            labels = {worker_label(on_vhost, f"{HOST}:{pid}") for pid in w.pool_pids()}
            assert ran_on & labels, (ran_on, w.tail())
            assert w.proc is not None and w.proc.poll() is None, w.tail()
    finally:
        for w in workers:
            w.stop()


def test_two_workers_with_default_names_and_a_name_in_use(
    own_broker: dict[str, str], tmp_path: Path
) -> None:
    first = WorkerProcess(own_broker, tmp_path / "first.log", named=False)
    second = WorkerProcess(own_broker, tmp_path / "second.log", named=False)
    try:
        first.start()
        second.start()
        assert first.proc is not None and second.proc is not None
        for w in (first, second):
            assert f"gpu-{w.proc.pid}@{HOST} ready." in w.log.read_text()  # named after its pid
        time.sleep(5)  # a clash of names ended the second one after about 3 s
        assert first.proc.poll() is None, first.tail()
        assert second.proc.poll() is None, second.tail()

        taken = subprocess.run(
            [*BARGE, "worker", "--queues", "gpu", "--hostname", f"gpu-{first.proc.pid}@%h"],
            env=own_broker,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 2, taken.stdout + taken.stderr
        assert taken.stderr.splitlines() == [
            f"barge worker: a worker named gpu-{first.proc.pid}@{HOST} is already running on "
            "this broker: give each worker on a host its own --gpu N (one per GPU), or name "
            "this one with --hostname NAME@%h"
        ]
    finally:
        first.stop()
        second.stop()


def test_barge_up_beside_a_running_worker(own_broker: dict[str, str], tmp_path: Path) -> None:
    worker = WorkerProcess(own_broker, tmp_path / "worker.log", named=False).start()
    port = free_port()
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*BARGE, "up", "--port", str(port)],
        cwd=tmp_path,
        env=own_broker,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: "Barge is up" in log.read_text() or proc.poll() is not None,
            timeout=180,
            what="barge up",
        )
        time.sleep(10)  # the clash of names ended `up` 7 s after "Barge is up"
        assert proc.poll() is None, log.read_text()
        out = log.read_text()
        # On the configured stores, and saying so.
        assert "on database 127.0.0.1:5432/barge_test_" in out, out
        assert "broker 127.0.0.1:5672/" in out and "S3 at http://127.0.0.1:" in out, out
        logs = tmp_path / "logs"
        assert f"gpu-{proc.pid}@{HOST} ready." in (logs / "worker.log").read_text()
        assert f"control-{proc.pid}@{HOST} ready." in (logs / "control.log").read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in descendants(proc.pid):
            os.kill(p, signal.SIGKILL)
        worker.stop()


def test_a_database_before_db_upgrade_is_a_503_naming_it(
    barge_env: dict[str, str], empty_database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, **barge_env, "BARGE_DATABASE_URL": empty_database_url}
    port = free_port()
    log = tmp_path / "api.log"
    proc = subprocess.Popen(
        [*BARGE, "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    key = {"Authorization": "Bearer bk_not_a_key"}
    try:
        wait_port(port, 60)
        health = httpx.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 503  # not ready: nothing is sent here yet
        assert health.json() == {"status": "degraded", "database": SCHEMA_MESSAGE, "broker": "ok"}
        for path in ("/v1/jobs", "/v1/models", "/openai/v1/models"):
            r = httpx.get(f"{url}{path}", headers=key, timeout=10)
            assert r.status_code == 503, (path, r.text)
            body = r.json()
            error = body["error"] if path.startswith("/openai") else body
            assert (error["code" if path.startswith("/openai") else "error"], error["message"]) == (
                "schema_not_current",
                SCHEMA_MESSAGE,
            ), (path, body)
        upgraded = subprocess.run(
            [*BARGE, "db", "upgrade"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        # The same process, without a restart: ready, and requests reach their checks.
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{url}/v1/jobs", headers=key, timeout=10).status_code == 401
        assert "Traceback" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
