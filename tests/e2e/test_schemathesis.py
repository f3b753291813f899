"""schemathesis over every operation in the live API's /openapi.json, and over the OpenAI
surface's /openai/v1/openapi.json: whatever a client sends (schema-valid or not, boundary values,
NUL and any other Unicode in strings), the answer is never a 5xx and the API logs no
traceback."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.conftest import ApiProcess, new_key
from tests.helpers import inference_spec, put_jsonl

# Hypothesis examples per operation and generation mode: with generated path parameters, and
# (more: these reach the queries) naming the tenant's real job, model or drop folder.
FUZZ_EXAMPLES, REAL_ID_EXAMPLES = 30, 50
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
OPENAI = "/openai/v1"


@pytest.fixture
def tenant(
    api_process: ApiProcess, database_url: str, s3: Any, bucket: str, minilm_uri: str
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """A key, and path parameters naming a real job, model, drop folder and webhook endpoint
    of its tenant (by path prefix), so that fuzzed query parameters and bodies reach the database."""
    headers = {"Authorization": f"Bearer {new_key(database_url, f'fuzz-{uuid.uuid4().hex[:8]}')}"}
    url = api_process.url
    data = put_jsonl(s3, bucket, "in/data.jsonl", [{"id": i, "text": f"t {i}"} for i in range(3)])
    created = [
        requests.post(f"{url}{path}", json=body, headers=headers, timeout=30)
        for path, body in [
            ("/v1/jobs", inference_spec(minilm_uri, data, f"s3://{bucket}/out/")),
            ("/v1/models", {"name": "fuzz-model", "uri": minilm_uri, "task": "embed"}),
            (
                "/v1/drops",
                {
                    "name": "fuzz-drop",
                    "prefix": f"s3://{bucket}/drops/",
                    "template": {"model": minilm_uri, "task": "embed"},
                },
            ),
            # A literal public address: checked without DNS (no test sends to it).
            ("/v1/webhooks", {"url": "https://93.184.216.34/hooks", "events": ["job.failed"]}),
        ]
    ]
    assert [r.status_code for r in created] == [201] * 4, [r.text for r in created]
    return headers, {
        "/v1/jobs/{job_id}": {"job_id": created[0].json()["id"]},
        "/v1/models/{name}": {"name": "fuzz-model"},
        "/v1/drops/{name}": {"name": "fuzz-drop"},
        "/v1/webhooks/{webhook_id}": {"webhook_id": created[3].json()["id"]},
    }


def shorten_wait(case: Any) -> None:
    """A valid ``?wait=`` (up to 60 s) on a job no worker runs would hold the request that
    long: sent with at most 0.2 s, still a valid wait; anything else is sent as drawn."""
    query = case.query or {}
    try:
        wait = float(query["wait"])
    except (KeyError, TypeError, ValueError):
        return
    if 0.2 < wait <= 60:
        query["wait"] = 0.2


def test_no_request_is_a_server_error(
    api_process: ApiProcess, tenant: tuple[dict[str, str], dict[str, dict[str, str]]]
) -> None:
    headers, real = tenant
    fuzz(api_process, "/openapi.json", "", headers, real, min_operations=13)


@pytest.fixture
def openai_tenant(
    api_process: ApiProcess,
    database_url: str,
    s3: Any,
    minilm_uri: str,
    generator_uri: str,
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """A key, and path parameters naming a real file, batch, fine-tuning job (left queued: no
    worker runs here) and registered model of its tenant on the OpenAI surface."""
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket="barge")  # BARGE_OPENAI_FILES_PREFIX: s3://barge/{tenant}/...
    headers = {"Authorization": f"Bearer {new_key(database_url, f'fuzz-{uuid.uuid4().hex[:8]}')}"}
    url = f"{api_process.url}{OPENAI}"

    def upload(rows: list[dict[str, Any]], purpose: str) -> str:
        content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        r = requests.post(
            f"{url}/files",
            files={"file": ("f.jsonl", content)},
            data={"purpose": purpose},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    line = {"model": minilm_uri, "input": "x"}
    source = upload(
        [{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": line}], "batch"
    )
    train = upload([{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)], "fine-tune")
    created = [
        requests.post(f"{url}{path}", json=body, headers=headers, timeout=30)
        for path, body in [
            ("/batches", {"input_file_id": source, "endpoint": "/v1/embeddings"}),
            ("/fine_tuning/jobs", {"model": generator_uri, "training_file": train}),
        ]
    ]
    model = requests.post(
        f"{api_process.url}/v1/models",
        json={"name": "fuzz-model", "uri": minilm_uri, "task": "embed"},
        headers=headers,
        timeout=30,
    )
    assert [r.status_code for r in created] == [200, 200], [r.text for r in created]
    assert created[0].json()["status"] != "failed", created[0].text
    assert model.status_code == 201, model.text
    return headers, {
        "/files/{file_id}": {"file_id": source},
        "/batches/{batch_id}": {"batch_id": created[0].json()["id"]},
        "/fine_tuning/jobs/{job_id}": {"job_id": created[1].json()["id"]},
        "/models/{model_id}": {"model_id": "fuzz-model@1"},
    }


def test_no_request_to_the_openai_surface_is_a_server_error(
    api_process: ApiProcess, openai_tenant: tuple[dict[str, str], dict[str, dict[str, str]]]
) -> None:
    headers, real = openai_tenant
    fuzz(api_process, f"{OPENAI}/openapi.json", OPENAI, headers, real, min_operations=15)


def fuzz(
    api_process: ApiProcess,
    schema_path: str,
    prefix: str,
    headers: dict[str, str],
    real: dict[str, dict[str, str]],
    min_operations: int,
) -> None:
    """Every operation of the schema at ``schema_path`` (its paths under ``prefix``), fuzzed:
    no answer is a 5xx, the API logs no traceback, and every request reached its route."""
    log_start = api_process.log.stat().st_size
    schema = schemathesis.openapi.from_url(f"{api_process.url}{schema_path}", headers=headers)
    # NUL allowed in strings, and any other codepoint UTF-8 can carry (lone surrogates cannot be
    # sent as UTF-8: the hand-written tests send them as JSON escapes). The key is always sent:
    # leaving it out only tests the 401.
    schema.config.generation.update(allow_x00=True, codec="utf-8", with_security_parameters=False)
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), results
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= min_operations, [op.label for op in operations]

    statuses: Counter[int] = Counter()
    sent: Counter[str] = Counter()
    server_errors: list[str] = []
    unsendable = 0
    session = requests.Session()
    base_url = f"{api_process.url}{prefix}"

    def send(case: Any, phase: str) -> None:
        nonlocal unsendable
        shorten_wait(case)
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        except (requests.exceptions.InvalidHeader, UnicodeError, ValueError):
            unsendable += 1  # requests will not put this header or URL on the wire
            return
        statuses[response.status_code] += 1
        sent[phase] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.operation.label} -> {response.status_code}: {response.text[:300]}\n"
                f"    {case.as_curl_command(headers=headers)[:600]}"
            )

    started = time.monotonic()
    # Coverage: schemathesis's deterministic boundary and type-confusion cases (min - 1,
    # max + 1, wrong types, missing and duplicate parameters, ...), with generated path
    # parameters and again naming the tenant's real objects.
    for operation in operations:
        fixed = next((v for p, v in real.items() if operation.path.startswith(p)), None)
        for case in schema.iter_coverage_cases(
            operation, generation_modes=MODES, generation_config=schema.config.generation
        ):
            send(case, "coverage")
            if fixed and set(case.path_parameters or {}) == set(fixed):
                case.path_parameters = dict(fixed)
                send(case, "coverage")

    # Fuzzing: Hypothesis draws valid and invalid requests.
    nothing_invalid: list[str] = []
    for operation in operations:
        fixed = next((v for p, v in real.items() if operation.path.startswith(p)), None)
        for mode in MODES:
            for path_parameters in [None, fixed] if fixed else [None]:
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters
                )
                fuzz_one: Callable[..., None] = given(case=strategy)(
                    lambda case: send(case, "fuzz")
                )
                run = hypothesis_settings(
                    max_examples=REAL_ID_EXAMPLES if path_parameters else FUZZ_EXAMPLES,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                try:
                    run(fuzz_one)()
                except Unsatisfiable:  # e.g. an operation without parameters has no bad ones
                    nothing_invalid.append(f"{operation.label} ({mode})")

    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis {schema_path}: {len(operations)} operations, {sum(sent.values())} "
        f"requests ({dict(sent)}; {unsendable} not sendable) in {elapsed:.1f}s; "
        f"statuses {dict(sorted(statuses.items()))}; no invalid case for {nothing_invalid}"
    )
    logged = api_process.log.read_bytes()[log_start:].decode(errors="replace")
    assert not server_errors, "\n".join(server_errors[:20])
    assert "Traceback" not in logged, logged[-5000:]
    assert statuses[401] == 0  # every request was authenticated, so it reached the routes
