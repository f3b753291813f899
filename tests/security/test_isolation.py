"""Tenant isolation on the real stack: tenant A names tenant B's storage every way a tenant can
name a location, and is refused before anything of B's is touched.

Each tenant has its own bucket as its scope. The API (and, where a job runs, the worker) reach S3
only through a recording proxy, so "B's objects were neither read nor written" is checked on the
requests the S3 server actually received, and on B's bucket afterwards."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.conftest import new_key
from tests.faults.conftest import World
from tests.faults.s3proxy import S3FaultProxy
from tests.helpers import (
    events,
    finetune_spec,
    inference_spec,
    put_jsonl,
    tiny_classifier,
    topic_examples,
    upload_dir,
    wait_until,
)


@dataclass
class Tenant:
    name: str
    bucket: str
    auth: dict[str, str]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def scoped_tenant(database_url: str, s3: Any, label: str) -> Tenant:
    """A tenant whose only storage (read and write) is a bucket of its own."""
    from db.models import Tenant as TenantRow
    from db.session import session_scope

    name = f"{label}-{uuid.uuid4().hex[:8]}"
    bucket = f"iso-{name}"
    s3.create_bucket(Bucket=bucket)
    key = new_key(database_url, name)
    scope = [f"s3://{bucket}/"]
    with session_scope(database_url) as session:
        session.execute(
            update(TenantRow)
            .where(TenantRow.name == name)
            .values(read_scopes=scope, write_scopes=scope)
        )
    return Tenant(name, bucket, {"Authorization": f"Bearer {key}"})


def touched(proxy: S3FaultProxy, bucket: str) -> list[str]:
    """The requests the S3 server received for ``bucket`` (path-style addressing)."""
    return [
        f"{e.method} {e.target}"
        for e in proxy.log
        if e.target == f"/{bucket}" or e.target.startswith((f"/{bucket}/", f"/{bucket}?"))
    ]


def objects(s3: Any, bucket: str) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed}


@dataclass
class Stack:
    api: TestClient
    proxy: S3FaultProxy
    a: Tenant
    b: Tenant
    b_model: str  # a real model directory of B's
    b_reviews: str  # B's private data
    a_model: str
    a_reviews: str
    a_train: str


@pytest.fixture(scope="module")
def stack(
    s3_server: Any, s3: Any, database_url: str, settings: Any, tmp_path_factory: Any
) -> Iterator[Stack]:
    from api.app import create_app

    tmp = tmp_path_factory.mktemp("isolation")
    a = scoped_tenant(database_url, s3, "tenanta")
    b = scoped_tenant(database_url, s3, "tenantb")
    model = tiny_classifier(tmp / "clf")
    rows = [{"id": f"r{i}", "text": f"private review {i}"} for i in range(5)]
    train = [dict(r, id=str(i)) for i, r in enumerate(topic_examples(30, seed=3))]
    stack_args = dict(
        b_model=upload_dir(s3, b.bucket, "private-models/m1", model),
        b_reviews=put_jsonl(s3, b.bucket, "reviews/in.jsonl", rows),
        a_model=upload_dir(s3, a.bucket, "models/m1", model),
        a_reviews=put_jsonl(s3, a.bucket, "reviews/in.jsonl", rows),
        a_train=put_jsonl(s3, a.bucket, "train/train.jsonl", train),
    )
    with S3FaultProxy(s3_server.url) as proxy:
        proxied = settings.model_copy(update={"s3_endpoint_url": proxy.url})
        with TestClient(create_app(proxied), raise_server_exceptions=False) as api:
            yield Stack(api, proxy, a, b, **stack_args)


def refused_without_touching_b(stack: Stack, s3: Any, method: str, path: str, body: Any) -> dict:
    """Send ``body`` as tenant A; it must be a 403 that names nothing of B's beyond what A sent,
    and B's bucket must be unread and unchanged."""
    before = objects(s3, stack.b.bucket)
    seen = len(stack.proxy.log)
    r = stack.api.request(method, path, json=body, headers=stack.a.auth)
    assert r.status_code == 403, r.text
    error = r.json()
    assert error["error"] == "forbidden" and "may not" in error["message"]
    text = r.text
    for secret in ("private review", "reviews/in.jsonl\\n", "config.json", '"id"', "text"):
        if secret not in json.dumps(body):
            assert secret not in text, text
    new_requests = [
        f"{e.method} {e.target}" for e in stack.proxy.log[seen:] if stack.b.bucket in e.target
    ]
    assert new_requests == [], new_requests
    assert objects(s3, stack.b.bucket) == before
    return error  # type: ignore[no-any-return]


