"""Webhooks when things go wrong, on a world of its own (database, vhost, scheduler, workers):
a target that resolves to loopback when it is sent to is refused by the send's own check (the
check at create is not the only one), and a worker killed while a receiver holds its delivery
leaves it to be sent again, under the same ``webhook-id``, so a receiver deduplicates it."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import pytest

from tests.faults.conftest import World, dataset
from tests.helpers import inference_spec, wait_until
from tests.services import Receiver, free_port

pytestmark = pytest.mark.faults

SENDING = {
    "BARGE_WEBHOOK_SEND_SECONDS": "0.5",
    "BARGE_WEBHOOK_RETRY_BASE_SECONDS": "1",
    "BARGE_WEBHOOK_RETRY_MAX_SECONDS": "2",
    "BARGE_WEBHOOK_TIMEOUT_SECONDS": "2",
}
LOOPBACK_ALLOWED = {"BARGE_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]'}


def endpoint_on(world: World, url: str) -> tuple[str, str]:
    """An endpoint of the world's tenant on ``url``, written as it was at create when its host
    still resolved to a public address (the API refuses loopback now): its id and secret."""
    from db import repositories as repo
    from db.base import utcnow
    from db.models import WebhookEndpoint
    from db.session import session_scope
    from services.webhooks import new_secret

    endpoint_id, secret = f"whep_{uuid.uuid4().hex[:24]}", new_secret()
    with session_scope(world.database_url) as session:
        tenant = repo.tenant_by_name(session, "faults")
        assert tenant is not None
        session.add(
            WebhookEndpoint(
                id=endpoint_id,
                tenant_id=tenant.id,
                url=url,
                events=["job.succeeded"],
                secret=secret,
                created_at=utcnow(),
            )
        )
    return endpoint_id, secret


def deliveries(world: World, endpoint_id: str) -> list[dict[str, Any]]:
    r = world.api.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=world.auth)
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]  # type: ignore[no-any-return]


def run_job(world: World, s3: Any, bucket: str, minilm_uri: str) -> str:
    data, _ = dataset(s3, bucket, 3)
    job_id = world.submit(inference_spec(minilm_uri, data, f"s3://{bucket}/out/"))
    assert world.wait_final(job_id)["status"] == "succeeded"
    return job_id


def test_a_target_on_loopback_at_send_is_refused_by_the_send(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    receiver = Receiver(free_port()).start()
    try:
        endpoint_id, secret = endpoint_on(world, receiver.url)
        world.start_scheduler({**world.env, **SENDING})
        first = world.worker(**SENDING)  # the default settings: loopback is refused
        job_id = run_job(world, s3, bucket, minilm_uri)
        wait_until(
            lambda: (d := deliveries(world, endpoint_id)) and d[0]["attempts"] >= 2,
            60,
            0.3,
            "refused attempts",
        )
        [refused] = deliveries(world, endpoint_id)
        assert refused["status"] == "pending" and receiver.seen == []
        for attempt in refused["attempt_log"]:
            assert attempt["status_code"] is None and "loopback" in attempt["error"], attempt
        first.stop()
        world.worker(**SENDING, **LOOPBACK_ALLOWED)  # an operator allows the network
        wait_until(lambda: receiver.got, 60, 0.2, "the delivery once loopback is allowed")
        [event] = receiver.events(secret)
        assert (event.type, event.data.id) == ("job.succeeded", job_id)
    finally:
        receiver.stop()


def test_a_worker_killed_mid_send_leaves_it_resent_under_the_same_id(
    world: World, s3: Any, bucket: str, minilm_uri: str
) -> None:
    receiver = Receiver(free_port(), holding=True).start()  # holds the delivery unanswered
    try:
        endpoint_id, secret = endpoint_on(world, receiver.url)
        world.start_scheduler({**world.env, **SENDING})
        slow = {**SENDING, **LOOPBACK_ALLOWED, "BARGE_WEBHOOK_TIMEOUT_SECONDS": "10"}
        sender = world.worker(**slow)
        job_id = run_job(world, s3, bucket, minilm_uri)
        wait_until(lambda: receiver.seen, 60, 0.2, "the first attempt to arrive")
        assert sender.proc is not None
        os.killpg(sender.proc.pid, signal.SIGKILL)  # while the receiver holds it
        sender.proc.wait(10)
        receiver.holding = False  # the first request stays unanswered; later ones are not held
        world.worker(**slow)  # the claim is held 2 x 10 + 5 s, then sent again
        wait_until(lambda: receiver.got, 120, 0.3, "the delivery sent again")
        assert len(receiver.seen) == 2
        first, again = receiver.seen
        assert receiver.got == [again]
        assert first[0]["webhook-id"] == again[0]["webhook-id"] and first[1] == again[1]
        events = receiver.events(secret, [again])
        assert [(e.type, e.data.id) for e in events] == [("job.succeeded", job_id)]
        [done] = deliveries(world, endpoint_id)
        assert done["id"] == again[0]["webhook-id"]
        assert (done["status"], done["attempts"]) == ("delivered", 2)
        assert [a["status_code"] for a in done["attempt_log"]] == [200]  # the killed one left none
    finally:
        receiver.stop()
