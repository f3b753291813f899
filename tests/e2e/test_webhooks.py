"""Webhooks on real processes: an API, a worker and a scheduler allowed to send to loopback (the
receiver here listens on 127.0.0.1), a receiver made of ``http.server``; every delivery is
checked with the official ``openai`` client's ``webhooks.unwrap`` and the endpoint's secret.

Each job's final state reaches the receiver once; an OpenAI batch's end comes under OpenAI's
own event names; a receiver that is down, then failing, then up still gets the event (retried
with back-off, the attempts listed); and with the default settings targets on loopback, private
and metadata addresses are refused at create, naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import new_key
from tests.helpers import (
    colour_chats,
    inference_spec,
    put_jsonl,
    tiny_lora_base,
    upload_dir,
    wait_until,
)
from tests.services import (
    ROOT,
    Receiver,
    WorkerProcess,
    create_vhost,
    delete_vhost,
    free_port,
    wait_port,
)

pytestmark = pytest.mark.e2e

JOB_EVENTS = ["job.succeeded", "job.failed", "job.cancelled"]


@dataclass
class Stack:
    url: str  # the API's
    env: dict[str, str]
    database_url: str

    def client(self) -> tuple[httpx.Client, str]:
        key = new_key(self.database_url, f"wh-{uuid.uuid4().hex[:8]}")
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30), key

    def hook(self, http: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
        r = http.post("/v1/webhooks", json={"url": url, "events": events})
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["secret"].startswith("whsec_")
        return made  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stack(barge_env: dict[str, str], tmp_root: Path, s3: Any, minilm_uri: str) -> Iterator[Stack]:
    """An API, a worker and a scheduler (on a vhost of their own) that may send webhooks to
    127.0.0.0/8, sending every half second, retrying after 1 then 2 seconds."""
    vhost = f"barge_wh_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **barge_env,
        "BARGE_BROKER_URL": create_vhost(vhost),
        "BARGE_HOME": str(tmp_root / "webhooks-home"),
        "BARGE_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "BARGE_WEBHOOK_SEND_SECONDS": "0.5",
        "BARGE_WEBHOOK_RETRY_BASE_SECONDS": "1",
        "BARGE_WEBHOOK_RETRY_MAX_SECONDS": "2",
        "BARGE_WEBHOOK_TIMEOUT_SECONDS": "3",
        "BARGE_OPENAI_MODEL_ALIASES": json.dumps({"text-embedding-3-small": minilm_uri}),
    }
    s3.create_bucket(Bucket="barge") if "barge" not in _buckets(s3) else None
    port = free_port()
    log = (tmp_root / "webhooks-api.log").open("ab")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", *argv],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for argv in (["api", "--port", str(port)], ["scheduler"])
    ]
    worker = WorkerProcess(env, tmp_root / "webhooks-worker.log").start()
    wait_port(port, 60)
    yield Stack(f"http://127.0.0.1:{port}", env, barge_env["BARGE_DATABASE_URL"])
    worker.stop()
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    delete_vhost(vhost)


def _buckets(s3: Any) -> set[str]:
    return {b["Name"] for b in s3.list_buckets()["Buckets"]}


def submit(http: httpx.Client, spec: dict[str, Any]) -> str:
    r = http.post("/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def final(http: httpx.Client, job_id: str, timeout: float = 240) -> str:
    def status() -> str | None:
        found = http.get(f"/v1/jobs/{job_id}").json()["status"]
        return found if found in ("succeeded", "failed", "cancelled") else None

    return str(wait_until(status, timeout, 0.3, f"job {job_id} final"))


def test_each_final_state_is_delivered_once_signed(stack: Stack, s3: Any, bucket: str) -> None:
    receiver = Receiver(free_port()).start()
    http, _ = stack.client()
    try:
        hook = stack.hook(http, receiver.url, JOB_EVENTS)
        good = put_jsonl(s3, bucket, "good.jsonl", [{"id": i, "text": f"t {i}"} for i in range(3)])
        rows = [{"id": 0, "text": "t"}, {"id": 1}, {"id": 2}]  # two records with no text
        bad = put_jsonl(s3, bucket, "bad.jsonl", rows)
        model = stack.env["BARGE_OPENAI_MODEL_ALIASES"]
        minilm = json.loads(model)["text-embedding-3-small"]
        ok = submit(http, inference_spec(minilm, good, f"s3://{bucket}/ok/"))
        failed = submit(http, inference_spec(minilm, bad, f"s3://{bucket}/bad/"))
        cancelled = submit(http, inference_spec(minilm, good, f"s3://{bucket}/cancel/"))
        assert http.post(f"/v1/jobs/{cancelled}/cancel").status_code == 200
        ends = {ok: final(http, ok), failed: final(http, failed), cancelled: final(http, cancelled)}
        assert ends == {ok: "succeeded", failed: "failed", cancelled: "cancelled"}
        wait_until(lambda: len(receiver.got) >= 3, 60, 0.2, "three deliveries")
        time.sleep(3)  # six more send passes: nothing is sent twice
        events = receiver.events(hook["secret"])  # raises unless each signature verifies
        got = sorted((e.type, e.data.id) for e in events)
        assert got == sorted(
            [("job.succeeded", ok), ("job.failed", failed), ("job.cancelled", cancelled)]
        )
        ids = [headers["webhook-id"] for headers, _ in receiver.got]
        assert len(set(ids)) == 3 and all(i.startswith("wh_") for i in ids)
        assert all(e.object == "event" and e.id.startswith("evt_") for e in events)
        listed = http.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["deliveries"]
        assert sorted(d["id"] for d in listed) == sorted(ids)
        assert {(d["status"], d["attempts"], d["last_status_code"]) for d in listed} == {
            ("delivered", 1, 200)
        }
        assert all(d["attempt_log"][0]["response"] == "ok" for d in listed)
        listing = http.get("/v1/webhooks").text  # the secret was shown once, never again
        assert hook["id"] in listing and hook["secret"] not in listing
    finally:
        receiver.stop()
        http.close()


def test_a_receiver_down_then_failing_still_gets_the_event(
    stack: Stack, s3: Any, bucket: str
) -> None:
    receiver = Receiver(free_port())  # nothing listens on its port yet
    http, _ = stack.client()
    try:
        hook = stack.hook(http, receiver.url, ["job.succeeded"])
        minilm = json.loads(stack.env["BARGE_OPENAI_MODEL_ALIASES"])["text-embedding-3-small"]
        data = put_jsonl(s3, bucket, "in.jsonl", [{"id": 1, "text": "hello"}])
        job = submit(http, inference_spec(minilm, data, f"s3://{bucket}/out/"))
        assert final(http, job) == "succeeded"

        def deliveries() -> list[dict[str, Any]]:
            r = http.get(f"/v1/webhooks/{hook['id']}/deliveries")
            return r.json()["deliveries"]  # type: ignore[no-any-return]

        wait_until(lambda: deliveries() and deliveries()[0]["attempts"] >= 2, 60, 0.3, "retries")
        down = deliveries()[0]
        assert down["status"] == "pending" and down["last_status_code"] is None
        assert all(a["status_code"] is None and a["error"] for a in down["attempt_log"])
        elsewhere = Receiver(free_port()).start()
        receiver.codes = [307, 503]  # up again: a redirect (never followed), a failure, then ok
        receiver.location = elsewhere.url
        receiver.start()
        wait_until(lambda: receiver.got, 60, 0.2, "the delivery after the receiver came back")
        time.sleep(3)
        [event] = receiver.events(hook["secret"])
        assert (event.type, event.data.id) == ("job.succeeded", job)
        [done] = deliveries()
        assert done["status"] == "delivered" and done["id"] == receiver.got[0][0]["webhook-id"]
        codes = [a["status_code"] for a in done["attempt_log"]]
        assert codes[-3:] == [307, 503, 200] and codes[0] is None
        assert len(codes) == done["attempts"] and elsewhere.seen == []
        assert "redirects are not followed" in done["attempt_log"][-3]["error"]
        busy = done["attempt_log"][-2]
        assert busy["response"].startswith("busy") and len(busy["response"]) <= 512
        elsewhere.stop()
    finally:
        receiver.stop()
        http.close()


def test_openai_batch_ends_under_openai_event_names(stack: Stack) -> None:
    receiver = Receiver(free_port()).start()
    http, key = stack.client()
    try:
        events = ["batch.completed", "batch.cancelled", "batch.failed"]
        hook = stack.hook(http, receiver.url, events)
        client = openai.OpenAI(base_url=f"{stack.url}/openai/v1", api_key=key, max_retries=0)
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "hello"},
        }
        upload = client.files.create(
            file=("b.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch"
        )
        done = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        stopped = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        client.batches.cancel(stopped.id)
        twice = client.files.create(  # fails its checks at create: no job ever runs
            file=("dup.jsonl", (json.dumps(line) + "\n") * 2), purpose="batch"
        )
        refused = client.batches.create(
            input_file_id=twice.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        assert refused.status == "failed"
        wait_until(lambda: len(receiver.got) >= 3, 240, 0.3, "the three batches' events")
        time.sleep(2)
        got = sorted((e.type, e.data.id) for e in receiver.events(hook["secret"]))
        assert got == sorted(
            [
                ("batch.completed", done.id),
                ("batch.cancelled", stopped.id),
                ("batch.failed", refused.id),
            ]
        )
        assert client.batches.retrieve(done.id).status == "completed"
    finally:
        receiver.stop()
        http.close()


def test_a_cancelled_fine_tuning_job_is_delivered_under_its_name(
    stack: Stack, s3: Any, models_bucket: str, tmp_path: Path
) -> None:
    base = upload_dir(s3, models_bucket, "wh-lora-base", tiny_lora_base(tmp_path / "base"))
    receiver = Receiver(free_port()).start()
    http, key = stack.client()
    try:
        hook = stack.hook(http, receiver.url, ["fine_tuning.job.cancelled", "job.cancelled"])
        client = openai.OpenAI(base_url=f"{stack.url}/openai/v1", api_key=key, max_retries=0)
        rows = b"".join(json.dumps(r).encode() + b"\n" for r in colour_chats(16, 1))
        train = client.files.create(file=("train.jsonl", rows), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=base, training_file=train.id)
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        wait_until(lambda: len(receiver.got) >= 2, 120, 0.3, "the fine-tune's events")
        time.sleep(2)
        got = {e.type: e.data.id for e in receiver.events(hook["secret"])}
        assert len(receiver.got) == 2 and got["fine_tuning.job.cancelled"] == job.id
        barge_job = http.get(f"/v1/jobs/{got['job.cancelled']}").json()
        assert barge_job["status"] == "cancelled" and barge_job["type"] == "finetune"
    finally:
        receiver.stop()
        http.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hooks",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://localhost/hooks",
    ],
)
def test_loopback_private_and_metadata_targets_are_refused(
    api: Any, auth: dict[str, str], url: str
) -> None:
    r = api.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "url"
    assert api.get("/v1/webhooks", headers=auth).json()["webhooks"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://93.184.216.34/x", "events": ["job.failed"]}, "url"),
        ({"url": "https://user:pw@93.184.216.34/x", "events": ["job.failed"]}, "url"),
        ({"url": "https://93.184.216.34/x", "events": ["job.exploded"]}, "events"),
        ({"url": "https://93.184.216.34/x", "events": []}, "events"),
    ],
)
def test_bad_bodies_name_their_field(
    api: Any, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    r = api.post("/v1/webhooks", json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_another_tenants_endpoint_is_not_found(
    api: Any, auth: dict[str, str], database_url: str
) -> None:
    body = {"url": "https://93.184.216.34/x", "events": ["job.failed"]}
    made = api.post("/v1/webhooks", json=body, headers=auth).json()
    other = {"Authorization": f"Bearer {new_key(database_url, f'o-{uuid.uuid4().hex[:8]}')}"}
    for method, path in (
        ("GET", f"/v1/webhooks/{made['id']}"),
        ("DELETE", f"/v1/webhooks/{made['id']}"),
        ("POST", f"/v1/webhooks/{made['id']}/rotate"),
        ("GET", f"/v1/webhooks/{made['id']}/deliveries"),
    ):
        assert api.request(method, path, headers=other).status_code == 404, path
    assert api.get(f"/v1/webhooks/{made['id']}", headers=auth).json()["secret"] is None
    for odd in ("whep_%00", "x" * 300, made["id"].upper()):
        assert api.get(f"/v1/webhooks/{odd}", headers=auth).status_code == 404, odd
    bad_type = api.get(f"/v1/webhooks/{made['id']}/deliveries?type=a%00b", headers=auth)
    assert bad_type.status_code == 422 and bad_type.json()["field"] == "type"


def test_the_cli_manages_endpoints(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.client()
    env = {
        **{k: v for k, v in stack.env.items() if k != "BARGE_PROFILE"},
        "BARGE_API_URL": stack.url,
        "BARGE_API_KEY": key,
        "XDG_CONFIG_HOME": str(tmp_path),
    }

    def barge(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cli", "webhooks", *args]
        return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)

    url = f"http://127.0.0.1:{free_port()}/hooks"
    made = barge("create", url, "--event", "job.succeeded", "--event", "batch.completed")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("whsec_") and "not shown again" in made.stderr
    [listed] = json.loads(barge("list", "-o", "json").stdout)
    assert listed["url"] == url and listed["events"] == ["job.succeeded", "batch.completed"]
    assert listed["secret"] is None
    assert barge("list", "-q").stdout.split() == [listed["id"]]
    rotated = barge("rotate", listed["id"])
    assert rotated.returncode == 0 and rotated.stdout.strip() not in ("", secret)
    assert json.loads(barge("deliveries", listed["id"], "-o", "json").stdout) == []
    refused = barge("create", "http://169.254.169.254/latest/meta-data/", "--event", "job.failed")
    assert refused.returncode == 3 and "link-local" in refused.stderr
    assert barge("create", url, "--event", "job.exploded").returncode == 3
    assert barge("create", url).returncode == 2  # --event is required
    assert barge("delete", listed["id"]).returncode == 0
    assert barge("delete", listed["id"]).returncode == 3  # gone: 404
    assert json.loads(barge("list", "-o", "json").stdout) == []