class TestSubmit:
    def test_input_of_another_tenant(self, stack: Stack, s3: Any) -> None:
        spec = inference_spec(
            stack.a_model, stack.b_reviews, stack.a.uri("out/in1/"), id_field="text"
        )
        error = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)
        assert error["field"] == "input"

    def test_another_tenants_output_prefix_as_input(self, stack: Stack, s3: Any) -> None:
        spec = inference_spec(stack.a_model, stack.b.uri("outputs/"), stack.a.uri("out/in2/"))
        refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)

    def test_input_prefix_that_only_starts_like_its_own(self, stack: Stack, s3: Any) -> None:
        """``s3://bucket/tenanta`` would list ``tenanta-other/...`` too: only ``.../`` forms
        inside a scope are allowed."""
        spec = inference_spec(stack.a_model, stack.b.uri("rev"), stack.a.uri("out/in3/"))
        refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)

    def test_output_of_another_tenant(self, stack: Stack, s3: Any) -> None:
        spec = inference_spec(stack.a_model, stack.a_reviews, stack.b.uri("stolen-out/"))
        error = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)
        assert error["field"] == "output"

    def test_model_of_another_tenant(self, stack: Stack, s3: Any) -> None:
        spec = inference_spec(
            stack.b_model, stack.a_reviews, stack.a.uri("out/m/"), task="classify"
        )
        error = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)
        assert error["field"] == "model"

    @pytest.mark.parametrize("field", ["base_model", "train", "validation", "output"])
    def test_finetune_locations_of_another_tenant(self, stack: Stack, s3: Any, field: str) -> None:
        spec = finetune_spec(
            stack.a_model, stack.a_train, f"stolen-{field}", hyperparameters={"epochs": 1}
        )
        spec[field] = {
            "base_model": stack.b_model,
            "train": stack.b_reviews,
            "validation": stack.b_reviews,
            "output": stack.b.uri("finetunes/x/"),
        }[field]
        error = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)
        assert error["field"] == field

    def test_a_refusal_says_the_same_whether_or_not_the_object_exists(
        self, stack: Stack, s3: Any
    ) -> None:
        there = inference_spec(stack.a_model, stack.b_reviews, stack.a.uri("out/e1/"))
        absent = inference_spec(
            stack.a_model, stack.b.uri("reviews/none.jsonl"), stack.a.uri("out/e1/")
        )
        first = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", there)
        second = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", absent)
        assert first["message"].replace("in.jsonl", "X") == second["message"].replace(
            "none.jsonl", "X"
        )

    def test_its_own_storage_still_works(self, stack: Stack) -> None:
        spec = inference_spec(
            stack.a_model, stack.a_reviews, stack.a.uri("out/own/"), task="classify"
        )
        r = stack.api.post("/v1/jobs", json=spec, headers=stack.a.auth)
        assert r.status_code == 201, r.text
        stack.api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=stack.a.auth)

    def test_a_finetune_without_output_writes_under_its_own_scope(self, stack: Stack) -> None:
        spec = finetune_spec(stack.a_model, stack.a_train, "own-ft", hyperparameters={"epochs": 1})
        r = stack.api.post("/v1/jobs", json=spec, headers=stack.a.auth)
        assert r.status_code == 201, r.text
        assert r.json()["output"]["uri"].startswith(stack.a.uri("barge-finetunes/"))
        stack.api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=stack.a.auth)


