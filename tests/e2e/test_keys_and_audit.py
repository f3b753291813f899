"""Keys (roles, expiry, revocation, rotation, last use), the admin API for tenants and keys, and
the audit log: over the real app on real Postgres and RabbitMQ, and the `barge` command as a
real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text

from tests.conftest import ApiProcess
from tests.helpers import inference_spec, put_jsonl
from tests.services import ROOT, free_port, wait_port

BARGE = [sys.executable, "-m", "cli"]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(database_url: str, tenant: str, role: str = "member") -> str:
    from db import repositories
    from db.session import session_scope

    with session_scope(database_url) as session:
        return repositories.create_api_key(session, tenant, role=role)


@pytest.fixture
def admin(database_url: str) -> dict[str, str]:
    """An operator's key (role admin) of a tenant of its own."""
    return bearer(new_key(database_url, _name("ops"), role="admin"))


def make_tenant(api: Any, admin: dict[str, str], buckets: list[str]) -> str:
    """A tenant that may read and write the given buckets, made through the admin API."""
    name = _name("acme")
    scopes = [f"s3://{b}/" for b in buckets]
    r = api.post(
        "/v1/admin/tenants",
        json={"name": name, "read_scopes": scopes, "write_scopes": scopes},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return name


def make_key(api: Any, admin: dict[str, str], tenant: str, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/admin/keys", json={"tenant": tenant, **body}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()  # type: ignore[no-any-return]


def audit_log(api: Any, admin: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/audit", params={"limit": 500, **params}, headers=admin)
    assert r.status_code == 200, r.text
    return r.json()["entries"]  # type: ignore[no-any-return]


def all_keys_in_db(database_url: str) -> str:
    """Everything the audit log holds, as text."""
    from db.session import session_scope

    with session_scope(database_url) as session:
        rows = session.execute(
            text("SELECT tenant_name, key_prefix, action, target, data::text FROM audit_log")
        )
        return "\n".join(" ".join(str(c) for c in row) for row in rows)


# --- roles ---------------------------------------------------------------------------------------


ADMIN_CALLS = [
    ("GET", "/v1/admin/tenants", None),
    ("POST", "/v1/admin/tenants", {"name": "sneaky"}),
    ("GET", "/v1/admin/tenants/sneaky", None),
    ("PATCH", "/v1/admin/tenants/sneaky", {"read_scopes": ["*"]}),
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"tenant": "sneaky", "role": "admin"}),
    ("POST", "/v1/admin/keys/bk_abcdefg/revoke", None),
    ("POST", "/v1/admin/keys/bk_abcdefg/rotate", None),
    ("GET", "/v1/audit", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_a_member_key_gets_403_on_every_admin_call(
    api: Any, auth: dict[str, str], method: str, path: str, body: Any
) -> None:
    r = api.request(method, path, json=body, headers=auth)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "forbidden"
    assert "needs an admin API key" in r.json()["message"]
    assert "is a member key" in r.json()["message"]


def test_admin_calls_without_a_key_are_401(api: Any) -> None:
    r = api.get("/v1/admin/tenants")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


# --- tenants -------------------------------------------------------------------------------------


def test_an_admin_creates_a_tenant_and_sets_its_scopes(
    api: Any, admin: dict[str, str], settings: Any
) -> None:
    name = _name("newco")
    r = api.post(
        "/v1/admin/tenants",
        json={"name": name, "read_scopes": ["s3://shared/datasets", "s3://newco-data/"]},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    shown = r.json()
    # Normalised (a prefix ends in "/"); write scopes come from the settings' template.
    assert shown["read_scopes"] == ["s3://shared/datasets/", "s3://newco-data/"]
    assert shown["read_scopes_default"] is False
    assert shown["write_scopes_default"] is True
    assert shown["write_scopes"] == [
        t.replace("{tenant}", name) for t in settings.tenant_write_scopes
    ]
    assert shown["active_keys"] == 0

    again = api.post("/v1/admin/tenants", json={"name": name}, headers=admin)
    assert again.status_code == 409 and "exists" in again.json()["message"]

    r = api.patch(
        f"/v1/admin/tenants/{name}", json={"write_scopes": ["s3://newco-data/out/"]}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["write_scopes"] == ["s3://newco-data/out/"]
    assert r.json()["read_scopes"] == ["s3://shared/datasets/", "s3://newco-data/"]  # untouched
    assert r.json()["updated_at"] is not None

    r = api.patch(f"/v1/admin/tenants/{name}", json={"read_scopes": None}, headers=admin)
    assert r.json()["read_scopes_default"] is True  # back to the template
    assert r.json()["write_scopes_default"] is False

    shown = api.get(f"/v1/admin/tenants/{name}", headers=admin).json()
    assert shown["write_scopes"] == ["s3://newco-data/out/"]


def test_an_admin_sets_and_removes_quota_overrides(
    api: Any, admin: dict[str, str], settings: Any
) -> None:
    name = _name("quota")
    r = api.post(
        "/v1/admin/tenants", json={"name": name, "quotas": {"max_active_jobs": 3}}, headers=admin
    )
    assert r.status_code == 201, r.text
    assert r.json()["quotas"]["max_active_jobs"] == 3
    assert r.json()["quota_overrides"] == {"max_active_jobs": 3}
    assert r.json()["quotas"]["max_shards_per_job"] == settings.quota_max_shards_per_job

    r = api.patch(
        f"/v1/admin/tenants/{name}",
        json={"quotas": {"max_shards_per_job": 50, "max_active_jobs": None}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["quota_overrides"] == {"max_shards_per_job": 50}
    assert r.json()["quotas"]["max_active_jobs"] == settings.quota_max_active_jobs

    for bad, field in [
        ({"max_active_jobs": 0}, "quotas.max_active_jobs"),
        ({"max_active_jobs": True}, "quotas.max_active_jobs"),
        ({"gpus": 3}, "quotas"),
    ]:
        r = api.patch(f"/v1/admin/tenants/{name}", json={"quotas": bad}, headers=admin)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["field"] == field, r.json()
    shown = api.get(f"/v1/admin/tenants/{name}", headers=admin).json()
    assert shown["quota_overrides"] == {"max_shards_per_job": 50}  # refusals changed nothing
    listed = api.get("/v1/admin/tenants", headers=admin).json()["tenants"]
    assert name in [t["name"] for t in listed]


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"name": "bad/name"}, "name", "String should match pattern"),
        ({"name": "ok", "read_scopes": ["s3://b/../x/"]}, "read_scopes", "read_scopes"),
        ({"name": "ok", "write_scopes": ["/etc/"]}, "write_scopes", "write_scopes"),
        ({"name": "ok", "read_scopes": "s3://b/"}, "read_scopes", "list"),
        ({"name": "ok", "colour": "blue"}, "colour", "unknown field"),
    ],
)
def test_bad_tenant_input_is_422_naming_the_field(
    api: Any, admin: dict[str, str], body: dict[str, Any], field: str, needle: str
) -> None:
    r = api.post("/v1/admin/tenants", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    assert needle in r.json()["message"], r.json()


def test_unknown_tenants_are_404(api: Any, admin: dict[str, str]) -> None:
    for method, path, body in [
        ("GET", "/v1/admin/tenants/nobody-here", None),
        ("PATCH", "/v1/admin/tenants/nobody-here", {"read_scopes": ["*"]}),
        ("POST", "/v1/admin/keys", {"tenant": "nobody-here"}),
        ("GET", "/v1/admin/keys?tenant=nobody-here", None),
    ]:
        r = api.request(method, path, json=body, headers=admin)
        assert r.status_code == 404, (path, r.text)
        assert "no tenant named 'nobody-here'" in r.json()["message"]


# --- keys ----------------------------------------------------------------------------------------


def test_a_revoked_key_is_refused_from_the_next_request(api: Any, admin: dict[str, str]) -> None:
    tenant = make_tenant(api, admin, [])
    made = make_key(api, admin, tenant, name="ci")
    key, prefix = made["key"], made["prefix"]
    assert key.startswith(prefix) and made["role"] == "member" and made["state"] == "active"
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 200

    r = api.post(f"/v1/admin/keys/{prefix}/revoke", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "revoked" and r.json()["revoked_at"]

    revoked_at = r.json()["revoked_at"]

    r = api.get("/v1/jobs", headers=bearer(key))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert f"API key {prefix}… was revoked" in r.json()["message"]
    assert key not in r.text
    # Revoking again changes nothing; by id works as well as by prefix.
    again = api.post(f"/v1/admin/keys/{made['id']}/revoke", headers=admin)
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked_at


def test_an_expired_key_is_refused_from_the_next_request(api: Any, admin: dict[str, str]) -> None:
    tenant = make_tenant(api, admin, [])
    made = make_key(api, admin, tenant, expires_in="2s")
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(seconds=1) < expires - datetime.now(UTC) <= timedelta(seconds=2)
    assert api.get("/v1/jobs", headers=bearer(made["key"])).status_code == 200
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    r = api.get("/v1/jobs", headers=bearer(made["key"]))
    assert r.status_code == 401, r.text
    assert f"API key {made['prefix']}… expired at" in r.json()["message"]
    listed = api.get("/v1/admin/keys", params={"tenant": tenant}, headers=admin).json()["keys"]
    assert [k["state"] for k in listed] == ["expired"]

    r = api.post("/v1/admin/keys", json={"tenant": tenant, "expires_in": "soon"}, headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "expires_in"
    assert "30d, 12h" in r.json()["message"]


def test_rotation_revokes_the_old_key_now_or_after_a_grace(api: Any, admin: dict[str, str]) -> None:
    tenant = make_tenant(api, admin, [])
    first = make_key(api, admin, tenant, name="deploy", role="admin")

    r = api.post(f"/v1/admin/keys/{first['prefix']}/rotate", headers=admin)
    assert r.status_code == 201, r.text
    rotated = r.json()
    assert r.headers["cache-control"] == "no-store"
    second = rotated["key"]
    assert rotated["new"]["prefix"] == second[:10] != first["prefix"]
    assert (rotated["new"]["name"], rotated["new"]["role"]) == ("deploy", "admin")
    assert rotated["new"]["tenant"] == tenant
    assert rotated["old"]["state"] == "revoked"
    assert api.get("/v1/jobs", headers=bearer(first["key"])).status_code == 401
    assert api.get("/v1/admin/tenants", headers=bearer(second)).status_code == 200

    r = api.post(
        f"/v1/admin/keys/{rotated['new']['prefix']}/rotate", json={"grace": "2s"}, headers=admin
    )
    assert r.status_code == 201, r.text
    third = r.json()
    assert third["old"]["state"] == "active" and third["old"]["revoked_at"]  # to come
    assert third["old"]["expires_at"] is None and third["new"]["expires_at"] is None
    # Both work during the grace; then only the new one.
    assert api.get("/v1/jobs", headers=bearer(second)).status_code == 200
    assert api.get("/v1/jobs", headers=bearer(third["key"])).status_code == 200
    # A key in its grace was rotated already: rotate its successor instead.
    r = api.post(f"/v1/admin/keys/{third['old']['prefix']}/rotate", headers=admin)
    assert r.status_code == 409 and "rotated already" in r.json()["message"]
    until = datetime.fromisoformat(third["old"]["revoked_at"])
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)
    r = api.get("/v1/jobs", headers=bearer(second))
    assert r.status_code == 401 and "was revoked" in r.json()["message"]
    assert api.get("/v1/jobs", headers=bearer(third["key"])).status_code == 200

    # The new key keeps the old one's lifetime, or gets its own.
    lived = make_key(api, admin, tenant, expires_in="30d")
    r = api.post(f"/v1/admin/keys/{lived['prefix']}/rotate", json={"grace": "1h"}, headers=admin)
    new = r.json()["new"]
    lifetime = datetime.fromisoformat(new["expires_at"]) - datetime.fromisoformat(new["created_at"])
    assert abs(lifetime - timedelta(days=30)) < timedelta(seconds=5)
    assert r.json()["old"]["revoked_at"] < r.json()["old"]["expires_at"]
    r = api.post(
        f"/v1/admin/keys/{new['prefix']}/rotate", json={"expires_in": "12h"}, headers=admin
    )
    lifetime = datetime.fromisoformat(r.json()["new"]["expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=11) < lifetime <= timedelta(hours=12)
    assert r.json()["old"]["state"] == "revoked"  # no grace asked: revoked at once
    # A grace cut short: revoking a key in its grace revokes it now.
    newest = r.json()["key"]
    r = api.post(f"/v1/admin/keys/{newest[:10]}/rotate", json={"grace": "1h"}, headers=admin)
    assert api.get("/v1/jobs", headers=bearer(newest)).status_code == 200
    revoked = api.post(f"/v1/admin/keys/{newest[:10]}/revoke", headers=admin).json()
    assert revoked["state"] == "revoked"
    assert api.get("/v1/jobs", headers=bearer(newest)).status_code == 401
    assert api.get("/v1/jobs", headers=bearer(r.json()["key"])).status_code == 200

    # A revoked key cannot be rotated; an unknown one is a 404.
    r = api.post(f"/v1/admin/keys/{first['prefix']}/rotate", headers=admin)
    assert r.status_code == 409 and "is revoked" in r.json()["message"]
    r = api.post("/v1/admin/keys/bk_zzzzzzz/rotate", headers=admin)
    assert r.status_code == 404 and "no API key" in r.json()["message"]


def test_keys_list_shows_prefix_name_role_times_and_never_the_key(
    api: Any, admin: dict[str, str], database_url: str
) -> None:
    from db.models import ApiKey
    from db.session import session_scope

    tenant = make_tenant(api, admin, [])
    made = make_key(api, admin, tenant, name="alice")
    listed = api.get("/v1/admin/keys", params={"tenant": tenant}, headers=admin)
    assert listed.status_code == 200
    (key,) = listed.json()["keys"]
    assert set(key) == {
        "id", "prefix", "tenant", "name", "role", "state",
        "created_at", "expires_at", "last_used_at", "revoked_at",
    }  # fmt: skip
    assert (key["prefix"], key["name"], key["role"]) == (made["prefix"], "alice", "member")
    assert key["last_used_at"] is None
    assert made["key"] not in listed.text

    # Used: last_used_at is set, and then written at most once a minute, not per request.
    assert api.get("/v1/jobs", headers=bearer(made["key"])).status_code == 200
    used = api.get("/v1/admin/keys", params={"tenant": tenant}, headers=admin).json()["keys"][0]
    assert used["last_used_at"] is not None
    with session_scope(database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == made["prefix"]))
        assert row is not None
        first_use = row.last_used_at
    for _ in range(5):
        assert api.get("/v1/jobs", headers=bearer(made["key"])).status_code == 200
    with session_scope(database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == made["prefix"]))
        assert row is not None and row.last_used_at == first_use
        # A minute later, the next request writes it again.
        row.last_used_at = first_use - timedelta(minutes=2)
    assert api.get("/v1/jobs", headers=bearer(made["key"])).status_code == 200
    with session_scope(database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == made["prefix"]))
        assert row is not None and row.last_used_at > first_use

    everyone = api.get("/v1/admin/keys", headers=admin).json()["keys"]
    assert made["prefix"] in [k["prefix"] for k in everyone]


def test_an_ambiguous_prefix_names_the_keys_it_matches(api: Any, admin: dict[str, str]) -> None:
    r = api.post("/v1/admin/keys/bk_/revoke", headers=admin)
    assert r.status_code == 409, r.text
    assert "matches several keys" in r.json()["message"]


# --- the audit log -------------------------------------------------------------------------------


def test_every_audited_action_is_in_the_log_with_tenant_key_and_target(
    api: Any,
    admin: dict[str, str],
    auth: dict[str, str],
    s3: Any,
    bucket: str,
    models_bucket: str,
    minilm_uri: str,
    database_url: str,
) -> None:
    admin_prefix = admin["Authorization"].removeprefix("Bearer ")[:10]
    tenant = make_tenant(api, admin, [bucket, models_bucket])
    made = make_key(api, admin, tenant, name="team")
    member = bearer(made["key"])
    prefix = made["prefix"]

    data = put_jsonl(s3, bucket, "in.jsonl", [{"id": i, "text": f"t {i}"} for i in range(3)])
    job = api.post(
        "/v1/jobs", json=inference_spec(minilm_uri, data, f"s3://{bucket}/out/"), headers=member
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=member).status_code == 200
    model = api.post(
        "/v1/models", json={"name": "audited", "uri": minilm_uri, "task": "embed"}, headers=member
    )
    assert model.status_code == 201, model.text
    drop = api.post(
        "/v1/drops",
        json={
            "name": "inbox",
            "prefix": f"s3://{bucket}/drops/",
            "template": {"model": minilm_uri, "task": "embed"},
        },
        headers=member,
    )
    assert drop.status_code == 201, drop.text
    assert api.delete("/v1/drops/inbox", headers=member).status_code == 204
    r = api.patch(
        f"/v1/admin/tenants/{tenant}", json={"write_scopes": [f"s3://{bucket}/"]}, headers=admin
    )
    assert r.status_code == 200, r.text
    rotated = api.post(f"/v1/admin/keys/{prefix}/rotate", headers=admin).json()
    api.post(f"/v1/admin/keys/{rotated['new']['prefix']}/revoke", headers=admin)

    entries = audit_log(api, admin, tenant=tenant)
    got = [(e["action"], e["key_prefix"], e["target"]) for e in reversed(entries)]
    assert got == [
        ("tenant.create", admin_prefix, f"tenant:{tenant}"),
        ("key.create", admin_prefix, f"key:{prefix}"),
        ("job.submit", prefix, f"job:{job_id}"),
        ("job.cancel", prefix, f"job:{job_id}"),
        ("model.register", prefix, "model:audited@1"),
        ("drop.create", prefix, "drop:inbox"),
        ("drop.delete", prefix, "drop:inbox"),
        ("tenant.update", admin_prefix, f"tenant:{tenant}"),
        ("key.rotate", admin_prefix, f"key:{prefix}"),
        ("key.revoke", admin_prefix, f"key:{rotated['new']['prefix']}"),
    ]
    assert all(e["tenant"] == tenant for e in entries)
    by_action = {e["action"]: e for e in entries}
    assert by_action["job.submit"]["data"]["output"] == f"s3://{bucket}/out/"
    assert by_action["job.submit"]["data"]["input"] == data
    assert by_action["job.cancel"]["data"]["was"] in ("queued", "running")
    assert by_action["model.register"]["data"]["uri"] == minilm_uri
    assert by_action["tenant.update"]["data"]["write_scopes"]["to"] == [f"s3://{bucket}/"]
    assert by_action["key.rotate"]["data"]["new_key"] == rotated["new"]["prefix"]
    admin_tenant = by_action["key.create"]["data"]["by"]
    assert admin_tenant.startswith("ops-")  # who acted, when it is another tenant
    assert "by" not in by_action["job.submit"]["data"]

    # Filters: action (one, or a family), since, and pages newest first.
    assert [e["action"] for e in audit_log(api, admin, tenant=tenant, action="job.submit")] == [
        "job.submit"
    ]
    family = [e["action"] for e in audit_log(api, admin, tenant=tenant, action="key.")]
    assert family == ["key.revoke", "key.rotate", "key.create"]
    assert audit_log(api, admin, tenant=tenant, since="2999-01-01T00:00:00Z") == []
    assert len(audit_log(api, admin, tenant=tenant, since="1h")) == len(entries)
    assert audit_log(api, admin, key_prefix=prefix)[0]["action"] == "drop.delete"
    pages: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {
            "tenant": tenant,
            "limit": 3,
            **({"cursor": cursor} if cursor else {}),
        }
        page = api.get("/v1/audit", params=params, headers=admin).json()
        pages += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == [e["id"] for e in entries]
    for bad in ({"since": "yesterday"}, {"cursor": "x"}, {"cursor": "-1"}, {"limit": 0}):
        r = api.get("/v1/audit", params=bad, headers=admin)
        assert r.status_code == 422, (bad, r.text)

    # A member cannot read the log, not even its own tenant's.
    r = api.get("/v1/audit", params={"tenant": tenant}, headers=bearer(rotated["key"]))
    assert r.status_code in (401, 403)
    assert api.get("/v1/audit", headers=auth).status_code == 403

    # No key is in the log: only prefixes.
    logged = all_keys_in_db(database_url)
    for key in (made["key"], rotated["key"], admin["Authorization"].removeprefix("Bearer ")):
        assert key not in logged and key[:10] in logged


def test_an_idempotent_replay_and_a_refused_submission_are_not_audited(
    api: Any, admin: dict[str, str], s3: Any, bucket: str, models_bucket: str, minilm_uri: str
) -> None:
    tenant = make_tenant(api, admin, [bucket, models_bucket])
    member = bearer(make_key(api, admin, tenant)["key"])
    data = put_jsonl(s3, bucket, "in.jsonl", [{"id": 1, "text": "t"}])
    spec = inference_spec(minilm_uri, data, f"s3://{bucket}/o/")
    headers = {**member, "Idempotency-Key": "once"}
    assert api.post("/v1/jobs", json=spec, headers=headers).status_code == 201
    assert api.post("/v1/jobs", json=spec, headers=headers).status_code == 200
    bad = api.post("/v1/jobs", json={**spec, "task": "nope"}, headers=member)
    assert bad.status_code == 422
    assert len(audit_log(api, admin, tenant=tenant, action="job.submit")) == 1


# --- keys never logged ---------------------------------------------------------------------------


@pytest.fixture
def chatty_api(barge_env: dict[str, str], tmp_path: Path) -> Iterator[ApiProcess]:
    """A real API process logging at debug level, access log included."""
    port = free_port()
    log = tmp_path / "api-debug.log"
    argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--log-level", "debug"],
        env={**os.environ, **barge_env},
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, 60)
        yield ApiProcess(f"http://127.0.0.1:{port}", proc.pid, log)
    finally:
        proc.terminate()
        proc.wait(10)


def test_keys_never_reach_the_api_log(chatty_api: ApiProcess, database_url: str) -> None:
    api_process = chatty_api
    admin_key = new_key(database_url, _name("ops"), role="admin")
    admin = bearer(admin_key)
    url = api_process.url
    log_start = api_process.log.stat().st_size
    tenant = _name("logged")
    r = requests.post(f"{url}/v1/admin/tenants", json={"name": tenant}, headers=admin, timeout=30)
    assert r.status_code == 201, r.text
    made = requests.post(
        f"{url}/v1/admin/keys", json={"tenant": tenant}, headers=admin, timeout=30
    ).json()
    rotated = requests.post(
        f"{url}/v1/admin/keys/{made['prefix']}/rotate",
        json={"grace": "1h"},
        headers=admin,
        timeout=30,
    ).json()
    keys = [admin_key, made["key"], rotated["key"]]
    for key in keys:
        assert requests.get(f"{url}/v1/jobs", headers=bearer(key), timeout=30).status_code == 200
    # Refusals: a revoked key, a key with a typo, a key in the wrong header form.
    requests.post(f"{url}/v1/admin/keys/{made['prefix']}/revoke", headers=admin, timeout=30)
    refused = [
        requests.get(f"{url}/v1/jobs", headers=bearer(made["key"]), timeout=30),
        requests.get(f"{url}/v1/jobs", headers=bearer(made["key"] + "x"), timeout=30),
        requests.get(f"{url}/v1/jobs", headers={"Authorization": made["key"]}, timeout=30),
        requests.get(f"{url}/v1/audit", headers=bearer(rotated["key"]), timeout=30),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401, 403]
    assert not any(made["key"] in r.text or rotated["key"] in r.text for r in refused)
    time.sleep(0.5)
    logged = api_process.log.read_bytes()[log_start:].decode(errors="replace")
    assert "/v1/admin/keys" in logged  # the access log is on, and is what was searched
    for key in keys:
        assert key not in logged and key[3:] not in logged


# --- the CLI -------------------------------------------------------------------------------------


def barge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BARGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_keys_tenants_and_audit_on_the_database(
    barge_env: dict[str, str], api: Any, database_url: str
) -> None:
    env = {**os.environ, **barge_env}
    tenant = _name("clico")

    r = barge("tenants", "create", tenant, "--read", "s3://clico-data/", "s3://shared/x", env=env)
    assert r.returncode == 0, r.stderr
    assert "read scopes (set for this tenant): s3://clico-data/, s3://shared/x/" in r.stdout
    assert "write scopes (default template)" in r.stdout
    r = barge("tenants", "create", tenant, env=env)
    assert r.returncode == 2 and "exists" in r.stderr
    r = barge("tenants", "create", "x/y", env=env)
    assert r.returncode == 2 and "tenant name" in r.stderr
    r = barge("tenants", "update", tenant, "--write", "s3://b/../c/", env=env)
    assert r.returncode == 2 and "write_scopes" in r.stderr

    r = barge("tenants", "update", tenant, "--write", "s3://clico-data/out/", env=env)
    assert r.returncode == 0, r.stderr
    assert "write scopes (set for this tenant): s3://clico-data/out/" in r.stdout
    r = barge(
        "tenants", "update", tenant, "--reset-scopes", "--quota", "max_active_jobs=4", env=env
    )
    assert r.returncode == 0, r.stderr
    assert "read scopes (default template)" in r.stdout
    assert any(
        line.split() == ["max_active_jobs", "4", "set", "for", "this", "tenant"]
        for line in r.stdout.splitlines()
    ), r.stdout
    assert any(
        line.split()[:1] == ["max_shards_per_job"] and line.endswith("default")
        for line in r.stdout.splitlines()
    ), r.stdout
    r = barge("tenants", "update", tenant, "--quota", "max_active_jobs=0", env=env)
    assert r.returncode == 2 and "max_active_jobs" in r.stderr
    r = barge("tenants", "show", tenant, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert '"read_scopes_default": true' in r.stdout
    r = barge("tenants", "list", env=env)
    assert r.returncode == 0 and tenant in r.stdout
    r = barge("tenants", "show", "nobody-at-all", env=env)
    assert r.returncode == 2 and "no tenant named" in r.stderr

    r = barge(
        "keys", "create", "--tenant", tenant, "--name", "robot", "--expires-in", "30d", env=env
    )
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("bk_") and "\n" not in key  # only the key on stdout
    assert "expires" in r.stderr and key[:10] in r.stderr and key not in r.stderr
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 200

    r = barge("keys", "list", "--tenant", tenant, env=env)
    assert r.returncode == 0, r.stderr
    assert "PREFIX" in r.stdout and key[:10] in r.stdout and "robot" in r.stdout
    assert "active" in r.stdout and key not in r.stdout

    r = barge("keys", "rotate", key[:10], "--grace", "1h", env=env)
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert new.startswith("bk_") and new != key and "stops working" in r.stderr
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 200  # the grace
    assert api.get("/v1/jobs", headers=bearer(new)).status_code == 200

    r = barge("keys", "revoke", key[:10], env=env)
    assert r.returncode == 0, r.stderr
    refused = api.get("/v1/jobs", headers=bearer(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["message"]
    r = barge("keys", "revoke", "bk_nothing", env=env)
    assert r.returncode == 2 and "no API key" in r.stderr
    r = barge("keys", "create", "--tenant", tenant, "--expires-in", "forever", env=env)
    assert r.returncode == 2 and "not a duration" in r.stderr

    r = barge("audit", "--tenant", tenant, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["AT", "TENANT", "KEY", "ACTION", "TARGET", "DATA"]
    actions = [line.split()[4] for line in lines[1:]]
    assert actions == [
        "key.revoke", "key.rotate", "key.create",
        "tenant.update", "tenant.update", "tenant.create",
    ]  # fmt: skip
    assert all("(cli)" in line and '"via":"cli"' in line for line in lines[1:])
    r = barge("audit", "--tenant", tenant, "--action", "key.", "--json", env=env)
    assert r.returncode == 0 and r.stdout.count('"key_prefix": null') == 3
    assert key not in r.stdout and new not in r.stdout
