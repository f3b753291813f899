from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from tests.services import (
    MotoServer,
    VhostPool,
    WorkerProcess,
    create_database,
    create_vhost,
    delete_vhost,
    drop_database,
    drop_templates,
)

RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("barge")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    from db.migrate import upgrade

    name = f"barge_test_{RUN_ID}"
    url = create_database(name)
    upgrade(url)  # the schema comes from the migrations, nothing else
    yield url
    from db.session import dispose_engines

    dispose_engines()
    drop_database(name)


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A real database that no migration has run on (as before `barge db upgrade`)."""
    name = f"barge_empty_{uuid.uuid4().hex[:8]}"
    yield create_database(name)
    drop_database(name)  # WITH (FORCE): whatever still holds a connection is cut off


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    vhost = f"barge_test_{RUN_ID}"
    url = create_vhost(vhost)
    yield url
    delete_vhost(vhost)


@pytest.fixture(scope="session")
def vhost_pool() -> Iterator[VhostPool]:
    """RabbitMQ vhosts for tests that need a broker of their own, emptied and reused."""
    pool = VhostPool(RUN_ID)
    yield pool
    pool.close()


@pytest.fixture(scope="session", autouse=True)
def _migrated_templates() -> Iterator[None]:
    """Drop this process's template databases (``create_migrated_database``) at the end."""
    yield
    drop_templates()


@pytest.fixture(scope="session")
def s3_server(tmp_root: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_root / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def barge_env(
    database_url: str, broker_url: str, s3_server: MotoServer, tmp_root: Path
) -> dict[str, str]:
    """BARGE_* settings for every process of the test run (this one and its workers)."""
    env = {
        "BARGE_ENV": "test",
        "BARGE_HOME": str(tmp_root / "home"),
        "BARGE_CACHE_DIR": str(tmp_root / "cache"),
        "BARGE_DATABASE_URL": database_url,
        "BARGE_BROKER_URL": broker_url,
        "BARGE_STORAGE_BACKEND": "s3",
        "BARGE_S3_ENDPOINT_URL": s3_server.url,
        "BARGE_HEARTBEAT_SECONDS": "0.5",
        "BARGE_LEASE_SECONDS": "30",
        # Tests not about isolation give tenants every bucket; tests/security/test_isolation.py
        # sets tenants' own scopes.
        "BARGE_TENANT_READ_SCOPES": '["*"]',
        "BARGE_TENANT_WRITE_SCOPES": '["*"]',
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    from barge.settings import get_settings

    get_settings.cache_clear()
    return env


@pytest.fixture(scope="session")
def settings(barge_env: dict[str, str]):  # type: ignore[no-untyped-def]
    from barge.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def s3(barge_env: dict[str, str], s3_server: MotoServer):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def app(settings):  # type: ignore[no-untyped-def]
    from api.app import create_app

    return create_app(settings)


@pytest.fixture
def api(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def new_key(database_url: str, tenant: str) -> str:
    from db import repositories
    from db.session import session_scope

    with session_scope(database_url) as session:
        return repositories.create_api_key(session, tenant)


@pytest.fixture
def tenant_key(database_url: str) -> str:
    return new_key(database_url, f"tenant-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def auth(tenant_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant_key}"}


@pytest.fixture(scope="session")
def worker(barge_env: dict[str, str], tmp_root: Path) -> Iterator[WorkerProcess]:
    """One long-lived worker process shared by the tests that just need jobs to run."""
    proc = WorkerProcess({**os.environ, **barge_env}, tmp_root / "worker-shared.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def make_worker(barge_env: dict[str, str], tmp_root: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[WorkerProcess] = []

    def _make(**kwargs: object) -> WorkerProcess:
        proc = WorkerProcess(
            {**os.environ, **barge_env},
            tmp_root / f"worker-{len(started)}-{uuid.uuid4().hex[:4]}.log",
        )
        for k, v in kwargs.items():
            setattr(proc, k, v)
        started.append(proc.start())
        return proc

    yield _make
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def models_bucket(s3) -> str:  # type: ignore[no-untyped-def]
    name = f"models-{RUN_ID}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def minilm_uri(s3, models_bucket: str) -> str:  # type: ignore[no-untyped-def]
    from tests.helpers import minilm_dir, upload_dir

    return upload_dir(s3, models_bucket, "minilm", minilm_dir())


@pytest.fixture(scope="session")
def classifier_uri(s3, models_bucket: str, tmp_root: Path) -> str:  # type: ignore[no-untyped-def]
    from tests.helpers import tiny_classifier, upload_dir

    return upload_dir(s3, models_bucket, "tiny-classifier", tiny_classifier(tmp_root / "clf"))


@pytest.fixture(scope="session")
def generator_uri(s3, models_bucket: str, tmp_root: Path) -> str:  # type: ignore[no-untyped-def]
    from tests.helpers import tiny_generator, upload_dir

    return upload_dir(s3, models_bucket, "tiny-generator", tiny_generator(tmp_root / "gen"))


@pytest.fixture(scope="session")
def encoder_uri(s3, models_bucket: str, tmp_root: Path) -> str:  # type: ignore[no-untyped-def]
    from tests.helpers import tiny_encoder, upload_dir

    return upload_dir(s3, models_bucket, "tiny-encoder", tiny_encoder(tmp_root / "enc"))


@dataclass(frozen=True)
class ApiProcess:
    url: str
    pid: int
    log: Path


@pytest.fixture(scope="session")
def api_process(barge_env: dict[str, str], tmp_root: Path) -> Iterator[ApiProcess]:
    """A real `barge api` process on a free port: its URL, its pid (`barge api` execs uvicorn,
    so it is the server's) and its log."""
    import subprocess
    import sys

    from tests.services import ROOT, free_port, wait_port

    port = free_port()
    log = tmp_root / "api.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port)],
        env={**os.environ, **barge_env},
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, 60)
    yield ApiProcess(f"http://127.0.0.1:{port}", proc.pid, log)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def api_url(api_process: ApiProcess) -> str:
    """A real `barge api` process (for CLI tests) on a free port."""
    return api_process.url


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path (``/tmp/barge-…``), for tests whose messages quote a
    path in full: pytest's own temporary paths grow long under xdist."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="barge-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
