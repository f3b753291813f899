"""A real Barge stack for benchmarks: its own Postgres database and RabbitMQ vhost, moto's S3
server on loopback, an API process and one worker process; torn down on exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

BUCKET = "bench"


class Stack:
    def __init__(self, log_dir: Path, **worker_env: str) -> None:
        self.log_dir = log_dir
        self.worker_env = worker_env
        self.run = f"bench_{os.getpid()}"
        self._procs: list[Any] = []
        self._worker: Any = None

    def __enter__(self) -> Stack:
        import boto3
        import httpx

        from tests.services import (
            ROOT,
            MotoServer,
            WorkerProcess,
            create_database,
            create_vhost,
            free_port,
            wait_port,
        )

        db_url = create_database(self.run)
        broker = create_vhost(self.run)
        self.moto = MotoServer(self.log_dir / "moto.log")
        env = {
            **os.environ,
            "BARGE_DATABASE_URL": db_url,
            "BARGE_BROKER_URL": broker,
            "BARGE_STORAGE_BACKEND": "s3",
            "BARGE_S3_ENDPOINT_URL": self.moto.url,
            # one bench tenant on its own bucket: every bucket is in its scope
            "BARGE_TENANT_READ_SCOPES": '["*"]',
            "BARGE_TENANT_WRITE_SCOPES": '["*"]',
            "BARGE_HOME": str(self.log_dir / "home"),
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        cli = [sys.executable, "-m", "cli"]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, cwd=ROOT)
        key = subprocess.run(
            [*cli, "keys", "create", "--tenant", "bench"],
            env=env,
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.moto.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        self.s3.create_bucket(Bucket=BUCKET)
        port = free_port()
        self._procs.append(
            subprocess.Popen(
                [*cli, "api", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=(self.log_dir / "api.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
        )
        wait_port(port, 60)
        self._worker = WorkerProcess(
            {**env, **self.worker_env}, self.log_dir / "worker.log"
        ).start()
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=90,  # a GET with ?wait=60 answers within 60 s
        )
        return self

    def upload_model(self, name: str, directory: Path) -> str:
        from tests.helpers import upload_dir

        return upload_dir(self.s3, BUCKET, name, directory)

    def run_job(self, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Submit and wait (``GET /v1/jobs/{id}?wait=60``: the answer comes as the job ends,
        no polling); (seconds from the POST to the final status seen, the job)."""
        started = time.perf_counter()
        job = self.api.post("/v1/jobs", json=spec).raise_for_status().json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            job = self.api.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        elapsed = time.perf_counter() - started
        assert job["status"] == "succeeded", job
        return elapsed, job

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from tests.services import delete_vhost, drop_database

        if self._worker:
            self._worker.stop()
        for p in self._procs:
            p.terminate()
            p.wait(10)
        self.moto.stop()
        drop_database(self.run)
        delete_vhost(self.run)