class TestRegistry:
    def test_registering_another_tenants_directory(self, stack: Stack, s3: Any) -> None:
        body = {"name": "stolen", "uri": stack.b_model, "task": "classify"}
        error = refused_without_touching_b(stack, s3, "POST", "/v1/models", body)
        assert error["field"] == "uri"
        listed = stack.api.get("/v1/models", headers=stack.a.auth).json()
        assert all(m["name"] != "stolen" for m in listed["models"])

    def test_a_registry_entry_edited_to_point_elsewhere_resolves_to_nothing(
        self, stack: Stack, s3: Any, database_url: str
    ) -> None:
        from db.models import Model
        from db.session import session_scope

        body = {"name": "mine", "uri": stack.a_model, "task": "classify"}
        r = stack.api.post("/v1/models", json=body, headers=stack.a.auth)
        assert r.status_code == 201, r.text
        with session_scope(database_url) as session:  # a stale or edited row
            session.execute(update(Model).where(Model.name == "mine").values(uri=stack.b_model))
        spec = inference_spec("mine", stack.a_reviews, stack.a.uri("out/reg/"), task="classify")
        error = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)
        assert error["field"] == "model"

    def test_an_adapter_whose_base_is_another_tenants_resolves_to_nothing(
        self, stack: Stack, s3: Any, database_url: str
    ) -> None:
        """A registered LoRA adapter is served over the base its row records: a row whose base
        lies outside the tenant's scopes is refused before anything of it is read."""
        from db.models import Model
        from db.session import session_scope

        body = {"name": "my-adapter", "uri": stack.a_model, "task": "classify"}
        r = stack.api.post("/v1/models", json=body, headers=stack.a.auth)
        assert r.status_code == 201, r.text
        with session_scope(database_url) as session:  # an edited row: B's model as its base
            session.execute(
                update(Model)
                .where(Model.name == "my-adapter")
                .values(adapter_base_uri=stack.b_model)
            )
        spec = inference_spec(
            "my-adapter", stack.a_reviews, stack.a.uri("out/adapter/"), task="classify"
        )
        error = refused_without_touching_b(stack, s3, "POST", "/v1/jobs", spec)
        assert error["field"] == "model"


class TestDropRules:
    def test_a_rule_on_another_tenants_prefix(self, stack: Stack, s3: Any) -> None:
        body = {
            "name": "steal",
            "prefix": stack.b.uri("drops/"),
            "template": {"model": "x", "task": "embed"},
        }
        error = refused_without_touching_b(stack, s3, "POST", "/v1/drops", body)
        assert error["field"] == "prefix"

    def test_a_rule_whose_template_names_another_tenants_model(self, stack: Stack, s3: Any) -> None:
        body = {
            "name": "borrow",
            "prefix": stack.a.uri("drops-borrow/"),
            "template": {"model": stack.b_model, "task": "classify"},
        }
        error = refused_without_touching_b(stack, s3, "POST", "/v1/drops", body)
        assert error["field"] == "template.model"

    def test_one_owner_per_prefix(self, stack: Stack, database_url: str, s3: Any) -> None:
        """Two tenants sharing a bucket: a rule may not overlap another rule, or the storage
        another tenant may use."""
        from db.models import Tenant as TenantRow
        from db.session import session_scope

        shared = f"iso-shared-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=shared)
        c = scoped_tenant(database_url, s3, "tenantc")
        d = scoped_tenant(database_url, s3, "tenantd")
        with session_scope(database_url) as session:
            for t, extra in ((c, "c/"), (d, "d/")):
                session.execute(
                    update(TenantRow)
                    .where(TenantRow.name == t.name)
                    .values(
                        read_scopes=[f"s3://{shared}/"],
                        write_scopes=[f"s3://{shared}/common/", f"s3://{shared}/{extra}"],
                    )
                )
        rule = {
            "name": "r1",
            "prefix": f"s3://{shared}/common/in/",
            "template": {"model": "m", "task": "embed"},
        }
        r = stack.api.post("/v1/drops", json=rule, headers=c.auth)
        assert r.status_code == 409, r.text  # d may write there too
        assert "another tenant" in r.json()["message"]
        own = {
            "name": "r1",
            "prefix": f"s3://{shared}/c/in/",
            "template": {"model": "m", "task": "embed"},
        }
        assert stack.api.post("/v1/drops", json=own, headers=c.auth).status_code == 201
        inner = {
            "name": "r2",
            "prefix": f"s3://{shared}/c/in/sub/",
            "template": {"model": "m", "task": "embed"},
        }
        r = stack.api.post("/v1/drops", json=inner, headers=c.auth)
        assert r.status_code == 409 and "drop folder 'r1'" in r.json()["message"], r.text


