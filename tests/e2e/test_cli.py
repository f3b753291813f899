"""The `barge` CLI against a real API process, worker and stores; and `barge demo` (make demo)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import put_jsonl, read_jsonl
from tests.services import ROOT, free_port, wait_port

pytestmark = pytest.mark.e2e
BARGE = [sys.executable, "-m", "cli"]


def barge(
    *args: str, env: dict[str, str], timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BARGE, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def client_env(barge_env: dict[str, str], config_home: Path, **more: str) -> dict[str, str]:
    """The environment of a client command: the run's settings, its own (empty) config
    directory, and none of the API variables or the profile unless ``more`` sets them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BARGE_API_URL", "BARGE_API_KEY", "BARGE_PROFILE")
    }
    return {**env, **barge_env, "XDG_CONFIG_HOME": str(config_home), **more}


def new_cli_key(env: dict[str, str], tenant: str) -> str:
    created = barge("keys", "create", "--tenant", tenant, env=env)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


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
    assert cancel.returncode == 3 and "already succeeded" in cancel.stderr  # refused: 409
    paused = barge("pause", job_id[:8], env=env)
    assert paused.returncode == 3 and "only a running job can be paused" in paused.stderr
    resumed = barge("resume", job_id[:8], env=env)
    assert resumed.returncode == 3 and "only a pausing or paused job" in resumed.stderr
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
    assert refused.returncode == 3 and "batch_size" in refused.stderr  # refused: 422
    assert "Traceback" not in refused.stderr

    no_api = barge(
        "status", job_id, env={**env, "BARGE_API_URL": f"http://127.0.0.1:{free_port()}"}
    )
    assert no_api.returncode == 5 and "cannot reach the API at" in no_api.stderr


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
    header = ["#", "STATUS", "ATT", "RECORDS", "FAILED", "WORKER", "LAST", "ERROR"]
    assert shards.stdout.splitlines()[0].split() == header, shards.stdout
    assert [r.split()[:5] for r in shards.stdout.splitlines()[1:]] == [
        ["0", "succeeded", "1", "5/5", "0"]
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


def test_cli_exit_codes_tell_usage_refusal_server_error_and_unreachable(
    api_url: str, barge_env: dict[str, str], tmp_path: Path, tmp_root: Path
) -> None:
    """2 usage, 3 refused (4xx), 4 server error (5xx), 5 unreachable: each from a real
    ``barge`` process against a real API process (one whose database is down for the 5xx), a
    stopped port, and bad requests."""
    env = client_env(barge_env, tmp_path / "config")
    key = new_cli_key(env, f"codes-{uuid.uuid4().hex[:6]}")
    env.update(BARGE_API_URL=api_url, BARGE_API_KEY=key)

    usage = barge("list", "--status", "done", env=env)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr, usage
    not_an_id = barge("status", "zz", env=env)
    assert not_an_id.returncode == 2 and "is not a job id" in not_an_id.stderr, not_an_id

    missing = str(uuid.uuid4())
    refused = barge("status", missing, env=env)
    assert refused.returncode == 3, refused
    assert f"refused: no job '{missing}' (HTTP 404)" in refused.stderr
    bad_key = barge("list", env={**env, "BARGE_API_KEY": "bk_notakey0000000000000"})
    assert bad_key.returncode == 3 and "(HTTP 401)" in bad_key.stderr, bad_key

    port = free_port()  # nothing listens there
    unreachable = barge("list", env={**env, "BARGE_API_URL": f"http://127.0.0.1:{port}"})
    assert unreachable.returncode == 5, unreachable
    assert f"cannot reach the API at http://127.0.0.1:{port} (" in unreachable.stderr
    assert "HTTP 0" not in unreachable.stderr and "Traceback" not in unreachable.stderr

    with api_without_database(barge_env, tmp_root) as broken_url:
        server_error = barge("list", env={**env, "BARGE_API_URL": broken_url})
    assert server_error.returncode == 4, server_error
    assert "server error:" in server_error.stderr and "(HTTP 503)" in server_error.stderr


@contextlib.contextmanager
def api_without_database(barge_env: dict[str, str], tmp_root: Path) -> Iterator[str]:
    """A real ``barge api`` process whose database does not answer: its URL."""
    port = free_port()
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"
    proc = subprocess.Popen(
        [*BARGE, "api", "--port", str(port)],
        env={**os.environ, **barge_env, "BARGE_DATABASE_URL": dead},
        cwd=ROOT,
        stdout=(tmp_root / "api-no-db.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_login_saves_a_profile_that_flags_and_environment_override(
    api_url: str, barge_env: dict[str, str], tmp_path: Path
) -> None:
    config_home = tmp_path / "config"
    env = client_env(barge_env, config_home)
    key = new_cli_key(env, f"login-{uuid.uuid4().hex[:6]}")
    saved = config_home / "barge" / "config.toml"
    dead_url = f"http://127.0.0.1:{free_port()}"

    wrong = barge("login", "--api-url", api_url, env=env, input="bk_notakey0000000000\n")
    assert wrong.returncode == 3 and "not saved" in wrong.stderr, wrong
    away = barge("login", "--api-url", dead_url, env=env, input=key + "\n")
    assert away.returncode == 5 and "not saved" in away.stderr, away
    assert not saved.exists()

    # The key comes on stdin (a prompt on a terminal), never as an argument.
    login = barge("login", "--profile", "prod", "--api-url", api_url, env=env, input=key + "\n")
    assert login.returncode == 0, login
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert key in saved.read_text() and key not in login.stderr + login.stdout
    assert key[:10] in login.stderr
    unchecked = barge(
        "login", "--profile", "dead", "--api-url", dead_url, "--no-verify", env=env, input=key
    )
    assert unchecked.returncode == 0, unchecked

    def status_of(*args: str, **more: str) -> int:
        return barge(*args, "list", "-q", env={**env, **more}).returncode

    assert status_of() == 0  # prod: the first profile saved is the default
    assert barge("config", "use", "dead", env=env).returncode == 0
    assert status_of() == 5  # the default profile now points at nothing
    assert status_of("--profile", "prod") == 0
    assert barge("list", "--profile", "prod", env=env).returncode == 0
    assert status_of(BARGE_PROFILE="prod") == 0
    assert status_of("--profile", "dead", BARGE_PROFILE="prod") == 5  # the flag wins
    # Environment variables beat the profile; the URL flag beats the environment.
    assert status_of("--profile", "prod", BARGE_API_URL=dead_url) == 5
    assert status_of("--profile", "prod", BARGE_API_KEY="bk_notakey000000") == 3
    assert status_of("--api-url", api_url, BARGE_API_URL=dead_url) == 0
    missing = barge("list", "--profile", "nope", env=env)
    assert missing.returncode == 2 and "barge login --profile nope" in missing.stderr

    listed = json.loads(barge("config", "list", "-o", "json", env=env).stdout)
    assert listed["default_profile"] == "dead" and set(listed["profiles"]) == {"dead", "prod"}
    assert listed["profiles"]["prod"] == {"api_url": api_url, "api_key": key[:10] + "..."}
    assert key not in barge("config", "list", env=env).stdout
    assert barge("logout", "--profile", "dead", env=env).returncode == 0
    assert barge("config", "list", "-q", env=env).stdout.split() == ["prod"]


@dataclass(frozen=True)
class FinishedJob:
    id: str
    tenant: str
    bucket: str
    env: dict[str, str]
    ids: list[str]  # the ids of the records that succeeded, in input order


# Records 3, 17 and 25 have a text that is not a string, 8 and 18 are not JSON: with 10 records
# per shard, shard 0 fails 2 of its records, shard 1 2 and shard 2 1.
BAD_TEXT, NOT_JSON = (3, 17, 25), (8, 18)


@pytest.fixture(scope="module")
def finished_job(
    api_url: str,
    barge_env: dict[str, str],
    s3: Any,
    minilm_uri: str,
    worker: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> FinishedJob:
    """A job of a tenant of its own that succeeded with failed records in each of its 3 shards."""
    tmp = tmp_path_factory.mktemp("cli-job")
    tenant = f"outputs-{uuid.uuid4().hex[:6]}"
    env = client_env(barge_env, tmp / "config")
    env.update(BARGE_API_URL=api_url, BARGE_API_KEY=new_cli_key(env, tenant))
    bucket = f"cli-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    rows: list[Any] = []
    for i in range(30):
        if i in NOT_JSON:
            rows.append("{not json")
        else:
            rows.append({"id": f"r{i}", "text": 5 if i in BAD_TEXT else f"record {i}"})
    spec = {
        "model": minilm_uri,
        "task": "embed",
        "input": put_jsonl(s3, bucket, "in.jsonl", rows),
        "output": f"s3://{bucket}/out/",
        "id_field": "id",
        "shard_size": 10,
        "max_failed_ratio": 0.5,
    }
    (tmp / "job.json").write_text(json.dumps(spec))
    submitted = barge("submit", str(tmp / "job.json"), "--wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    ok = [f"r{i}" for i in range(30) if i not in (*BAD_TEXT, *NOT_JSON)]
    return FinishedJob(submitted.stdout.strip(), tenant, bucket, env, ok)


def s3_errors_per_shard(s3: Any, bucket: str) -> dict[int, int]:
    return {i: len(read_jsonl(s3, bucket, f"out/errors/part-{i:05d}.jsonl")) for i in range(3)}


def test_cli_shards_counts_the_failed_records_of_each_shard(
    finished_job: FinishedJob, s3: Any
) -> None:
    job = finished_job
    shown = barge("shards", job.id, env=job.env)
    assert shown.returncode == 0, shown.stderr
    header, *rows = (line.split() for line in shown.stdout.splitlines())
    assert header[:6] == ["#", "STATUS", "ATT", "RECORDS", "FAILED", "WORKER"], shown.stdout
    by_shard = {int(r[0]): r for r in rows}
    assert {i: int(r[4]) for i, r in by_shard.items()} == s3_errors_per_shard(s3, job.bucket)
    assert {i: int(r[4]) for i, r in by_shard.items()} == {0: 2, 1: 2, 2: 1}
    assert all(r[1] == "succeeded" and r[3] == "10/10" for r in rows), shown.stdout

    wide = barge("shards", job.id, "-o", "wide", env=job.env).stdout.splitlines()
    assert wide[0].split()[6:9] == ["SOURCE", "RANGE", "STARTED"], wide
    assert [line.split()[7] for line in wide[1:]] == ["0-9", "10-19", "20-29"]


def test_cli_output_formats_on_real_answers(finished_job: FinishedJob, minilm_uri: str) -> None:
    """-o json|yaml|wide|name, --json and -q on the lists and gets, against the real API."""
    job, env = finished_job, finished_job.env

    def out(*args: str) -> str:
        done = barge(*args, env=env)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    page = json.loads(out("list", "-o", "json"))
    assert [j["id"] for j in page["jobs"]] == [job.id]
    assert json.loads(out("list", "--json")) == page
    assert yaml.safe_load(out("list", "-o", "yaml")) == page
    assert out("list", "-o", "name").split() == out("list", "-q").split() == [job.id]
    wide = out("list", "-o", "wide").splitlines()
    assert wide[0].split()[:6] == ["ID", "TYPE", "STATUS", "DONE", "CREATED", "FAILED"], wide
    row = wide[1].split()  # DONE is two words (30/30 records), CREATED one
    assert row[:5] == [job.id, "inference", "succeeded", "30/30", "records"] and row[6] == "5"

    got = json.loads(out("status", job.id[:8], "-o", "json"))
    assert got["id"] == job.id and got["progress"]["records_failed"] == 5
    assert yaml.safe_load(out("status", job.id, "-o", "yaml")) == got
    assert out("status", job.id, "-q").split() == [job.id]
    assert "records: 25 succeeded, 5 failed of 30" in out("status", job.id, "-o", "wide")

    shards = json.loads(out("shards", job.id, "-o", "json"))
    assert [s["records_failed"] for s in shards] == [2, 2, 1]
    assert out("shards", job.id, "-q").split() == ["0", "1", "2"]
    events = [json.loads(line) for line in out("events", job.id, "-o", "json").splitlines()]
    assert out("events", job.id, "-q").split() == [str(e["id"]) for e in events]
    assert yaml.safe_load(out("events", job.id, "-o", "yaml")) == events

    name = f"m{uuid.uuid4().hex[:6]}"
    assert out("models", "register", name, "--uri", minilm_uri, "--task", "embed").split() == [
        f"{name}@1"
    ]
    assert f"{name}@1" in out("models", "list", "-q").split()
    (model,) = yaml.safe_load(out("models", "show", name, "-o", "yaml"))
    assert (model["ref"], model["uri"]) == (f"{name}@1", minilm_uri)
    assert out("drops", "list", "-o", "json").strip() == "[]"
    assert out("keys", "list", "--tenant", job.tenant, "-q").split() == [env["BARGE_API_KEY"][:10]]
    assert json.loads(out("tenants", "show", job.tenant, "--json"))["name"] == job.tenant


def test_cli_results_and_errors_come_through_the_api(
    finished_job: FinishedJob, s3: Any, tmp_path: Path, api_url: str
) -> None:
    """``barge results`` and ``barge errors`` need no S3 access of their own: only the API."""
    job = finished_job
    env = {
        k: v for k, v in job.env.items() if not k.startswith(("AWS_", "BARGE_S3", "BARGE_STORAGE"))
    }
    listed = s3.list_objects_v2(Bucket=job.bucket, Prefix="out/")["Contents"]
    stored = {o["Key"][len("out/") :]: o["Key"] for o in listed}
    assert {"part-00002.jsonl", "errors/part-00001.jsonl", "_manifest.json"} <= set(stored)

    into = tmp_path / "dl"
    got = barge("results", job.id[:8], "--dir", str(into), env=env)
    assert got.returncode == 0, got.stderr
    files = {str(p.relative_to(into)) for p in into.rglob("*") if p.is_file()}
    assert files == set(stored) - {"_SUCCESS"}, got.stderr  # parts, errors, manifest
    for name in files:
        body = s3.get_object(Bucket=job.bucket, Key=stored[name])["Body"].read()
        assert (into / name).read_bytes() == body, name
    every = tmp_path / "all"
    assert barge("results", job.id, "--dir", str(every), "--all", env=env).returncode == 0
    assert (every / "_SUCCESS").exists()

    streamed = barge("results", job.id, "--stdout", env=env)
    assert streamed.returncode == 0, streamed.stderr
    rows = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [r["id"] for r in rows] == job.ids and len(rows[0]["embedding"]) == 384

    errors = barge("errors", job.id, env=env)
    assert errors.returncode == 0, errors.stderr
    failed = [json.loads(line) for line in errors.stdout.splitlines()]
    assert [e["line"] for e in failed] == [4, 9, 18, 19, 26]  # input order, 1-based lines
    assert [e["id"] for e in failed] == ["r3", None, "r17", None, "r25"]
    ids = barge("errors", job.id, "-q", "--limit", "3", env=env).stdout.split()
    assert ids == ["r3", "-", "r17"]


def test_a_jobs_files_are_its_tenants_alone(
    finished_job: FinishedJob, api_url: str, barge_env: dict[str, str], tmp_path: Path
) -> None:
    job = finished_job
    other = {**job.env, "BARGE_API_KEY": new_cli_key(job.env, f"other-{uuid.uuid4().hex[:6]}")}
    for command in (("results", job.id, "--stdout"), ("errors", job.id)):
        refused = barge(*command, env=other)
        assert refused.returncode == 3 and "no job" in refused.stderr, refused
        assert refused.stdout == ""
    headers = {"Authorization": f"Bearer {job.env['BARGE_API_KEY']}"}
    base = f"{api_url}/v1/jobs/{job.id}/files"
    for name in ("errors%2F..%2F_manifest.json", "%2E%2E/out/_manifest.json", "a//b"):
        r = httpx.get(f"{base}/{name}", headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "name", (name, r.text)
    assert httpx.get(f"{base}/nothing.jsonl", headers=headers).status_code == 404

    # The tenant's scopes no longer cover the output: its files are refused too.
    narrowed = barge(
        "tenants",
        "update",
        job.tenant,
        "--read",
        "s3://elsewhere/",
        "--write",
        "s3://elsewhere/",
        env=job.env,
    )
    assert narrowed.returncode == 0, narrowed.stderr
    try:
        refused = barge("results", job.id, "--stdout", env=job.env)
        assert refused.returncode == 3 and "may not read" in refused.stderr, refused
    finally:
        barge("tenants", "update", job.tenant, "--reset-scopes", env=job.env)


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
