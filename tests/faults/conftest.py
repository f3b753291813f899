"""A separate world for fault tests: its own database, RabbitMQ vhost, short leases, a real
scheduler (Celery beat) and workers that the tests kill, freeze and restart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import RUN_ID, new_key
from tests.helpers import FINAL, put_jsonl, read_jsonl, wait_until
from tests.services import (
    ROOT,
    VhostPool,
    WorkerProcess,
    create_migrated_database,
    drop_database,
)

FAULT_SETTINGS = {
    "BARGE_LEASE_SECONDS": "4",
    "BARGE_HEARTBEAT_SECONDS": "0.5",
    "BARGE_DISPATCH_GRACE_SECONDS": "2",
    "BARGE_RECONCILE_SECONDS": "1",
    "BARGE_MAX_ATTEMPTS": "3",
}


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@dataclass
class World:
    env: dict[str, str]
    database_url: str
    api: TestClient
    auth: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    scheduler: subprocess.Popen[bytes] | None = None

    def worker(self, **env: str) -> WorkerProcess:
        proc = WorkerProcess(
            {**self.env, **env}, self.tmp / f"worker-{len(self.workers)}-{uuid.uuid4().hex[:4]}.log"
        )
        self.workers.append(proc.start())
        return proc

    def start_scheduler(self, env: dict[str, str] | None = None) -> None:
        """Celery beat, with the world's environment or ``env``."""
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "cli", "scheduler"],
            env=env or self.env,
            cwd=ROOT,
            stdout=(self.tmp / "scheduler.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop_all(self) -> None:
        for w in self.workers:
            if w.proc and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGCONT)
            w.stop(timeout=10)
        if self.scheduler and self.scheduler.poll() is None:
            os.killpg(self.scheduler.pid, signal.SIGTERM)
            self.scheduler.wait(10)
        if self.scheduler:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.scheduler.pid, signal.SIGKILL)

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.api.post("/v1/jobs", json=spec, headers=self.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.api.get(f"/v1/jobs/{job_id}", headers=self.auth).json()  # type: ignore[no-any-return]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events, oldest first (up to 1,000)."""
        r = self.api.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()["events"]  # type: ignore[no-any-return]

    def wait_final(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return wait_until(  # type: ignore[no-any-return]
            lambda: (j := self.job(job_id))["status"] in FINAL and j["output"]["manifest"] and j,
            timeout=timeout,
            interval=0.3,
            what=f"job {job_id} to finish",
        )

    def shards(self, job_id: str) -> list[Any]:
        from sqlalchemy import select

        from db.models import Shard
        from db.session import session_scope

        with session_scope(self.database_url) as session:
            return list(
                session.scalars(
                    select(Shard).where(Shard.job_id == uuid.UUID(job_id)).order_by(Shard.index)
                )
            )


@pytest.fixture
def world(
    s3_server: Any, tmp_path: Path, barge_env: dict[str, str], vhost_pool: VhostPool
) -> Iterator[World]:
    """A Barge of the test's own: its database (at the newest schema, from the migrations),
    its RabbitMQ vhost (empty), an API client and a tenant's key; workers started on demand."""
    from api.app import create_app
    from barge.settings import Settings

    name = f"barge_fault_{uuid.uuid4().hex[:8]}"
    database_url = create_migrated_database(name, RUN_ID)
    broker = vhost_pool.lease()
    env = {
        **os.environ,
        **barge_env,
        **FAULT_SETTINGS,
        "BARGE_DATABASE_URL": database_url,
        "BARGE_BROKER_URL": broker,
        "BARGE_HOME": str(tmp_path / "home"),
    }
    settings = Settings(  # lists are JSON in the environment
        **{
            k[6:].lower(): json.loads(v) if v.startswith("[") else v
            for k, v in env.items()
            if k.startswith("BARGE_")
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        key = new_key(database_url, "faults")
        w = World(env, database_url, api, {"Authorization": f"Bearer {key}"}, tmp_path)
        try:
            yield w
        finally:
            w.stop_all()
    from db.session import get_engine

    get_engine(database_url).dispose()
    drop_database(name)
    vhost_pool.release(broker)


def dataset(
    s3: Any, bucket: str, n: int, key: str = "in.jsonl", bad_every: int = 0
) -> tuple[str, list[Any]]:
    rows: list[Any] = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            rows.append('{"id": "broken')
        else:
            rows.append({"id": f"r{i:05d}", "text": f"fault tolerance record {i} " * 4})
    return put_jsonl(s3, bucket, key, rows), rows


def assert_exactly_once(s3: Any, bucket: str, prefix: str, rows: list[Any]) -> dict[str, Any]:
    """Every input record appears exactly once, in the outputs or in the errors."""
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=f"{prefix}/_manifest.json")["Body"].read()
    )
    out_ids = [r["id"] for p in manifest["parts"] for r in read_jsonl(s3, bucket, p["key"])]
    err_lines = [e["line"] for p in manifest["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    good = [(i, r["id"]) for i, r in enumerate(rows) if isinstance(r, dict)]
    bad_lines = [i + 1 for i, r in enumerate(rows) if not isinstance(r, dict)]
    assert out_ids == [rid for _, rid in good], "outputs are not exactly the good records, in order"
    assert sorted(err_lines) == bad_lines, "errors are not exactly the bad records"
    assert manifest["records"]["succeeded"] == len(good)
    assert manifest["records"]["failed"] == len(bad_lines)
    return manifest  # type: ignore[no-any-return]


def kill_shard_until_it_fails(world: World, job_id: str, index: int) -> int:
    """SIGKILL the worker child of shard ``index`` at each attempt until the job ends."""
    kills, killed = 0, set()
    deadline = time.monotonic() + 420  # a loaded machine restarts children slowly
    while time.monotonic() < deadline and world.job(job_id)["status"] not in (
        "failed",
        "succeeded",
    ):
        shards = world.shards(job_id)
        shard = shards[index] if len(shards) > index else None
        if shard and shard.status == "running" and shard.attempt not in killed and shard.worker:
            try:
                os.kill(int(shard.worker.rsplit(":", 1)[1]), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
            killed.add(shard.attempt)
        time.sleep(0.05)
    return kills