def test_the_worker_refuses_a_job_row_edited_after_submit(
    world: World, s3: Any, s3_server: Any
) -> None:
    """A job accepted inside A's scope, then edited in the database to read B's data and write
    into B's bucket: the worker fails it before reading or writing anything of B's."""
    from db.models import Job
    from db.session import session_scope

    a = scoped_tenant(world.database_url, s3, "tenanta")
    b = scoped_tenant(world.database_url, s3, "tenantb")
    model = upload_dir(s3, a.bucket, "models/m1", tiny_classifier(world.tmp / "clf"))
    rows = [{"id": f"r{i}", "text": f"review {i}"} for i in range(4)]
    mine = put_jsonl(s3, a.bucket, "in.jsonl", rows)
    theirs = put_jsonl(s3, b.bucket, "secret.jsonl", rows)
    spec = inference_spec(model, mine, a.uri("out/"), task="classify")
    r = world.api.post("/v1/jobs", json=spec, headers=a.auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    before = objects(s3, b.bucket)
    with session_scope(world.database_url) as session:
        edited = dict(spec, input=theirs, output=b.uri("out/"))
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(spec=edited, output_uri=b.uri("out/"))
        )
    with S3FaultProxy(s3_server.url) as proxy:
        world.worker(BARGE_S3_ENDPOINT_URL=proxy.url)
        job = wait_until(
            lambda: (
                (j := world.api.get(f"/v1/jobs/{job_id}", headers=a.auth).json())["status"]
                in ("failed", "succeeded")
                and j
            ),
            timeout=90,
            what="the edited job to end",
        )
        assert job["status"] == "failed"
        assert "outside the storage this job's tenant may" in job["error"]
        assert b.bucket not in job["error"] and "secret" not in job["error"]
        assert touched(proxy, b.bucket) == []
    assert objects(s3, b.bucket) == before


def test_job_errors_show_no_worker_paths_or_hosts(
    api: TestClient, auth: dict[str, str], s3: Any, bucket: str, worker: Any, tmp_path: Path
) -> None:
    """A model directory the worker cannot load (transformers' message names the local copy):
    the job's error and events name the problem, not the worker's cache paths or its host."""
    import socket

    model_dir = tiny_classifier(tmp_path / "broken")
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("model_type")  # transformers names the local directory it cannot make out
    config["architectures"] = ["NoSuchModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    model = upload_dir(s3, bucket, "broken-model", model_dir)
    data = put_jsonl(s3, bucket, "in.jsonl", [{"id": "1", "text": "hello"}])
    spec = inference_spec(model, data, f"s3://{bucket}/out/", task="classify")
    r = api.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_until(
        lambda: (
            (j := api.get(f"/v1/jobs/{job_id}", headers=auth).json())["status"]
            in ("failed", "succeeded")
            and j
        ),
        timeout=120,
        what="the job to end",
    )
    shards = api.get(f"/v1/jobs/{job_id}/shards", headers=auth).json()
    shown = json.dumps(job) + json.dumps(events(api, auth, job_id)) + json.dumps(shards)
    assert job["status"] == "failed" and "model_type" in job["error"]
    for private in (str(tmp_path), "/cache/", socket.gethostname(), "celery@"):
        assert private not in shown, private
