"""OpenAI-compatible fine-tuning jobs with the official ``openai`` client: files uploaded with
purpose fine-tune, a LoRA chat fine-tune of a tiny base created, followed through its events
(auto-paged) and checkpoints until it succeeds, and its ``fine_tuned_model`` used at once as a
batch's model; bad requests refused with OpenAI's envelope and what to fix; a job paused
(``pausing``, ``paused``: it checkpoints and frees its worker), resumed from that checkpoint and
cancelled."""

from __future__ import annotations

import csv
import io
import re
import time
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import new_tenant_key
from tests.e2e.test_openai import lines_file, read_file, wait_batch
from tests.helpers import COLOURS, colour_chats, tiny_lora_base, upload_dir

pytestmark = pytest.mark.e2e

FINAL = ("succeeded", "failed", "cancelled")
LORA = {"type": "lora", "r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}
# 6e-3, the LoRA test's learning rate: the LoRA base rate (2e-4) times 30.
HYPERPARAMETERS = {"n_epochs": 16, "batch_size": 16, "learning_rate_multiplier": 30}
EXACT_MATCH = 0.9


@pytest.fixture(scope="module")
def lora_base(s3: Any, models_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_dir(
        s3, models_bucket, "lora-base", tiny_lora_base(tmp_path_factory.mktemp("b") / "base")
    )


def _upload(client: Any, rows: list[Any] | bytes, name: str = "train.jsonl") -> Any:
    content = rows if isinstance(rows, bytes) else lines_file(rows)
    return client.files.create(file=(name, content), purpose="fine-tune")


def _wait(client: Any, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in FINAL:
            return job
        assert job.status in ("validating_files", "queued", "running"), job
        time.sleep(0.5)
    raise AssertionError(f"fine-tuning job {job_id} not final after {timeout}s: {job}")


def test_a_lora_chat_fine_tune_through_the_official_client_then_a_batch_on_its_model(
    client: Any, lora_base: str, s3: Any
) -> None:
    train = _upload(client, colour_chats(96, 1))
    validation = _upload(client, colour_chats(30, 2), "validation.jsonl")
    assert train.purpose == "fine-tune"
    created = client.fine_tuning.jobs.create(
        model=lora_base,
        training_file=train.id,
        validation_file=validation.id,
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
        suffix="colours",
        seed=7,
        metadata={"team": "vision"},
        extra_body={"barge": {"method": LORA}},
    )
    assert created.object == "fine_tuning.job" and created.id.startswith("ftjob-")
    assert created.status in ("queued", "running") and created.fine_tuned_model is None
    assert created.hyperparameters.n_epochs == 16 and created.hyperparameters.batch_size == 16
    assert created.hyperparameters.learning_rate_multiplier == 30
    assert created.seed == 7 and created.training_file == train.id
    assert created.validation_file == validation.id and created.metadata == {"team": "vision"}
    assert created.method.type == "supervised"

    job = _wait(client, created.id)
    assert job.status == "succeeded", job
    assert job.fine_tuned_model == "lora-base-colours@1" and job.error is None
    assert job.finished_at >= job.created_at
    # Every chat's tokens once an epoch (the exact count is checked in the unit tests).
    assert created.trained_tokens is None and isinstance(job.trained_tokens, int)
    assert job.trained_tokens % 16 == 0 and job.trained_tokens // 16 >= 96 * 5

    # Events, newest first, auto-paged five at a time by the client.
    events = list(client.fine_tuning.jobs.list_events(created.id, limit=5))
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) > 10
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert events[-1].message == f"created fine-tuning job {created.id}"
    assert events[0].data["status"] == "succeeded" and events[0].level == "info"
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in (e.data or {})]
    steps = [e.data["step"] for e in metrics if "total_steps" in e.data]
    assert steps and steps == sorted(steps, reverse=True), steps
    assert all(isinstance(e.data["train_loss"], float) for e in metrics)
    assert any("registered" in e.message for e in events)

    # One checkpoint per epoch, newest first; the last (registered) epoch names the model, the
    # two before it their own models, as OpenAI keeps them; the older ones have none.
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(created.id, limit=3))
    assert len(checkpoints) == 16
    numbers = [c.step_number for c in checkpoints]
    assert numbers == sorted(numbers, reverse=True) and numbers[0] == 16 * 6  # 96 / 16 per epoch
    assert [c.fine_tuned_model_checkpoint for c in checkpoints[:3]] == [
        job.fine_tuned_model,
        "lora-base-colours-ckpt-step-90@1",
        "lora-base-colours-ckpt-step-84@1",
    ]
    assert all(c.fine_tuned_model_checkpoint is None for c in checkpoints[3:])
    # Only the kept epochs' models stay in storage (each epoch's is written as it ends).
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket="barge").get("Contents", [])
        if f"/fine_tuning/{created.id}/epochs/" in o["Key"]
    ]
    assert {k.split("/epochs/")[1].split("/")[0] for k in keys} == {"epoch-0014", "epoch-0015"}
    for c in checkpoints:
        assert c.fine_tuning_job_id == created.id and c.object == "fine_tuning.job.checkpoint"
        assert c.metrics.train_loss > 0 and c.metrics.valid_loss > 0
    assert checkpoints[-1].metrics.train_loss > checkpoints[0].metrics.train_loss

    # The results file: training loss by step, validation metrics at each epoch's end.
    assert len(job.result_files) == 1
    results = client.files.retrieve(job.result_files[0])
    assert results.purpose == "fine-tune-results" and results.filename.endswith("_results.csv")
    table = list(csv.DictReader(io.StringIO(client.files.content(results.id).text)))
    assert list(table[0]) == ["step", "train_loss", "valid_loss", "valid_exact_match"]
    assert [int(r["step"]) for r in table] == sorted({*steps, *numbers})
    by_step = {int(r["step"]): r for r in table}
    for c in checkpoints:
        assert float(by_step[c.step_number]["valid_loss"]) == c.metrics.valid_loss
    for e in metrics:
        if "total_steps" in e.data:
            assert float(by_step[e.data["step"]]["train_loss"]) == e.data["train_loss"]

    # The list filters by metadata and pages.
    listed = client.fine_tuning.jobs.list(metadata={"team": "vision"})
    assert [j.id for j in listed.data] == [created.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []

    # The fine-tuned model answers a batch at once, by its name.
    held_out = colour_chats(20, 3)
    lines = [
        {
            "custom_id": f"q-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": job.fine_tuned_model,
                "messages": row["messages"][:2],
                "max_tokens": 4,
                "temperature": 0,
            },
        }
        for i, row in enumerate(held_out)
    ]
    source = client.files.create(file=("q.jsonl", lines_file(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 20, done
    answers = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"].strip()
        for line in read_file(client, done.output_file_id)
    }
    right = sum(
        answers[f"q-{i}"] == COLOURS[row["messages"][1]["content"].split()[-1]]
        for i, row in enumerate(held_out)
    )
    curve = [(c.step_number, c.metrics.valid_exact_match) for c in checkpoints]
    print(f"\nexact match on held-out prompts {right}/20; validation by epoch {curve}")
    assert right / 20 >= EXACT_MATCH, (answers, curve)

    # An epoch's checkpoint is a model too: the epoch-15 adapter answers over the same base.
    earlier = checkpoints[1].fine_tuned_model_checkpoint
    for line in lines:
        line["body"]["model"] = earlier
    source = client.files.create(file=("q15.jsonl", lines_file(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 20, done
    out = read_file(client, done.output_file_id)
    assert {line["response"]["body"]["model"] for line in out} == {earlier}
    right = sum(
        line["response"]["body"]["choices"][0]["message"]["content"].strip()
        == COLOURS[held_out[int(line["custom_id"][2:])]["messages"][1]["content"].split()[-1]]
        for line in out
    )
    assert checkpoints[1].metrics.valid_exact_match >= EXACT_MATCH
    assert right / 20 >= EXACT_MATCH, (out, curve)


def test_bad_requests_are_refused_with_what_to_fix(
    client: Any,
    openai_api: str,
    database_url: str,
    lora_base: str,
    minilm_uri: str,
    generator_uri: str,
) -> None:
    good = _upload(client, colour_chats(12, 1))

    def refused(error: type[Exception], needle: str, **kwargs: Any) -> None:
        body = {"model": lora_base, "training_file": good.id, **kwargs}
        with pytest.raises(error) as raised:
            client.fine_tuning.jobs.create(**body)
        assert needle in str(raised.value), raised.value

    bad_lines = _upload(
        client,
        lines_file(colour_chats(2, 1))
        + b"{not json\n"
        + lines_file(
            [
                {"messages": [{"role": "user", "content": "hi"}]},
                {"messages": [{"role": "wizard", "content": "hi"}]},
                {"prompt": "a", "completion": "b"},
            ]
        ),
    )
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=lora_base, training_file=bad_lines.id)
    message = str(raised.value)
    assert "line 3 is not valid JSON" in message
    assert "line 4: 'messages' has no assistant message" in message
    assert "line 5: messages[0] must be an object with a role" in message
    assert "line 6: is a completion example in a file of chat examples" in message
    assert raised.value.body["param"] == "training_file"

    batch_file = client.files.create(file=("b.jsonl", b'{"a": 1}\n'), purpose="batch")
    refused(openai.BadRequestError, "purpose 'fine-tune'", training_file=batch_file.id)
    refused(openai.NotFoundError, "no such file", training_file="file-nope")
    refused(openai.BadRequestError, "method dpo is not supported", method={"type": "dpo"})
    refused(openai.BadRequestError, "n_epochs must be", hyperparameters={"n_epochs": 0})
    refused(openai.BadRequestError, "batch_size must be", hyperparameters={"batch_size": "big"})
    refused(openai.BadRequestError, "suffix must be", suffix="no spaces please")
    refused(
        openai.BadRequestError,
        "barge.method.lora.r",
        extra_body={"barge": {"method": {"type": "lora", "r": 0}}},
    )
    refused(openai.BadRequestError, "model", model="s3://no-such-bucket/model/")
    # A base that cannot learn to generate (an embedding model), or chat examples for a model
    # without a chat template: refused at create, not failed a moment later.
    for model, words in [
        (minilm_uri, "BertModel, not a causal language model"),
        (generator_uri, "has no chat template"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            client.fine_tuning.jobs.create(model=model, training_file=good.id)
        assert words in raised.value.message, raised.value
        assert (raised.value.code, raised.value.param) == ("model_not_available", "model")
    assert client.fine_tuning.jobs.list().data == []  # nothing was created
    assert [j["type"] for j in _native_jobs(client)] == []


def _native_jobs(client: Any) -> list[dict[str, Any]]:
    """The tenant's Barge jobs, as /v1/jobs lists them."""
    r = httpx.get(
        str(client.base_url).replace("/openai/v1/", "/v1/jobs"),
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    return list(r.json()["jobs"])


def test_cancel_and_another_tenants_jobs(
    client: Any, openai_api: str, database_url: str, lora_base: str
) -> None:
    train = _upload(client, colour_chats(96, 1))
    job = client.fine_tuning.jobs.create(
        model=lora_base,
        training_file=train.id,
        hyperparameters={"n_epochs": 200, "batch_size": 4},
    )
    # "auto" values became numbers; the job is the tenant's alone.
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    other = openai.OpenAI(base_url=openai_api, api_key=new_tenant_key(database_url), max_retries=0)
    for call in (
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        lambda: other.fine_tuning.jobs.cancel(job.id),
        lambda: other.fine_tuning.jobs.list_events(job.id),
        lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: other.fine_tuning.jobs.create(model=lora_base, training_file=train.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.fine_tuning.jobs.list().data == []

    deadline = time.monotonic() + 120
    while client.fine_tuning.jobs.retrieve(job.id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _check_event_ids(client, job.id, other, lora_base)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    done = _wait(client, job.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def _check_event_ids(client: Any, job_id: str, other: Any, base: str) -> None:
    """Event ids are opaque (no number of a global sequence) and read back as cursors only by
    their own job's list; any other cursor is a 400 naming ``after``, never a 500."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=2)
    ids = [e.id for e in events.data]
    assert len(ids) == 2 and all(re.fullmatch(r"ftevent-[0-9a-f]{32}", i) for i in ids), ids
    following = client.fine_tuning.jobs.list_events(job_id, limit=1, after=ids[0]).data
    assert [e.id for e in following] == ids[1:]
    train = _upload(other, colour_chats(12, 1))
    theirs = other.fine_tuning.jobs.create(model=base, training_file=train.id)
    their_event = other.fine_tuning.jobs.list_events(theirs.id, limit=1).data[0].id
    other.fine_tuning.jobs.cancel(theirs.id)
    checkpoint_like = "ftckpt-" + ids[0].removeprefix("ftevent-")
    for after in (
        "ftevent-²",
        "ftevent-" + "9" * 23,
        "ftevent-62",
        ids[0].upper(),
        checkpoint_like,
        their_event,
        "ftevent-" + "0" * 32,
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            client.fine_tuning.jobs.list_events(job_id, after=after)
        assert raised.value.param == "after", (after, raised.value)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.checkpoints.list(job_id, after=ids[0])


def _until_status(client: Any, job_id: str, status: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status != status:
        assert time.monotonic() < deadline, f"{job_id} not {status} after {timeout}s: {job}"
        time.sleep(0.2)
    return job


def _messages(client: Any, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data]


def test_pause_and_resume_through_the_official_client(
    client: Any, openai_api: str, database_url: str, lora_base: str
) -> None:
    train = _upload(client, colour_chats(96, 1))
    job = client.fine_tuning.jobs.create(
        model=lora_base,
        training_file=train.id,
        hyperparameters={"n_epochs": 200, "batch_size": 4},
    )
    other = openai.OpenAI(base_url=openai_api, api_key=new_tenant_key(database_url), max_retries=0)
    for call in (other.fine_tuning.jobs.pause, other.fine_tuning.jobs.resume):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    _until_status(client, job.id, "running")
    deadline = time.monotonic() + 300  # training under way: the pause takes a checkpoint
    while not any(m.startswith("step ") for m in _messages(client, job.id)):
        assert time.monotonic() < deadline, _messages(client, job.id)
        time.sleep(0.3)
    assert client.fine_tuning.jobs.resume(job.id).status == "running"  # changes nothing

    assert client.fine_tuning.jobs.pause(job.id).status in ("pausing", "paused")
    paused = _until_status(client, job.id, "paused")
    assert paused.estimated_finish is None
    assert any(m.startswith("paused at step ") for m in _messages(client, job.id))
    assert [j["status"] for j in _native_jobs(client)] == ["paused"]
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"  # again: nothing changes

    assert client.fine_tuning.jobs.resume(job.id).status == "running"
    deadline = time.monotonic() + 300
    while not any(m.startswith("resumed from the checkpoint") for m in _messages(client, job.id)):
        assert time.monotonic() < deadline, _messages(client, job.id)
        time.sleep(0.3)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert _wait(client, job.id).status == "cancelled"
    for call in (client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        with pytest.raises(openai.ConflictError):
            call(job.id)
