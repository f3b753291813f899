"""Attacks on the live `barge api` process: huge bodies (with and without a key), huge fields,
values Postgres cannot store, out-of-range parameters, keep-alive after a refusal."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ApiProcess, new_key
from tests.helpers import inference_spec, put_jsonl

MiB = 2**20
HUGE = 200 * MiB
LIMIT = 1 * MiB  # the default BARGE_MAX_BODY_BYTES


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class Body:
    """A JSON body of ``total`` bytes, streamed 1 MiB at a time; counts what was sent."""

    def __init__(self, total: int = HUGE):
        self.total = total
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        head, tail = b'{"metadata": {"x": "', b'"}}'
        filler = self.total - len(head) - len(tail)
        for part in [head, *[b"a" * min(MiB, filler - i) for i in range(0, filler, MiB)], tail]:
            self.sent += len(part)
            yield part


@pytest.fixture
def api(api_process: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_process.url, timeout=30) as client:
        yield client


@pytest.fixture
def key_headers(database_url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(database_url, f'hard-{uuid.uuid4().hex[:8]}')}"}


def _post_huge(api: httpx.Client, path: str, headers: dict[str, str], body: Body) -> httpx.Response:
    headers = {**headers, "Content-Type": "application/json"}
    return api.post(path, content=iter(body), headers=headers)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
def test_a_200_mb_body_is_refused_before_it_is_read(
    api: httpx.Client,
    api_process: ApiProcess,
    key_headers: dict[str, str],
    framing: str,
    with_key: bool,
) -> None:
    headers = dict(key_headers) if with_key else {}
    if framing == "content-length":
        headers["Content-Length"] = str(HUGE)
    body = Body()
    before = _peak_rss_mb(api_process.pid)
    started = time.monotonic()
    r = _post_huge(api, "/v1/jobs", headers, body)
    elapsed = time.monotonic() - started
    grown = _peak_rss_mb(api_process.pid) - before
    print(
        f"\n{framing} {'with' if with_key else 'without'} key: {r.status_code} in {elapsed:.2f}s, "
        f"{body.sent / MiB:.1f} MiB of {HUGE / MiB:.0f} sent, peak RSS +{grown:.1f} MB "
        f"({before:.0f} → {before + grown:.0f} MB)"
    )
    if with_key or framing == "content-length":
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "payload_too_large"
        assert f"at most {LIMIT} bytes" in r.json()["message"]
    else:
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers.get("connection") == "close"  # the rest of the body is never read
    assert elapsed < 5
    assert body.sent < HUGE / 2
    assert grown < 50


def test_a_body_just_over_the_limit_is_413_and_one_under_is_read(
    api: httpx.Client, key_headers: dict[str, str]
) -> None:
    over = Body(LIMIT + 1)
    r = _post_huge(api, "/v1/jobs", key_headers, over)  # chunked: counted while it streams
    assert r.status_code == 413, r.text
    r = api.post(
        "/v1/jobs",
        content=b"".join(Body(LIMIT)),
        headers={**key_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text  # read and validated (a spec without model, task, ...)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"x" * 900_000: 1}),
        ("/v1/jobs", {"model": "m", "task": "embed", "input": "s3://b/" + "k" * 900_000}),
        ("/v1/jobs", {"model": "m" * 900_000, "task": "embed", "input": "s3://b/k"}),
        ("/v1/jobs", {"type": "t" * 900_000}),
        ("/v1/jobs", {"task": "t" * 900_000}),
        ("/v1/jobs", {"metadata": {"k": "v" * 900_000}}),
        ("/v1/jobs", [{"a": 1}] * 100_000),
        ("/v1/jobs", {f"k{i}": i for i in range(60_000)}),
        ("/v1/drops", {"name": "n" * 900_000, "prefix": "s3://b/p/", "template": {}}),
        ("/v1/drops", {"name": "n", "prefix": "s3://b/" + "p" * 900_000, "template": {}}),
        ("/v1/drops", {"name": "n", "prefix": "s3://b/p/", "template": {"m" * 900_000: 1}}),
        ("/v1/models", {"name": "n" * 900_000, "uri": "s3://b/m/", "task": "embed"}),
        ("/v1/models", {"name": "n", "uri": "s3://b/" + "m" * 900_000, "task": "embed"}),
    ],
)
def test_an_oversized_field_gets_a_short_4xx(
    api: httpx.Client, key_headers: dict[str, str], path: str, body: Any
) -> None:
    content = json.dumps(body).encode()
    assert len(content) < LIMIT
    r = api.post(path, content=content, headers={**key_headers, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:2000]
    assert len(r.content) < 2048, (len(r.content), r.text[:2000])
    assert r.json()["message"]


def _same_connection_requests(
    url: str, requests: list[tuple[str, str, dict[str, str], bytes]]
) -> list[int]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
    statuses = []
    conn.connect()
    sock = conn.sock
    for method, path, headers, body in requests:
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.getheader("connection") != "close", (method, path, r.status)
        assert conn.sock is sock, f"{method} {path} ({r.status}) closed the connection"
        statuses.append(r.status)
    conn.close()
    return statuses


def test_a_keep_alive_connection_survives_refusals(
    api_process: ApiProcess, key_headers: dict[str, str]
) -> None:
    json_headers = {**key_headers, "Content-Type": "application/json"}
    statuses = _same_connection_requests(
        api_process.url,
        [
            ("GET", "/v1/jobs", {}, b""),  # 401
            ("POST", "/v1/jobs", {"Content-Type": "application/json"}, b'{"a": 1}'),  # 401
            ("GET", f"/v1/jobs/{uuid.uuid4()}", key_headers, b""),  # 404
            ("GET", "/v1/jobs?limit=0", key_headers, b""),  # 422
            ("POST", "/v1/jobs", json_headers, b'{"task": "nope"}'),  # 422
            ("POST", "/v1/jobs", json_headers, b'{"metadata": {"x": NaN}}'),  # 422
            ("POST", "/v1/jobs", json_headers, b"{not json"),  # 422
            ("DELETE", "/v1/jobs", key_headers, b""),  # 405
            ("GET", "/nowhere", {}, b""),  # 404
            ("GET", "/healthz", {}, b""),
        ],
    )
    assert statuses == [401, 401, 404, 422, 422, 422, 422, 405, 404, 200]


def test_an_unexpected_exception_is_a_json_500_on_a_connection_that_stays_usable(
    settings: Any,
) -> None:
    """No route of the API raises on purpose, so the guard is run over a tiny app that does,
    under a real uvicorn server."""
    import uvicorn
    from fastapi import FastAPI

    from api.guard import RequestGuard
    from tests.services import free_port, wait_port

    app = FastAPI()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/fine")
    def fine() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(RequestGuard, settings=settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_port(port, 20)
        statuses = _same_connection_requests(
            f"http://127.0.0.1:{port}",
            [("GET", "/boom", {}, b""), ("GET", "/fine", {}, b""), ("GET", "/boom", {}, b"")],
        )
        assert statuses == [500, 200, 500]
        body = httpx.get(f"http://127.0.0.1:{port}/boom").json()
        assert body == {
            "error": "internal_error",
            "message": "unexpected RuntimeError; see the API logs",
            "field": None,
        }
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def job_id(
    api: httpx.Client, key_headers: dict[str, str], s3: Any, bucket: str, minilm_uri: str
) -> str:
    data = put_jsonl(s3, bucket, "in/data.jsonl", [{"id": i, "text": f"t {i}"} for i in range(3)])
    spec = inference_spec(minilm_uri, data, f"s3://{bucket}/out/")
    r = api.post("/v1/jobs", json=spec, headers=key_headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_events_after_is_bounded_to_a_bigint(
    api: httpx.Client, key_headers: dict[str, str], job_id: str
) -> None:
    for after in (2**63, 2**64, 10**30, -1):
        r = api.get(f"/v1/jobs/{job_id}/events", params={"after": after}, headers=key_headers)
        assert r.status_code == 422 and r.json()["field"] == "after", (after, r.text)
    r = api.get(f"/v1/jobs/{job_id}/events", params={"after": 2**63 - 1}, headers=key_headers)
    assert r.status_code == 200 and r.json() == {"events": [], "next_after": 2**63 - 1}, r.text


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_list_query_garbage_is_422_naming_the_field(
    api: httpx.Client, key_headers: dict[str, str], job_id: str
) -> None:
    cases = [
        ("cursor", _cursor(f"2026-01-01T00:00:00|{uuid.uuid4()}")),  # naive: no time zone
        ("cursor", _cursor(f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}")),  # before year 1 in UTC
        ("cursor", _cursor(f"9999-12-31T23:59:59-14:00|{uuid.uuid4()}")),  # after year 9999
        ("cursor", _cursor("2026-01-01T00:00:00+00:00|not-a-uuid")),
        ("cursor", "%%%\x00é"),
        ("cursor", "x" * 5000),
        ("status", "nope\x00"),
        ("type", "x" * 5000),
        ("limit", "0"),
        ("limit", "201"),
        ("limit", "NaN"),
        ("limit", str(2**70)),
    ]
    for name, value in cases:
        r = api.get("/v1/jobs", params={name: value}, headers=key_headers)
        assert r.status_code == 422, (name, value[:80], r.text)
        assert r.json()["field"] == name, (name, value[:80], r.text)
        assert len(r.content) < 2048
    aware = _cursor(f"2999-01-01T00:00:00+02:00|{uuid.uuid4()}")
    r = api.get("/v1/jobs", params={"cursor": aware}, headers=key_headers)
    assert r.status_code == 200 and job_id in [j["id"] for j in r.json()["jobs"]], r.text


@pytest.mark.parametrize("suffix", ["", "/events", "/shards", "/cancel"])
def test_a_job_id_that_is_not_a_uuid_is_404(
    api: httpx.Client, key_headers: dict[str, str], suffix: str
) -> None:
    method = "POST" if suffix == "/cancel" else "GET"
    for job in ("not-a-uuid", "%00", "x" * 3000, "1" * 40, "NaN"):
        r = api.request(method, f"/v1/jobs/{job}{suffix}", headers=key_headers)
        assert r.status_code == 404, (job[:40], suffix, r.text)
        assert len(r.content) < 1024


def test_a_removed_drop_rule_is_never_found_again(
    api: httpx.Client, key_headers: dict[str, str], bucket: str
) -> None:
    name = f"r-{uuid.uuid4().hex[:6]}"
    long_name = "L" * 200  # the longest name: its removed name must still fit the column
    template = {"model": "m", "task": "embed"}
    for n in (name, long_name):
        body = {"name": n, "prefix": f"s3://{bucket}/{n[:20]}/", "template": template}
        r = api.post("/v1/drops", json=body, headers=key_headers)
        assert r.status_code == 201, r.text
    assert api.delete(f"/v1/drops/{name}", headers=key_headers).status_code == 204
    assert api.delete(f"/v1/drops/{name}", headers=key_headers).status_code == 404
    assert api.delete(f"/v1/drops/{long_name}", headers=key_headers).status_code == 204
    drops = api.get("/v1/drops", headers=key_headers).json()["drops"]
    removed = [d["name"] for d in drops]
    assert len(removed) == 2 and all("~removed~" in d for d in removed), drops
    assert all(not d["enabled"] for d in drops) and all(len(d) <= 200 for d in removed)
    for d in removed:
        r = api.delete(f"/v1/drops/{d}", headers=key_headers)
        assert r.status_code == 404, r.text
    assert [d["name"] for d in api.get("/v1/drops", headers=key_headers).json()["drops"]] == removed
    for bad in ("a b", "x" * 201, "%00", "..", "é"):
        assert api.delete(f"/v1/drops/{bad}", headers=key_headers).status_code == 404
    # The name is free again.
    body = {"name": name, "prefix": f"s3://{bucket}/again/", "template": template}
    assert api.post("/v1/drops", json=body, headers=key_headers).status_code == 201


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_422(
    api: httpx.Client, key_headers: dict[str, str], bucket: str, number: str
) -> None:
    headers = {**key_headers, "Content-Type": "application/json"}
    spec = (
        '{"model": "m", "task": "embed", "input": "s3://b/k", "output": "s3://b/o/", '
        f'"metadata": {{"score": [1, {number}]}}}}'
    )
    r = api.post("/v1/jobs", content=spec.encode(), headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "metadata.score.1", r.text
    assert "numbers must be finite" in r.json()["message"]
    drop = (
        f'{{"name": "n", "prefix": "s3://{bucket}/p/", '
        f'"template": {{"model": "m", "task": "embed", "params": {{"x": {number}}}}}}}'
    )
    r = api.post("/v1/drops", content=drop.encode(), headers=headers)
    assert r.status_code == 422 and r.json()["field"].startswith("template"), r.text


@pytest.mark.parametrize(
    "value", ["a\x00b", "\ud800", "x\udfffy"], ids=["nul", "lone-high", "lone-low"]
)
@pytest.mark.parametrize("where", ["value", "key"])
def test_text_postgres_cannot_store_in_a_drop_template_is_422(
    api: httpx.Client, key_headers: dict[str, str], bucket: str, value: str, where: str
) -> None:
    template: dict[str, Any] = {"model": "m", "task": "embed"}
    template["metadata"] = {"note": value} if where == "value" else {value: 1}
    body = {
        "name": f"n-{uuid.uuid4().hex[:6]}",
        "prefix": f"s3://{bucket}/p/",
        "template": template,
    }
    r = api.post(
        "/v1/drops",
        content=json.dumps(body).encode(),  # ensure_ascii: "\ud800" goes as an escape
        headers={**key_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "template", r.text


@pytest.mark.parametrize("prefix", ["s3://b/a\x00b/", "s3://b/\ud800/", "s3:///x/", "s3://B/x/"])
def test_a_bad_drop_prefix_is_422(
    api: httpx.Client, key_headers: dict[str, str], prefix: str
) -> None:
    body = {"name": "n", "prefix": prefix, "template": {"model": "m", "task": "embed"}}
    r = api.post(
        "/v1/drops",
        content=json.dumps(body).encode(),
        headers={**key_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["field"] == "prefix", r.text


def test_bodies_that_are_not_json_are_422_naming_the_body(
    api: httpx.Client, key_headers: dict[str, str]
) -> None:
    headers = {**key_headers, "Content-Type": "application/json"}
    for content in (
        b"{not json",
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"metadata": {"n": ' + b"9" * 5000 + b"}}",
        b"   ",
    ):
        r = api.post("/v1/jobs", content=content, headers=headers)
        assert r.status_code == 422, (content[:20], r.text)
        assert r.json()["field"] == "body" and "not valid JSON" in r.json()["message"], r.text


def test_health_metrics_and_docs_need_no_key_and_the_schema_documents_it(
    api: httpx.Client,
) -> None:
    for path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
        r = api.get(path)
        assert r.status_code == 200, (path, r.text[:300])
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/jobs"]["get"]["security"] == [{"HTTPBearer": []}]
    r = api.get("/v1/nowhere")  # under /v1/ the key comes first, even for an unknown route
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    assert r.json()["error"] == "unauthorized"
