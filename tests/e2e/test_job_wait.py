"""``GET /v1/jobs/{id}?wait=S``: the answer comes when the job ends, or when the wait runs out,
against a real API process; waiting holds no database connection, so many waiters do not
starve other requests."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from barge.status import RUNNING, SUCCEEDED
from tests.conftest import new_key
from tests.helpers import inference_spec, put_jsonl

pytestmark = pytest.mark.e2e


def _running_job(database_url: str) -> tuple[uuid.UUID, dict[str, str]]:
    """A running job of a new tenant (no worker will touch it) and that tenant's auth header."""
    from db import repositories
    from db.session import session_scope
    from tests.factories import make_job

    name = f"wait-{uuid.uuid4().hex[:8]}"
    key = new_key(database_url, name)
    with session_scope(database_url) as session:
        tenant = repositories.tenant_by_name(session, name)
        assert tenant is not None
        job_id = make_job(session, tenant, status=RUNNING).id
    return job_id, {"Authorization": f"Bearer {key}"}


def _finish(database_url: str, job_id: uuid.UUID) -> None:
    from db import repositories
    from db.session import session_scope
    from db.state import transition

    with session_scope(database_url) as session:
        job = repositories.get_job(session, job_id)
        assert job is not None
        transition(session, job, SUCCEEDED)


def test_a_wait_runs_out_then_answers_as_soon_as_the_job_ends(
    api_url: str, database_url: str
) -> None:
    job_id, auth = _running_job(database_url)
    with httpx.Client(base_url=api_url, headers=auth, timeout=90) as client:
        started = time.monotonic()
        r = client.get(f"/v1/jobs/{job_id}", params={"wait": 1.5})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == RUNNING  # the wait ran out: the job as it is
        assert time.monotonic() - started >= 1.5
        finisher = threading.Timer(1.0, _finish, (database_url, job_id))
        finisher.start()
        started = time.monotonic()
        r = client.get(f"/v1/jobs/{job_id}", params={"wait": 60})
        took = time.monotonic() - started
        finisher.join()
        assert r.status_code == 200 and r.json()["status"] == SUCCEEDED, (took, r.text)
        assert 0.9 <= took < 30, took  # woken by the end, not by the 60 s
        started = time.monotonic()
        r = client.get(f"/v1/jobs/{job_id}", params={"wait": 60})  # final already: at once
        assert r.json()["status"] == SUCCEEDED and time.monotonic() - started < 10


def test_many_waiters_hold_no_connection_and_all_wake(api_url: str, database_url: str) -> None:
    """40 requests wait on one job (more than the API's database pool of 10 and as many as its
    thread pool of 40): a plain GET still answers, and the end wakes every waiter."""
    job_id, auth = _running_job(database_url)
    with httpx.Client(
        base_url=api_url,
        headers=auth,
        timeout=90,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    ) as client:

        def wait() -> Any:
            return client.get(f"/v1/jobs/{job_id}", params={"wait": 60})

        with ThreadPoolExecutor(40) as pool:
            waiting = [pool.submit(wait) for _ in range(40)]
            time.sleep(2)  # every waiter parked
            assert not any(f.done() for f in waiting)
            started = time.monotonic()
            r = client.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] == RUNNING
            assert time.monotonic() - started < 10
            _finish(database_url, job_id)
            answers = [f.result(timeout=30) for f in waiting]
    assert [a.status_code for a in answers] == [200] * 40
    assert {a.json()["status"] for a in answers} == {SUCCEEDED}


def test_a_final_transition_notifies_as_it_commits_and_wakes_a_waiter_at_once(
    api_url: str, database_url: str
) -> None:
    """The move to a final state sends ``NOTIFY barge_job_final`` with the job's id when its
    transaction commits (none for a move that is not final); a waiter is woken by it, in well
    under the once-a-second check it would otherwise wait for (median of five)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from barge.status import PAUSING
    from db import repositories
    from db.session import session_scope
    from db.state import JOB_FINAL_CHANNEL, transition

    conninfo = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f"LISTEN {JOB_FINAL_CHANNEL}")
        job_id, _ = _running_job(database_url)
        with session_scope(database_url) as session:
            job = repositories.get_job(session, job_id)
            assert job is not None
            transition(session, job, PAUSING)
        assert [n.payload for n in conn.notifies(timeout=0.5)] == []
        _finish(database_url, job_id)
        notes = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
        assert notes == [str(job_id)]

    took = []
    for _ in range(5):
        job_id, auth = _running_job(database_url)
        committed: list[float] = []

        def finish(job_id: uuid.UUID = job_id, committed: list[float] = committed) -> None:
            _finish(database_url, job_id)
            committed.append(time.monotonic())

        with httpx.Client(base_url=api_url, headers=auth, timeout=90) as client:
            finisher = threading.Timer(0.5, finish)
            finisher.start()
            r = client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
            answered = time.monotonic()
            finisher.join()
        assert r.json()["status"] == SUCCEEDED
        took.append(answered - committed[0])
    assert sorted(took)[2] < 0.35, took


@pytest.mark.parametrize("wait", ["-1", "61", "nan", "inf", "soon"])
def test_a_wait_out_of_range_is_a_422_naming_it(api: Any, auth: dict[str, str], wait: str) -> None:
    r = api.get(f"/v1/jobs/{uuid.uuid4()}", params={"wait": wait}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "wait", r.text


def test_a_real_job_waited_on_is_seen_finished_with_its_manifest(
    api: Any, auth: dict[str, str], worker: Any, s3: Any, bucket: str, minilm_uri: str
) -> None:
    data = put_jsonl(s3, bucket, "in/w.jsonl", [{"id": i, "text": f"t {i}"} for i in range(12)])
    spec = inference_spec(minilm_uri, data, f"s3://{bucket}/out/", id_field="id")
    job = api.post("/v1/jobs", json=spec, headers=auth).json()
    for _ in range(6):  # at most six minutes, a minute per answer
        job = api.get(f"/v1/jobs/{job['id']}", params={"wait": 60}, headers=auth).json()
        if job["status"] not in ("queued", "running"):
            break
    assert job["status"] == SUCCEEDED and job["output"]["manifest"], job
    assert job["progress"]["records_succeeded"] == 12
