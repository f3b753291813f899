"""schemathesis over the admin operations (/v1/admin/..., /v1/audit) of the live API, with an
admin key (the whole-API fuzz in test_schemathesis.py sends a member's key, which these answer
with a 403): whatever is sent, the answer is never a 5xx and the API logs no traceback."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.conftest import ApiProcess
from tests.e2e.test_keys_and_audit import bearer, new_key

EXAMPLES = 40
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def test_no_admin_request_is_a_server_error(api_process: ApiProcess, database_url: str) -> None:
    admin = bearer(new_key(database_url, f"fuzz-ops-{uuid.uuid4().hex[:8]}", role="admin"))
    url = api_process.url
    tenant = f"fuzz-tenant-{uuid.uuid4().hex[:8]}"
    created = requests.post(
        f"{url}/v1/admin/tenants", json={"name": tenant}, headers=admin, timeout=30
    )
    assert created.status_code == 201, created.text
    # A key of that tenant for revoke and rotate to name (never the admin's own).
    target = requests.post(
        f"{url}/v1/admin/keys", json={"tenant": tenant}, headers=admin, timeout=30
    )
    assert target.status_code == 201, target.text
    real = {
        "/v1/admin/tenants/{name}": {"name": tenant},
        "/v1/admin/keys/{key_ref}": {"key_ref": target.json()["prefix"]},
    }

    log_start = api_process.log.stat().st_size
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.generation.update(allow_x00=True, codec="utf-8", with_security_parameters=False)
    operations = [
        r.ok()
        for r in schema.get_all_operations()
        if isinstance(r, Ok) and r.ok().path.startswith(("/v1/admin", "/v1/audit"))
    ]
    assert len(operations) == 9, [op.label for op in operations]

    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    session = requests.Session()

    def send(case: Any) -> None:
        try:
            response = case.call(base_url=url, session=session, headers=admin, timeout=30)
        except (requests.exceptions.InvalidHeader, UnicodeError, ValueError):
            return  # requests will not put this on the wire
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.operation.label} -> {response.status_code}: {response.text[:300]}\n"
                f"    {case.as_curl_command(headers=admin)[:600]}"
            )

    for operation in operations:
        fixed = next((v for p, v in real.items() if operation.path.startswith(p)), None)
        for case in schema.iter_coverage_cases(
            operation, generation_modes=MODES, generation_config=schema.config.generation
        ):
            send(case)
            if fixed and set(case.path_parameters or {}) == set(fixed):
                case.path_parameters = dict(fixed)
                send(case)
        for mode in MODES:
            for path_parameters in [None, fixed] if fixed else [None]:
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters
                )
                fuzz: Callable[..., None] = given(case=strategy)(send)
                run = hypothesis_settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                with contextlib.suppress(Unsatisfiable):
                    run(fuzz)()

    logged = api_process.log.read_bytes()[log_start:].decode(errors="replace")
    print(f"\nadmin schemathesis: {len(operations)} operations; statuses {dict(statuses)}")
    assert not server_errors, "\n".join(server_errors[:20])
    assert "Traceback" not in logged, logged[-5000:]
    assert statuses[401] == 0  # the admin key was never revoked by the fuzzing
    assert statuses[200] + statuses[201] > 0
