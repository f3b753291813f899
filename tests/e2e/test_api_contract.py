"""One HTTP contract: every /v1 error (unknown routes, wrong methods and malformed bodies
included) is `{"error", "message", "field", ...}`; a 401 says `WWW-Authenticate: Bearer`; the
OpenAPI schema documents the bearer scheme, enums, examples, the job body's discriminator and
only the errors each call can answer; /docs needs nothing from outside."""

from __future__ import annotations

import re
from typing import Any, get_args

import pytest

from api.schemas.jobs import JobStatus, JobType, ShardStatus
from barge.specs import JOB_TYPES, TASKS
from barge.status import JOB_STATUSES, SHARD_FINAL, SHARD_PENDING, SHARD_RUNNING

pytestmark = pytest.mark.e2e


def assert_shape(body: dict[str, Any]) -> None:
    assert {"error", "message", "field"} <= set(body), body
    assert isinstance(body["error"], str) and isinstance(body["message"], str), body
    assert "detail" not in body or body["detail"] is not None, body


class TestErrorShape:
    @pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v1/jobs/x/nope", "/v1"])
    def test_an_unknown_route_is_a_404_in_the_shape(
        self, api: Any, auth: dict[str, str], path: str
    ) -> None:
        r = api.get(path, headers=auth)
        assert r.status_code == 404, r.text
        body = r.json()
        assert_shape(body)
        assert body["error"] == "not_found" and body["field"] is None
        assert f"no such route: GET {path}" in body["message"], body
        assert "detail" not in body or body["detail"] != "Not Found"

    def test_a_wrong_method_is_a_405_naming_the_allowed_ones(
        self, api: Any, auth: dict[str, str]
    ) -> None:
        r = api.delete("/v1/jobs", headers=auth)
        assert r.status_code == 405, r.text
        body = r.json()
        assert_shape(body)
        assert body["error"] == "method_not_allowed"
        assert "DELETE /v1/jobs" in body["message"] and "GET" in r.headers["allow"]
        r = api.post("/healthz")
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed", r.text

    @pytest.mark.parametrize(
        ("content", "content_type", "needle"),
        [
            (b"{not json", "application/json", "not valid JSON (Expecting property name"),
            (b'{"type": "inference",', "application/json", "line 1 column 22"),
            (b"[1, 2]", "application/json", "must be a JSON object ({...}), not an array"),
            (b'"text"', "application/json", "must be a JSON object"),
            (b'{"type": "inference"}', "text/plain", "Content-Type: application/json"),
            (b'{"type": "inference"}', None, "Content-Type is not set"),
        ],
    )
    def test_a_malformed_body_names_the_body_and_says_what_is_wrong(
        self,
        api: Any,
        auth: dict[str, str],
        content: bytes,
        content_type: str | None,
        needle: str,
    ) -> None:
        headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
        for path in ("/v1/jobs", "/v1/drops", "/v1/models"):
            r = api.post(path, content=content, headers=headers)
            assert r.status_code == 422, (path, r.text)
            body = r.json()
            assert_shape(body)
            assert body["field"] == "body", (path, body)
            assert needle in body["message"], (path, body)
            assert not re.search(r'"field":\s*"\d+"', r.text), r.text

    def test_a_missing_body_says_so(self, api: Any, auth: dict[str, str]) -> None:
        r = api.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "body" and "missing" in r.json()["message"], r.text

    @pytest.mark.parametrize("path", ["/v1/jobs", "/v1/nope", "/v1/admin/tenants"])
    def test_a_401_says_www_authenticate_bearer(self, api: Any, path: str) -> None:
        for headers in ({}, {"Authorization": "Bearer bk_not-a-key"}, {"Authorization": "x"}):
            r = api.get(path, headers=headers)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer", r.headers
            assert_shape(r.json())
            assert r.json()["error"] == "unauthorized"

    def test_every_barge_error_has_the_field_key(self, api: Any, auth: dict[str, str]) -> None:
        r = api.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth)
        assert r.status_code == 404, r.text
        assert_shape(r.json())
        assert r.json()["field"] is None

    def test_the_openai_surface_keeps_openais_envelope(
        self, api: Any, auth: dict[str, str]
    ) -> None:
        r = api.get("/openai/v1/nope", headers=auth)
        assert r.status_code == 404, r.text
        assert set(r.json()) == {"error"}
        assert {"message", "type", "param", "code"} <= set(r.json()["error"])
        r = api.post(
            "/openai/v1/batches",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert r.status_code in (400, 422) and set(r.json()) == {"error"}, r.text


@pytest.fixture(scope="module")
def schema(app: Any) -> dict[str, Any]:
    return app.openapi()  # type: ignore[no-any-return]


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


class TestOpenAPI:
    def test_the_vocabularies_agree_with_the_kernel(self) -> None:
        assert get_args(JobStatus) == JOB_STATUSES
        assert get_args(JobType) == JOB_TYPES
        shard = {SHARD_PENDING, SHARD_RUNNING, *SHARD_FINAL}
        assert set(get_args(ShardStatus)) == shard

    def test_a_bearer_scheme_guards_every_v1_call(self, schema: dict[str, Any]) -> None:
        schemes = schema["components"]["securitySchemes"]
        assert [s["scheme"] for s in schemes.values()] == ["bearer"], schemes
        (name,) = schemes
        for method, path, op in operations(schema):
            if path.startswith("/v1/"):
                assert op.get("security") == [{name: []}], (method, path)
                assert "401" in op["responses"], (method, path)
        assert "security" not in schema["paths"]["/healthz"]["get"]

    def test_enums_for_status_type_and_task(self, schema: dict[str, Any]) -> None:
        components = schema["components"]["schemas"]
        job = components["JobOut"]["properties"]
        assert job["status"]["enum"] == list(JOB_STATUSES)
        assert job["type"]["enum"] == list(JOB_TYPES)
        assert components["ShardOut"]["properties"]["status"]["enum"]
        for spec in ("InferenceSpec", "FinetuneSpec"):
            assert components[spec]["properties"]["task"]["enum"] == list(TASKS)
        params = {p["name"]: p for p in schema["paths"]["/v1/jobs"]["get"]["parameters"]}
        assert params["status"]["schema"]["enum"] == list(JOB_STATUSES)
        assert params["type"]["schema"]["enum"] == list(JOB_TYPES)

    def test_every_request_body_has_examples(self, schema: dict[str, Any]) -> None:
        bodies = [(m, p, op) for m, p, op in operations(schema) if "requestBody" in op]
        assert len(bodies) >= 7
        for method, path, op in bodies:
            examples = op["requestBody"]["content"]["application/json"].get("examples")
            assert examples, (method, path)
            assert all("value" in e and "summary" in e for e in examples.values())

    def test_the_job_body_is_discriminated_by_type(self, schema: dict[str, Any]) -> None:
        body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
        mapping = body["schema"]["discriminator"]
        assert mapping["propertyName"] == "type"
        assert set(mapping["mapping"]) == {"inference", "finetune"}
        examples = body["examples"]
        assert {e["value"].get("type") for e in examples.values()} == {"inference", "finetune"}

    def test_healthz_documents_its_503(self, schema: dict[str, Any]) -> None:
        responses = schema["paths"]["/healthz"]["get"]["responses"]
        assert {"200", "503"} <= set(responses)

    def test_only_the_errors_a_call_can_answer(self, schema: dict[str, Any]) -> None:
        def codes(method: str, path: str) -> set[str]:
            responses = schema["paths"][path][method.lower()]["responses"]
            return {c for c in responses if c >= "400"}

        assert codes("GET", "/v1/jobs/{job_id}") == {"401", "404", "422", "503"}  # ?wait=
        assert codes("GET", "/v1/jobs") == {"401", "422", "503"}
        assert codes("POST", "/v1/jobs/{job_id}/cancel") == {"401", "404", "409", "503"}
        assert {"403", "409", "413", "422", "429"} <= codes("POST", "/v1/jobs")
        assert codes("GET", "/v1/drops") == {"401", "503"}
        assert "403" in codes("GET", "/v1/admin/tenants")
        assert "403" not in codes("GET", "/v1/models")
        assert "HTTPValidationError" not in str(schema)
        for method, path, op in operations(schema):
            for code, answer in op["responses"].items():
                if code >= "400" and path.startswith("/v1/"):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorOut"), (method, path, code)
        unauthorized = schema["paths"]["/v1/jobs"]["get"]["responses"]["401"]
        assert "WWW-Authenticate" in unauthorized["headers"]


class TestDocs:
    def test_docs_and_redoc_load_nothing_from_outside(self, api: Any) -> None:
        for page in ("/docs", "/redoc"):
            r = api.get(page)
            assert r.status_code == 200, r.text
            urls = re.findall(r'(?:src|href)=["\']([^"\']+)', r.text)
            assert urls, r.text
            assert not [u for u in urls if "//" in u], urls
            assert "cdn." not in r.text and "fonts.googleapis" not in r.text
            for url in urls:
                asset = api.get(url)
                assert asset.status_code == 200 and asset.content, url
        assert "/openapi.json" in api.get("/docs").text
        bundle = api.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in bundle.headers["content-type"]
        assert b"SwaggerUIBundle" in bundle.content

    def test_the_schema_needs_no_key(self, api: Any) -> None:
        assert api.get("/openapi.json").status_code == 200
