"""The console's pages served in-process against a real Postgres: sign-in and what ends a
session (a revoked key, a forged cookie), the console off without a secret, search, the admin
pages, the JSON a job page polls. The browser-level checks (live progress, charts, cancel,
the cookie's flags as Chromium keeps them) are in tests/e2e/test_console.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from db import repositories as repo
from db.base import utcnow
from db.session import session_scope
from db.state import RUNNING
from tests.factories import make_job, make_shard

SECRET = "s" * 40


@pytest.fixture(scope="module")
def console_app(settings: Any) -> Any:
    from api.app import create_app

    return create_app(settings.model_copy(update={"console_secret": SECRET}))


@pytest.fixture
def client(console_app: Any) -> Iterator[TestClient]:
    with TestClient(console_app, raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


def new_key(url: str, role: str = "member") -> tuple[str, uuid.UUID]:
    with session_scope(url) as session:
        key = repo.create_api_key(session, f"console-{uuid.uuid4().hex[:8]}", role=role)
        found = repo.key_and_tenant(session, key)
        assert found is not None
        return key, found[1].id


def sign_in(client: TestClient, key: str) -> None:
    form = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    answer = client.post("/ui/login", data={"key": key, "csrf": csrf.group(1), "next": "/ui/jobs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/jobs", answer.text


def job_of(url: str, tenant_id: uuid.UUID, **meta: Any) -> uuid.UUID:
    with session_scope(url) as session:
        tenant = repo.tenant_by_id(session, tenant_id)
        assert tenant is not None
        job = make_job(session, tenant, status=RUNNING)
        job.meta = meta
        make_shard(session, job)
        return job.id


def test_the_console_is_off_without_a_secret_outside_dev(api: TestClient) -> None:
    page = api.get("/ui/jobs")
    assert page.status_code == 503
    assert "BARGE_CONSOLE_SECRET" in page.text and "text/html" in page.headers["content-type"]


def test_sign_in_opens_a_session_that_names_the_key_not_the_key_itself(
    client: TestClient, database_url: str
) -> None:
    assert client.get("/ui/jobs").headers["location"].startswith("/ui/login?next=/ui/jobs")
    key, tenant_id = new_key(database_url)
    job_id = job_of(database_url, tenant_id)

    sign_in(client, key)

    cookie = client.cookies.get("barge_console")
    assert cookie and key not in cookie and key.split("_", 1)[1][:12] not in cookie
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and str(job_id)[:8] in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_a_wrong_key_stays_on_the_sign_in_page(client: TestClient) -> None:
    form = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    answer = client.post("/ui/login", data={"key": "bk_nope", "csrf": csrf.group(1)})
    assert answer.status_code == 401 and "unknown API key" in answer.text
    assert client.get("/ui/jobs").status_code == 303


def test_a_revoked_key_ends_its_sessions(client: TestClient, database_url: str) -> None:
    key, _ = new_key(database_url)
    sign_in(client, key)
    assert client.get("/ui/jobs").status_code == 200
    with session_scope(database_url) as session:
        found = repo.key_and_tenant(session, key)
        assert found is not None
        repo.revoke_api_key(session, found[0], utcnow())

    answer = client.get("/ui/jobs")
    assert answer.status_code == 303 and "revoked" in answer.headers["location"]


def test_a_forged_or_tampered_cookie_is_no_session(client: TestClient, database_url: str) -> None:
    key, _ = new_key(database_url)
    sign_in(client, key)
    value = client.cookies["barge_console"]
    payload, signature = value.split(".")
    client.cookies.clear()
    for forged in (f"{payload}.{signature[:-2]}AA", f"{payload[:-2]}AA.{signature}", "x.y", ""):
        answer = client.get("/ui/jobs", headers={"Cookie": f"barge_console={forged}"})
        assert answer.status_code == 303, forged
    assert client.get("/ui/jobs", headers={"Cookie": f"barge_console={value}"}).status_code == 200


def test_search_finds_jobs_by_metadata_and_id(client: TestClient, database_url: str) -> None:
    key, tenant_id = new_key(database_url)
    wanted = job_of(database_url, tenant_id, team="search-team")
    other = job_of(database_url, tenant_id, team="ads")
    sign_in(client, key)

    by_meta = client.get("/ui/jobs", params={"q": "SEARCH-team"}).text
    assert str(wanted) in by_meta and str(other) not in by_meta
    by_id = client.get("/ui/jobs", params={"q": str(other)[:8]}).text
    assert str(other) in by_id and str(wanted) not in by_id
    # % and _ are letters here, not LIKE's wildcards
    literal = job_of(database_url, tenant_id, note="a_b")
    assert str(literal) in client.get("/ui/jobs", params={"q": "a_b"}).text
    for wildcard in ("a%b", "a_c", "%"):
        assert str(literal) not in client.get("/ui/jobs", params={"q": wildcard}).text, wildcard


def test_admin_pages_are_for_admin_keys(client: TestClient, database_url: str) -> None:
    member, _ = new_key(database_url)
    sign_in(client, member)
    assert client.get("/ui/admin/tenants").status_code == 403
    admin, _ = new_key(database_url, role="admin")
    sign_in(client, admin)
    tenants = client.get("/ui/admin/tenants")
    assert tenants.status_code == 200 and "max_active_jobs" in tenants.text
    assert client.get("/ui/admin/audit").status_code == 200


def test_the_live_json_of_a_job_and_a_404_for_another_tenants(
    client: TestClient, database_url: str
) -> None:
    key, tenant_id = new_key(database_url)
    mine = job_of(database_url, tenant_id)
    _, other_tenant = new_key(database_url)
    theirs = job_of(database_url, other_tenant)
    sign_in(client, key)

    live = client.get(f"/ui/jobs/{mine}/live").json()
    assert live["job"]["id"] == str(mine) and live["job"]["final"] is False
    assert {"throughput", "timeline", "events", "html"} <= set(live)
    assert client.get(f"/ui/jobs/{theirs}/live").status_code == 404
    page = client.get(f"/ui/jobs/{theirs}")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]


def test_the_cookie_is_secure_when_asked_and_assets_are_served_from_the_package(
    settings: Any,
) -> None:
    from api.app import create_app

    secure = create_app(
        settings.model_copy(update={"console_secret": SECRET, "console_secure_cookie": True})
    )
    with TestClient(secure, follow_redirects=False) as client:
        header = client.get("/ui/login").headers["set-cookie"].lower()
        for flag in ("httponly", "samesite=strict", "path=/ui", "secure"):
            assert flag in header, header
        for asset in ("uPlot.iife.min.js", "htmx.min.js", "console.js", "uPlot.min.css"):
            answer = client.get(f"/ui/static/{asset}")
            assert answer.status_code == 200 and len(answer.content) > 1000, asset
            assert answer.headers.get("cache-control") != "no-store"
