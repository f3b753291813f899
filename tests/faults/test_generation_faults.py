"""Generation through the engine on real processes: a shard of mixed chat requests whose worker is
SIGKILLed mid-generation and resumed (every custom_id exactly once, greedy outputs still equal
``model.generate`` alone); a cancel during a long generation stops the shard within about a
second; a request too long for the engine's token budget is a per-record error naming its token
count, and the job's events say which engine ran."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.faults.conftest import World
from tests.helpers import (
    greedy_reference,
    inference_spec,
    put_jsonl,
    read_jsonl,
    tiny_chat_model,
    upload_dir,
    wait_until,
)
from tests.services import ROOT, free_port, wait_port

pytestmark = pytest.mark.faults

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "red", "hat"]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")


@pytest.fixture
def chat_uri(s3: Any, models_bucket: str, chat_dir: Path) -> str:
    return upload_dir(s3, models_bucket, "tiny-chat-faults", chat_dir)


@pytest.fixture
def chat_url(world: World, s3: Any, chat_uri: str) -> Iterator[str]:
    """A real `barge api` process in the fault world, with an alias for the tiny chat model."""
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket="barge")
    port = free_port()
    env = {**world.env, "BARGE_OPENAI_MODEL_ALIASES": json.dumps({"chat-small": chat_uri})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=(world.tmp / "api-openai.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, 60)
    yield f"http://127.0.0.1:{port}/openai/v1"
    proc.terminate()
    proc.wait(10)


def _chat_rows(n: int) -> list[dict[str, Any]]:
    """Chat requests of mixed prompt lengths and max_tokens; greedy and seeded sampled ones,
    some with stop strings."""
    rng = random.Random(5)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        body: dict[str, Any] = {
            "model": "chat-small",
            "messages": [{"role": "user", "content": f"{i} {words}"}],
            "max_tokens": rng.choice([4, 8, 16, 40]),
            "temperature": 0 if i % 2 else 0.8,
            "seed": i,
        }
        if i % 5 == 0:
            body["stop"] = ["cat"]
        rows.append(
            {"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return rows


def test_a_worker_killed_mid_generation_leaves_every_custom_id_exactly_once(
    world: World, chat_url: str, chat_dir: Path
) -> None:
    key = world.auth["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=chat_url, api_key=key, max_retries=2)
    rows = _chat_rows(160)
    content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    source = client.files.create(file=("in.jsonl", content), purpose="batch")
    first = world.worker()
    world.start_scheduler()
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 240
    while client.batches.retrieve(batch.id).request_counts.completed < 8:
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.05)
    assert first.proc is not None
    assert client.batches.retrieve(batch.id).status == "in_progress"  # mid-generation
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    world.worker()

    deadline = time.monotonic() + 400
    while (done := client.batches.retrieve(batch.id)).status not in (
        "completed",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    assert done.status == "completed", done
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    seen = [line["custom_id"] for line in out]
    assert done.error_file_id is None
    assert len(seen) == len(set(seen)) == len(rows)
    # What the resumed attempt made is still right: greedy requests without a stop string
    # equal model.generate on each prompt alone, token for token.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    by_id = {line["custom_id"]: line["response"]["body"] for line in out}
    for i in (1, 3, 7, 11):
        body = rows[i]["body"]
        prompt = tok.apply_chat_template(
            body["messages"], tokenize=False, add_generation_prompt=True
        )
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        text, used, finish = greedy_reference(chat_dir, ids, body["max_tokens"])
        got = by_id[f"c-{i}"]
        assert got["choices"][0]["message"]["content"] == text
        assert got["usage"]["completion_tokens"] == used
        assert got["usage"]["prompt_tokens"] == len(ids)
        assert got["choices"][0]["finish_reason"] == finish


@pytest.mark.exclusive  # a wall-clock bound
def test_cancel_during_a_long_generation_stops_within_a_second(
    world: World, s3: Any, bucket: str, chat_uri: str
) -> None:
    rows = [{"id": i, "text": " ".join(WORDS[: 2 + i % 9])} for i in range(48)]
    data = put_jsonl(s3, bucket, "long.jsonl", rows)
    world.worker()
    world.start_scheduler()
    spec = inference_spec(
        chat_uri, data, f"s3://{bucket}/long/", task="generate", params={"max_new_tokens": 1000}
    )
    job_id = world.submit(spec)
    wait_until(
        lambda: any(e["kind"] == "generation_engine" for e in world.events(job_id)),
        timeout=120,
        interval=0.1,
        what="the shard to start generating",
    )
    time.sleep(1.5)  # well into the generation
    assert [s.status for s in world.shards(job_id)] == ["running"]
    asked = time.monotonic()
    r = world.api.post(f"/v1/jobs/{job_id}/cancel", headers=world.auth)
    assert r.status_code == 200, r.text
    wait_until(
        lambda: world.shards(job_id)[0].status != "running",
        timeout=30,
        interval=0.05,
        what="the shard to stop",
    )
    stopped = time.monotonic() - asked
    assert stopped < 1.5, f"the shard stopped {stopped:.2f}s after the cancel"
    job = world.wait_final(job_id)
    assert job["status"] == "cancelled"
    assert world.shards(job_id)[0].status == "cancelled"


def test_a_request_too_long_for_the_token_budget_fails_alone_naming_its_tokens(
    world: World, s3: Any, bucket: str, chat_uri: str, chat_dir: Path
) -> None:
    rows: list[dict[str, Any]] = [
        {"id": i, "text": " ".join(WORDS[: 1 + i % 7]), "p": {"max_new_tokens": 8 + i}}
        for i in range(12)
    ]
    rows[5]["p"] = {"max_new_tokens": 400}  # alone over the worker's 256-token budget
    data = put_jsonl(s3, bucket, "budget.jsonl", rows)
    world.worker(BARGE_GENERATION_TOKEN_BUDGET="256", BARGE_GENERATION_ENGINE="auto")
    world.start_scheduler()
    spec = inference_spec(
        chat_uri,
        data,
        f"s3://{bucket}/budget/",
        task="generate",
        params_field="p",
        max_failed_ratio=0.5,
    )
    job_id = world.submit(spec)
    job = world.wait_final(job_id)
    assert job["status"] == "succeeded", job
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="budget/_manifest.json")["Body"].read())
    out = [r for p in manifest["parts"] for r in read_jsonl(s3, bucket, p["key"])]
    err = [e for p in manifest["errors"] for e in read_jsonl(s3, bucket, p["key"])]
    assert [r["id"] for r in out] == [i for i in range(12) if i != 5]  # input order
    assert [e["id"] for e in err] == [5]
    from transformers import AutoTokenizer

    prompt = len(AutoTokenizer.from_pretrained(str(chat_dir))(rows[5]["text"])["input_ids"])
    assert err[0]["error"].startswith(
        f"the request needs {prompt + 400} tokens (a {prompt}-token prompt and max_tokens 400); "
        "this worker's generation engine holds at most 256 (BARGE_GENERATION_TOKEN_BUDGET)"
    ), err
    events = world.events(job_id)
    engine = [e for e in events if e["kind"] == "generation_engine"]
    assert engine and engine[0]["data"]["engine"] == "batched", events
