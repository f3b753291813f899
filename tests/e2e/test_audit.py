"""Every way a change comes in is audited: each state-changing route of both APIs (/v1 and the
OpenAI-compatible /openai/v1), called once with a valid request over the real app and Postgres,
leaves its entry naming the action, the principal (the key's prefix) and the target; and the ways
in that are no route, a dropped file's job and a fine-tune's registered model, leave theirs as a
worker acting for the tenant (no key, ``via: worker``).

``CALLS`` holds one minimal valid call per route: a new state-changing route with no entry there
fails ``test_every_state_changing_route_has_a_call``, so none is left unaudited by oversight."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from starlette.routing import Mount

from tests.helpers import (
    finetune_spec,
    inference_spec,
    put_jsonl,
    topic_examples,
    wait_job,
    wait_until,
)
from tests.services import ROOT

pytestmark = pytest.mark.e2e

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
FILES_BUCKET = "barge"  # BARGE_OPENAI_FILES_PREFIX's default: s3://barge/{tenant}/openai-files/


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class World:
    """A tenant made through the admin API, with a member key, beside an admin's key; the
    buckets and models the calls use."""

    api: Any
    s3: Any
    bucket: str
    minilm_uri: str
    generator_uri: str
    database_url: str
    admin: dict[str, str]
    admin_prefix: str
    tenant: str
    member: dict[str, str]
    member_prefix: str
    member_key: str
    console: Any  # a client of the same app with the console on (a secret set)

    def post(self, path: str, as_admin: bool = False, **kwargs: Any) -> dict[str, Any]:
        r = self.api.post(path, headers=self.admin if as_admin else self.member, **kwargs)
        assert r.status_code in (200, 201), r.text
        return r.json()  # type: ignore[no-any-return]

    def console_form(self, path: str) -> str:
        """Sign in to the console with the member's key; the CSRF token of ``path``'s forms."""
        form = self.console.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        data = {"key": self.member_key, "csrf": csrf.group(1), "next": "/ui/jobs"}
        assert self.console.post("/ui/login", data=data).status_code == 303
        found = re.search(r'name="csrf" value="([^"]+)"', self.console.get(path).text)
        assert found, path
        return found.group(1)

    def job(self, output: str = "out") -> str:
        data = put_jsonl(self.s3, self.bucket, f"{output}.jsonl", [{"id": 1, "text": "t"}])
        spec = inference_spec(self.minilm_uri, data, f"s3://{self.bucket}/{output}/")
        return str(self.post("/v1/jobs", json=spec)["id"])

    def upload(self, rows: list[dict[str, Any]], purpose: str) -> str:
        content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        files = {"file": ("f.jsonl", content)}
        return str(self.post("/openai/v1/files", files=files, data={"purpose": purpose})["id"])

    def batch(self) -> str:
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": self.minilm_uri, "input": "hello"},
        }
        body = {"input_file_id": self.upload([line], "batch"), "endpoint": "/v1/embeddings"}
        return str(self.post("/openai/v1/batches", json=body)["id"])

    def fine_tuning_job(self) -> str:
        rows = [{"prompt": f"say {i}", "completion": f" {i}"} for i in range(8)]
        body = {"model": self.generator_uri, "training_file": self.upload(rows, "fine-tune")}
        return str(self.post("/openai/v1/fine_tuning/jobs", json=body)["id"])

    def job_of(self, model: type, row_id: str) -> str:
        """The Barge job an OpenAI batch or fine-tuning job runs as."""
        from db.session import session_scope

        with session_scope(self.database_url) as session:
            job_id = session.scalar(select(model.job_id).where(model.id == row_id))  # type: ignore[attr-defined]
        return str(job_id)


@pytest.fixture(scope="module")
def console_app(settings: Any) -> Any:
    from api.app import create_app

    return create_app(settings.model_copy(update={"console_secret": "c" * 40}))


@pytest.fixture
def console(console_app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(console_app, raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


@pytest.fixture
def world(
    api: Any,
    console: Any,
    s3: Any,
    bucket: str,
    minilm_uri: str,
    generator_uri: str,
    database_url: str,
) -> World:
    from tests.e2e.test_keys_and_audit import new_key

    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=FILES_BUCKET)
    admin_key = new_key(database_url, _name("ops"), role="admin")
    admin = bearer(admin_key)
    tenant = _name("acme")  # the settings' scope templates: every bucket, in these tests
    assert api.post("/v1/admin/tenants", json={"name": tenant}, headers=admin).status_code == 201
    made = api.post("/v1/admin/keys", json={"tenant": tenant}, headers=admin).json()
    return World(
        api,
        s3,
        bucket,
        minilm_uri,
        generator_uri,
        database_url,
        admin,
        admin_key[:10],
        tenant,
        bearer(made["key"]),
        made["prefix"],
        made["key"],
        console,
    )


# An entry a call must leave: (action, target, who acted: "member" or "admin").
Expected = tuple[str, str, str]


def submit_job(w: World) -> list[Expected]:
    return [("job.submit", f"job:{w.job()}", "member")]


def cancel_job(w: World) -> list[Expected]:
    job_id = w.job()
    w.post(f"/v1/jobs/{job_id}/cancel")
    return [("job.cancel", f"job:{job_id}", "member")]


def retry_job(w: World) -> list[Expected]:
    """A job whose one shard failed (set so in the database: no worker runs here) is
    retried: a child job over its record."""
    job_id = failed_shard_job(w)
    child = w.post(f"/v1/jobs/{job_id}/retry", json={"batch_size": 4})["id"]
    return [("job.retry", f"job:{job_id}", "member"), ("job.submit", f"job:{child}", "member")]


def failed_shard_job(w: World) -> str:
    """A job whose one shard failed, its record unrun, set so in the database."""
    from db import state
    from db.models import Job, Shard
    from db.session import session_scope

    job_id = w.job("retried")
    with session_scope(w.database_url) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        state.transition(session, job, state.RUNNING)
        session.add(
            Shard(
                job_id=job.id,
                index=0,
                status="failed",
                source_uri=job.spec["input"],
                input_format="jsonl",
                start_record=0,
                record_count=1,
                record_offset=0,
                first_line=1,
                attempt=3,
            )
        )
        job.records_total, job.shards_total, job.manifest = 1, 1, {"status": "failed"}
        state.transition(session, job, state.FAILED, error="failed for the test")
    return job_id


def retry_batch(w: World) -> list[Expected]:
    """A batch cancelled with its request unrun (its job ended and its error file written
    here: no worker runs) is retried as a new batch."""
    from barge.storage import S3Uri
    from db import state
    from db.models import Job, OpenAIBatch
    from db.session import session_scope
    from services import openai_files

    batch_id = w.batch()
    job_id = w.job_of(OpenAIBatch, batch_id)
    key = f"errors-{batch_id}.jsonl"
    w.s3.put_object(Bucket=w.bucket, Key=key, Body=b'{"custom_id": "a", "response": null}\n')
    with session_scope(w.database_url) as session:
        job = session.get(Job, uuid.UUID(job_id))
        batch = session.get(OpenAIBatch, batch_id)
        assert job is not None and batch is not None
        state.transition(session, job, state.CANCELLING)
        state.transition(session, job, state.CANCELLED)
        uri = S3Uri(w.bucket, key)
        batch.error_file_id = openai_files.add_output_file(
            session, job.tenant_id, uri, "e.jsonl", 40
        ).id
    new = w.post(f"/openai/v1/batches/{batch_id}/retry")["id"]
    return [
        ("batch.retry", f"batch:{batch_id}", "member"),
        ("batch.create", f"batch:{new}", "member"),
    ]


def running(w: World, job_id: str) -> str:
    """Move the job to running, as planning would (no worker runs in these tests)."""
    from db import state
    from db.models import Job
    from db.session import session_scope

    with session_scope(w.database_url) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        state.transition(session, job, state.RUNNING)
    return job_id


def pause_job(w: World) -> list[Expected]:
    job_id = running(w, w.job())
    assert w.post(f"/v1/jobs/{job_id}/pause")["status"] == "paused"  # no shard of it runs
    return [("job.pause", f"job:{job_id}", "member")]


def resume_job(w: World) -> list[Expected]:
    job_id = running(w, w.job())
    w.post(f"/v1/jobs/{job_id}/pause")
    assert w.post(f"/v1/jobs/{job_id}/resume")["status"] == "running"
    return [("job.resume", f"job:{job_id}", "member")]


def register_model(w: World) -> list[Expected]:
    w.post("/v1/models", json={"name": "audited", "uri": w.minilm_uri, "task": "embed"})
    return [("model.register", "model:audited@1", "member")]


def add_drop(w: World) -> list[Expected]:
    template = {"model": w.minilm_uri, "task": "embed"}
    body = {"name": "inbox", "prefix": f"s3://{w.bucket}/drops/", "template": template}
    w.post("/v1/drops", json=body)
    return [("drop.create", "drop:inbox", "member")]


def remove_drop(w: World) -> list[Expected]:
    add_drop(w)
    assert w.api.delete("/v1/drops/inbox", headers=w.member).status_code == 204
    return [("drop.delete", "drop:inbox", "member")]


# A public address given literally: create checks it without DNS, and no test sends to it.
WEBHOOK_URL = "https://93.184.216.34/hooks/barge"


def create_webhook(w: World) -> list[Expected]:
    made = w.post("/v1/webhooks", json={"url": WEBHOOK_URL, "events": ["job.succeeded"]})
    return [("webhook.create", f"webhook:{made['id']}", "member")]


def delete_webhook(w: World) -> list[Expected]:
    made = w.post("/v1/webhooks", json={"url": WEBHOOK_URL, "events": ["job.failed"]})
    assert w.api.delete(f"/v1/webhooks/{made['id']}", headers=w.member).status_code == 204
    return [("webhook.delete", f"webhook:{made['id']}", "member")]


def rotate_webhook(w: World) -> list[Expected]:
    made = w.post("/v1/webhooks", json={"url": WEBHOOK_URL, "events": ["job.failed"]})
    rotated = w.post(f"/v1/webhooks/{made['id']}/rotate")
    assert rotated["secret"] != made["secret"]
    return [("webhook.rotate", f"webhook:{made['id']}", "member")]


def create_tenant(w: World) -> list[Expected]:
    name = _name("beta")
    w.post("/v1/admin/tenants", as_admin=True, json={"name": name})
    return [("tenant.create", f"tenant:{name}", "admin")]


def update_tenant(w: World) -> list[Expected]:
    r = w.api.patch(
        f"/v1/admin/tenants/{w.tenant}",
        json={"quotas": {"max_active_jobs": 7}},
        headers=w.admin,
    )
    assert r.status_code == 200, r.text
    return [("tenant.update", f"tenant:{w.tenant}", "admin")]


def create_key(w: World) -> list[Expected]:
    made = w.post("/v1/admin/keys", as_admin=True, json={"tenant": w.tenant})
    return [("key.create", f"key:{made['prefix']}", "admin")]


def revoke_key(w: World) -> list[Expected]:
    w.post(f"/v1/admin/keys/{w.member_prefix}/revoke", as_admin=True)
    return [("key.revoke", f"key:{w.member_prefix}", "admin")]


def rotate_key(w: World) -> list[Expected]:
    w.post(f"/v1/admin/keys/{w.member_prefix}/rotate", as_admin=True)
    return [("key.rotate", f"key:{w.member_prefix}", "admin")]


def upload_file(w: World) -> list[Expected]:
    return [("file.upload", f"file:{w.upload([{'a': 1}], 'batch')}", "member")]


def delete_file(w: World) -> list[Expected]:
    file_id = w.upload([{"a": 1}], "batch")
    assert w.api.delete(f"/openai/v1/files/{file_id}", headers=w.member).status_code == 200
    return [("file.delete", f"file:{file_id}", "member")]


def create_batch(w: World) -> list[Expected]:
    from db.models import OpenAIBatch

    batch_id = w.batch()
    job_id = w.job_of(OpenAIBatch, batch_id)
    return [
        ("batch.create", f"batch:{batch_id}", "member"),
        ("job.submit", f"job:{job_id}", "member"),
    ]


def cancel_batch(w: World) -> list[Expected]:
    from db.models import OpenAIBatch

    batch_id = w.batch()
    w.post(f"/openai/v1/batches/{batch_id}/cancel")
    job_id = w.job_of(OpenAIBatch, batch_id)
    return [
        ("batch.cancel", f"batch:{batch_id}", "member"),
        ("job.cancel", f"job:{job_id}", "member"),
    ]


def create_fine_tuning_job(w: World) -> list[Expected]:
    from db.models import OpenAIFineTuningJob

    ft_id = w.fine_tuning_job()
    job_id = w.job_of(OpenAIFineTuningJob, ft_id)
    return [
        ("fine_tuning.create", f"fine_tuning_job:{ft_id}", "member"),
        ("job.submit", f"job:{job_id}", "member"),
    ]


def cancel_fine_tuning_job(w: World) -> list[Expected]:
    from db.models import OpenAIFineTuningJob

    ft_id = w.fine_tuning_job()
    w.post(f"/openai/v1/fine_tuning/jobs/{ft_id}/cancel")
    job_id = w.job_of(OpenAIFineTuningJob, ft_id)
    return [
        ("fine_tuning.cancel", f"fine_tuning_job:{ft_id}", "member"),
        ("job.cancel", f"job:{job_id}", "member"),
    ]


def pause_fine_tuning_job(w: World) -> list[Expected]:
    from db.models import OpenAIFineTuningJob

    ft_id = w.fine_tuning_job()
    job_id = running(w, w.job_of(OpenAIFineTuningJob, ft_id))
    assert w.post(f"/openai/v1/fine_tuning/jobs/{ft_id}/pause")["status"] == "paused"
    return [
        ("fine_tuning.pause", f"fine_tuning_job:{ft_id}", "member"),
        ("job.pause", f"job:{job_id}", "member"),
    ]


def resume_fine_tuning_job(w: World) -> list[Expected]:
    from db.models import OpenAIFineTuningJob

    ft_id = w.fine_tuning_job()
    job_id = running(w, w.job_of(OpenAIFineTuningJob, ft_id))
    w.post(f"/openai/v1/fine_tuning/jobs/{ft_id}/pause")
    assert w.post(f"/openai/v1/fine_tuning/jobs/{ft_id}/resume")["status"] == "running"
    return [
        ("fine_tuning.resume", f"fine_tuning_job:{ft_id}", "member"),
        ("job.resume", f"job:{job_id}", "member"),
    ]


def console_cancel(w: World) -> list[Expected]:
    job_id = w.job()
    csrf = w.console_form(f"/ui/jobs/{job_id}")
    r = w.console.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert r.status_code == 303, r.text
    return [("job.cancel", f"job:{job_id}", "member")]


def console_pause(w: World) -> list[Expected]:
    job_id = running(w, w.job())
    csrf = w.console_form(f"/ui/jobs/{job_id}")
    r = w.console.post(f"/ui/jobs/{job_id}/pause", data={"csrf": csrf})
    assert r.status_code == 303, r.text
    return [("job.pause", f"job:{job_id}", "member")]


def console_resume(w: World) -> list[Expected]:
    job_id = running(w, w.job())
    w.post(f"/v1/jobs/{job_id}/pause")
    csrf = w.console_form(f"/ui/jobs/{job_id}")
    r = w.console.post(f"/ui/jobs/{job_id}/resume", data={"csrf": csrf})
    assert r.status_code == 303, r.text
    return [("job.resume", f"job:{job_id}", "member")]


def console_retry(w: World) -> list[Expected]:
    from db import state
    from db.models import Job
    from db.session import session_scope

    job_id = w.job()
    with session_scope(w.database_url) as session:  # no worker runs here: the job failed
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        state.transition(session, job, state.RUNNING)
        state.transition(session, job, state.FAILED, error="failed for the test")
    csrf = w.console_form(f"/ui/jobs/{job_id}")
    r = w.console.post(f"/ui/jobs/{job_id}/retry", data={"csrf": csrf})
    assert r.status_code == 303, r.text
    retried = r.headers["location"].rstrip("/").rsplit("/", 1)[-1]
    return [("job.submit", f"job:{retried}", "member")]


def console_retry_failed(w: World) -> list[Expected]:
    job_id = failed_shard_job(w)
    csrf = w.console_form(f"/ui/jobs/{job_id}")
    r = w.console.post(f"/ui/jobs/{job_id}/retry-failed", data={"csrf": csrf})
    assert r.status_code == 303, r.text
    child = r.headers["location"].rstrip("/").rsplit("/", 1)[-1]
    return [("job.retry", f"job:{job_id}", "member"), ("job.submit", f"job:{child}", "member")]


# One minimal valid call per state-changing route, by (method, path).
CALLS: dict[tuple[str, str], Callable[[World], list[Expected]]] = {
    ("POST", "/v1/jobs"): submit_job,
    ("POST", "/v1/jobs/{job_id}/cancel"): cancel_job,
    ("POST", "/v1/jobs/{job_id}/retry"): retry_job,
    ("POST", "/v1/jobs/{job_id}/pause"): pause_job,
    ("POST", "/v1/jobs/{job_id}/resume"): resume_job,
    ("POST", "/v1/models"): register_model,
    ("POST", "/v1/drops"): add_drop,
    ("DELETE", "/v1/drops/{name}"): remove_drop,
    ("POST", "/v1/webhooks"): create_webhook,
    ("DELETE", "/v1/webhooks/{webhook_id}"): delete_webhook,
    ("POST", "/v1/webhooks/{webhook_id}/rotate"): rotate_webhook,
    ("POST", "/v1/admin/tenants"): create_tenant,
    ("PATCH", "/v1/admin/tenants/{name}"): update_tenant,
    ("POST", "/v1/admin/keys"): create_key,
    ("POST", "/v1/admin/keys/{key_ref}/revoke"): revoke_key,
    ("POST", "/v1/admin/keys/{key_ref}/rotate"): rotate_key,
    ("POST", "/openai/v1/files"): upload_file,
    ("DELETE", "/openai/v1/files/{file_id}"): delete_file,
    ("POST", "/openai/v1/batches"): create_batch,
    ("POST", "/openai/v1/batches/{batch_id}/cancel"): cancel_batch,
    ("POST", "/openai/v1/batches/{batch_id}/retry"): retry_batch,
    ("POST", "/openai/v1/fine_tuning/jobs"): create_fine_tuning_job,
    ("POST", "/openai/v1/fine_tuning/jobs/{job_id}/cancel"): cancel_fine_tuning_job,
    ("POST", "/openai/v1/fine_tuning/jobs/{job_id}/pause"): pause_fine_tuning_job,
    ("POST", "/openai/v1/fine_tuning/jobs/{job_id}/resume"): resume_fine_tuning_job,
    ("POST", "/ui/jobs/{job_id}/cancel"): console_cancel,
    ("POST", "/ui/jobs/{job_id}/pause"): console_pause,
    ("POST", "/ui/jobs/{job_id}/resume"): console_resume,
    ("POST", "/ui/jobs/{job_id}/retry"): console_retry,
    ("POST", "/ui/jobs/{job_id}/retry-failed"): console_retry_failed,
}

# Routes that take a POST but change nothing Barge keeps: why each is not audited.
NOT_AUDITED = {
    ("POST", "/ui/login"): "signing in to the console sets a session cookie, no row",
    ("POST", "/ui/logout"): "signing out clears the cookie, no row",
}


def state_changing_routes(app: FastAPI, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route that may change state, mounted apps' routes included."""
    found: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount) and isinstance(route.route.app, FastAPI):
            found |= state_changing_routes(route.route.app, prefix + (route.path or ""))
        elif route.methods:
            found |= {(m, prefix + (route.path or "")) for m in route.methods & STATE_CHANGING}
    return found


