"""Fair share on real worker processes: one tenant's backlog cannot starve another tenant's small
job. Before, every shard message ran the shard it named, first in, first out: a one-record job
submitted behind a 2,000-shard job waited for all of it (157 s in the report)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from db.models import Job, Shard
from db.session import session_scope
from tests.conftest import new_key
from tests.faults.conftest import World, assert_exactly_once, dataset
from tests.helpers import FINAL, wait_until


def test_a_small_job_of_another_tenant_finishes_while_a_big_backlog_still_runs(
    world: World, s3: Any, bucket: str, classifier_uri: str
) -> None:
    world.worker()  # one worker: every shard of both tenants goes through it
    a_data, a_rows = dataset(s3, bucket, 120, key="a/in.jsonl")
    b_data, b_rows = dataset(s3, bucket, 1, key="b/in.jsonl")
    spec = {"model": classifier_uri, "task": "classify", "id_field": "id", "batch_size": 8}
    big = world.submit(
        {**spec, "input": a_data, "output": f"s3://{bucket}/a-out/", "shard_size": 2}
    )  # tenant A: 60 shards
    wait_until(
        lambda: world.job(big)["progress"]["shards_done"] >= 2,
        timeout=120,
        what="tenant A's job to be under way",
    )
    b_auth = {"Authorization": f"Bearer {new_key(world.database_url, 'tenant-b')}"}
    r = world.api.post(
        "/v1/jobs",
        json={**spec, "input": b_data, "output": f"s3://{bucket}/b-out/"},
        headers=b_auth,
    )
    assert r.status_code == 201, r.text
    small = r.json()["id"]

    def b_job() -> Any:
        j = world.api.get(f"/v1/jobs/{small}", headers=b_auth).json()
        return j["status"] in FINAL and j

    assert wait_until(b_job, timeout=120, interval=0.3, what="B's job")["status"] == "succeeded"
    a_job = world.wait_final(big, timeout=300)
    assert a_job["status"] == "succeeded", a_job

    # The job rows: B finished while A still had most of its backlog to run.
    with session_scope(world.database_url) as session:
        a, b = session.get(Job, uuid.UUID(big)), session.get(Job, uuid.UUID(small))
        assert a is not None and b is not None
        assert b.finished_at is not None and a.finished_at is not None
        assert b.finished_at < a.finished_at
        after_b = session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == a.id, Shard.started_at > b.finished_at)
        )
    assert (after_b or 0) >= 30, f"only {after_b} of A's 60 shards ran after B finished"
    # Every record of both jobs is in their outputs exactly once.
    assert_exactly_once(s3, bucket, "a-out", a_rows)
    assert_exactly_once(s3, bucket, "b-out", b_rows)
