"""Fixtures of the OpenAI-compatible surface's tests: a real `barge api` process with model
aliases and small limits, and an official ``openai`` client with a new tenant's key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_key
from tests.helpers import tiny_chat_model, upload_dir
from tests.services import ROOT, free_port, wait_port

MAX_TASKS = 50
MAX_FILE_BYTES = 3_000_000


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")


@pytest.fixture(scope="module")
def chat_uri(s3: Any, models_bucket: str, chat_dir: Path) -> str:
    return upload_dir(s3, models_bucket, "tiny-chat", chat_dir)


@pytest.fixture(scope="module")
def openai_api(
    barge_env: dict[str, str], tmp_root: Path, s3: Any, minilm_uri: str, chat_uri: str
) -> Iterator[str]:
    """A real `barge api` process with model aliases and small limits: its /openai/v1 URL."""
    import contextlib

    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket="barge")  # BARGE_OPENAI_FILES_PREFIX: s3://barge/{tenant}/...
    aliases = {
        "text-embedding-3-small": minilm_uri,
        "gpt-3.5-turbo-0125": chat_uri,
        "gpt-4o-mini": chat_uri,
    }
    port = free_port()
    log = tmp_root / "api-openai.log"
    env = {
        **os.environ,
        **barge_env,
        "BARGE_OPENAI_MODEL_ALIASES": json.dumps(aliases),
        "BARGE_OPENAI_MAX_BATCH_TASKS": str(MAX_TASKS),
        "BARGE_OPENAI_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, 60)
    yield f"http://127.0.0.1:{port}/openai/v1"
    proc.terminate()
    proc.wait(10)


def new_tenant_key(database_url: str) -> str:
    return new_key(database_url, f"oa-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def client(openai_api: str, database_url: str, worker: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=openai_api, api_key=new_tenant_key(database_url), max_retries=0)