def test_every_state_changing_route_has_a_call(app: FastAPI) -> None:
    routes = state_changing_routes(app)
    assert ("DELETE", "/openai/v1/files/{file_id}") in routes  # the mounted app is walked
    assert set(NOT_AUDITED) <= routes, "NOT_AUDITED names routes the apps no longer have"
    missing = sorted(routes - set(CALLS) - set(NOT_AUDITED))
    assert not missing, f"state-changing routes with no call in CALLS (add one): {missing}"
    assert not sorted(set(CALLS) - routes), "CALLS names routes the apps no longer have"


def entries(w: World, tenant: str | None = None) -> list[dict[str, Any]]:
    """The audit log's entries concerning ``tenant`` (the world's by default)."""
    params = {"limit": 500, "tenant": tenant or w.tenant}
    r = w.api.get("/v1/audit", params=params, headers=w.admin)
    assert r.status_code == 200, r.text
    return r.json()["entries"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("route", sorted(CALLS), ids=lambda r: f"{r[0]} {r[1]}")
def test_each_state_changing_route_is_audited(route: tuple[str, str], world: World) -> None:
    expected = CALLS[route](world)
    prefixes = {"member": world.member_prefix, "admin": world.admin_prefix}
    for action, target, who in expected:
        concerned = target.removeprefix("tenant:") if action == "tenant.create" else world.tenant
        found = {(e["action"], e["target"]): e for e in entries(world, concerned)}
        entry = found.get((action, target))
        assert entry is not None, f"{route}: no {action} entry for {target} in {sorted(found)}"
        assert entry["key_prefix"] == prefixes[who], entry
        if who == "admin":
            assert entry["data"]["by"].startswith("ops-"), entry  # an admin of another tenant


# --- the ways in that are no route: a worker acting for the tenant -----------------------------


@pytest.fixture
def scheduler(barge_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """A scheduler scanning drop folders every second (the shared worker runs the scans)."""
    env = {**os.environ, **barge_env, "BARGE_DROP_SCAN_SECONDS": "1"}
    env["BARGE_HOME"] = str(tmp_path / "scheduler")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "scheduler"],
        env=env,
        cwd=ROOT,
        stdout=(tmp_path / "scheduler.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def by_worker(w: World, action: str) -> list[dict[str, Any]]:
    return [e for e in entries(w) if e["action"] == action and e["key_prefix"] is None]


def test_a_dropped_files_job_is_audited_as_the_worker(
    world: World, worker: Any, scheduler: None
) -> None:
    add_drop(world)
    world.s3.put_object(
        Bucket=world.bucket,
        Key="drops/incoming/reviews.jsonl",
        Body=json.dumps({"id": 1, "text": "dropped"}).encode(),
    )
    submitted = wait_until(
        lambda: by_worker(world, "job.submit"), timeout=120, what="the drop's job"
    )
    jobs = world.api.get("/v1/jobs", headers=world.member).json()["jobs"]
    assert [e["target"] for e in submitted] == [f"job:{j['id']}" for j in jobs]
    assert submitted[0]["data"]["via"] == "worker"
    assert submitted[0]["data"]["input"] == f"s3://{world.bucket}/drops/incoming/reviews.jsonl"


def test_a_fine_tunes_model_is_registered_and_audited_as_the_worker(
    world: World, worker: Any, encoder_uri: str
) -> None:
    name = _name("topics")
    train = put_jsonl(world.s3, world.bucket, "ft/train.jsonl", topic_examples(32, seed=1))
    spec = finetune_spec(encoder_uri, train, name, hyperparameters={"epochs": 1, "batch_size": 16})
    job_id = world.post("/v1/jobs", json=spec)["id"]
    assert wait_job(world.api, world.member, job_id)["status"] == "succeeded"
    [registered] = by_worker(world, "model.register")
    assert registered["target"] == f"model:{name}@1"
    assert registered["data"]["via"] == "worker"
    assert registered["data"]["job"] == job_id
