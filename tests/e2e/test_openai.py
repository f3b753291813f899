"""The OpenAI-compatible surface as a user meets it: the official ``openai`` client against a
real API process (uvicorn) and a real worker, with real models (MiniLM, a tiny random causal LM
with a chat template)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import MAX_FILE_BYTES, MAX_TASKS, new_tenant_key
from tests.helpers import greedy_reference, inference_spec, minilm_dir, put_jsonl

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parent.parent / "data"
BATCH_FINAL = ("completed", "failed", "cancelled", "expired")


def lines_file(rows: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)


def upload(client: Any, rows: list[Any] | bytes, name: str = "batch.jsonl") -> Any:
    content = rows if isinstance(rows, bytes) else lines_file(rows)
    return client.files.create(file=(name, content), purpose="batch")


def wait_batch(client: Any, batch_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in BATCH_FINAL:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} not final after {timeout}s: {batch}")


def read_file(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def embed_line(custom_id: str, text: Any, model: str = "text-embedding-3-small", **extra: Any):  # type: ignore[no-untyped-def]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": model, "input": text, **extra},
    }


def chat_line(custom_id: str, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": messages, **extra},
    }


# --- files -------------------------------------------------------------------------------------


def test_files_upload_list_get_content_delete(client: Any) -> None:
    content = lines_file([embed_line("a", "hello")])
    created = client.files.create(file=("mine.jsonl", content), purpose="batch")
    assert created.object == "file" and created.id.startswith("file-")
    assert (created.bytes, created.filename, created.purpose) == (
        len(content),
        "mine.jsonl",
        "batch",
    )
    assert created.status == "processed" and created.created_at > 0
    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).content == content
    assert created.id in [f.id for f in client.files.list()]
    assert [f.id for f in client.files.list(purpose="fine-tune")] == []
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_an_upload_streams_and_stops_at_the_size_limit_with_a_clear_error(
    client: Any, openai_api: str
) -> None:
    big = b"x" * (MAX_FILE_BYTES + 10)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", big), purpose="batch")
    assert caught.value.status_code == 413
    assert "BARGE_OPENAI_MAX_FILE_BYTES" in caught.value.message
    assert client.files.list().data == []  # nothing half-stored
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="assistants")
    assert bad.value.code == "invalid_request" and bad.value.param == "purpose"


def test_errors_use_openais_envelope(openai_api: str, client: Any) -> None:
    r = httpx.get(f"{openai_api}/files")
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["type"] == "authentication_error"
    headers = {"Authorization": f"Bearer {client.api_key}"}
    r = httpx.get(f"{openai_api}/batches/batch_nope", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{openai_api}/batches", headers=headers, json={"endpoint": 3})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{openai_api}/files", headers=headers, content=b"not multipart")
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    for body in (b"{not json", b"\xff\xfe", b"NaN"):  # OpenAI answers no 422: a 400
        r = httpx.post(
            f"{openai_api}/batches",
            headers={**headers, "Content-Type": "application/json"},
            content=body,
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "body", (body, r.text)


# --- embeddings --------------------------------------------------------------------------------


def test_embeddings_batch_equals_minilm_run_directly(client: Any) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    texts = [f"review {i}: " + "the soup was cold " * (i % 7) for i in range(40)]
    rows = [embed_line(f"e-{i}", t) for i, t in enumerate(texts[:30])]
    rows.append(embed_line("list", texts[30:35]))
    rows.append(embed_line("b64", texts[35:40], encoding_format="base64"))
    rows.append(embed_line("bad", 42))  # fails alone
    source = upload(client, rows)
    batch = client.batches.create(
        input_file_id=source.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"team": "search"},
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"team": "search"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed) == (33, 32)
    assert done.request_counts.failed == 1
    assert done.completed_at and done.in_progress_at and done.output_file_id and done.error_file_id

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    expected = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    out = {line["custom_id"]: line for line in read_file(client, done.output_file_id)}
    assert set(out) == {f"e-{i}" for i in range(30)} | {"list", "b64"}
    for i in range(30):
        body = out[f"e-{i}"]["response"]["body"]
        assert out[f"e-{i}"]["response"]["status_code"] == 200
        assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
        np.testing.assert_allclose(body["data"][0]["embedding"], expected[i], atol=1e-4)
        assert body["usage"]["prompt_tokens"] == len(tok(texts[i])["input_ids"])
    listed = out["list"]["response"]["body"]["data"]
    assert [d["index"] for d in listed] == list(range(5))
    np.testing.assert_allclose([d["embedding"] for d in listed], expected[30:35], atol=1e-4)
    decoded = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        for d in out["b64"]["response"]["body"]["data"]
    ]
    np.testing.assert_allclose(decoded, expected[35:40], atol=1e-4)

    (error,) = read_file(client, done.error_file_id)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "input"
    total = sum(len(tok(t)["input_ids"]) for t in texts)
    assert done.usage.input_tokens == total and done.usage.total_tokens == total
    job = httpx.get(  # the batch's Barge job has the same totals
        f"{client.base_url}".replace("/openai/v1/", "/v1/jobs"),
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()["jobs"][0]
    assert job["usage"] == {"prompt_tokens": total, "completion_tokens": 0, "total_tokens": total}


def test_a_registered_model_name_works_in_a_body(
    client: Any, openai_api: str, minilm_uri: str
) -> None:
    base = openai_api.removesuffix("/openai/v1")
    r = httpx.post(
        f"{base}/v1/models",
        json={"name": "my-embedder", "uri": minilm_uri, "task": "embed"},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert r.status_code == 201, r.text
    source = upload(client, [embed_line("x", "hello", model="my-embedder")])
    done = wait_batch(
        client,
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
        ).id,
    )
    assert done.status == "completed" and done.request_counts.completed == 1


def test_the_openai_docs_example_files_run_as_they_are(client: Any) -> None:
    for name, endpoint in (
        ("openai_batch_embeddings.jsonl", "/v1/embeddings"),
        ("openai_batch_chat.jsonl", "/v1/chat/completions"),
    ):
        source = client.files.create(file=(DATA / name).open("rb"), purpose="batch")
        batch = client.batches.create(
            input_file_id=source.id, endpoint=endpoint, completion_window="24h"
        )
        done = wait_batch(client, batch.id, timeout=300)
        assert done.status == "completed", done
        out = read_file(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in out) == ["request-1", "request-2"], read_file(
            client, done.error_file_id
        )
        assert all(line["response"]["status_code"] == 200 for line in out)


# --- chat and completions ----------------------------------------------------------------------


def test_chat_and_completions_greedy_equal_generate_and_usage_counts_tokens(
    client: Any, chat_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    conversations = [
        [{"role": "user", "content": "hello there"}],
        [
            {"role": "system", "content": "you are terse"},
            {"role": "user", "content": "what is a barge?"},
        ],
        [
            {"role": "user", "content": "count to three"},
            {"role": "assistant", "content": "one two three"},
            {"role": "user", "content": "again, slower please"},
        ],
        [{"role": "user", "content": [{"type": "text", "text": "parts of text"}]}],
    ]
    rows = [
        chat_line(f"c-{i}", m, temperature=0, max_tokens=6 + 3 * i)
        for i, m in enumerate(conversations)
    ]
    rows.append(chat_line("c-new-name", conversations[0], temperature=0, max_completion_tokens=5))
    rows.append(chat_line("too-long", conversations[0], max_tokens=5000))
    rows.append(chat_line("bad-role", [{"role": "wizard", "content": "x"}]))
    source = upload(client, rows)
    done = wait_batch(
        client,
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert done.status == "completed", done
    out = {
        line["custom_id"]: line["response"]["body"]
        for line in read_file(client, done.output_file_id)
    }
    for i, messages in enumerate([*conversations, conversations[0]]):
        cid = f"c-{i}" if i < len(conversations) else "c-new-name"
        max_new = 6 + 3 * i if i < len(conversations) else 5
        flat = [
            {**m, "content": m["content"] if isinstance(m["content"], str) else "parts of text"}
            for m in messages
        ]
        prompt = tok.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        text, n_new, finish = greedy_reference(chat_dir, prompt_ids, max_new)
        body = out[cid]
        assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": text, "refusal": None}
        assert choice["finish_reason"] == finish
        assert body["usage"] == {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": n_new,
            "total_tokens": len(prompt_ids) + n_new,
        }
    errors = {line["custom_id"]: line["response"] for line in read_file(client, done.error_file_id)}
    assert set(errors) == {"too-long", "bad-role"}
    assert errors["too-long"]["status_code"] == 400
    assert errors["too-long"]["body"]["error"]["code"] == "context_length_exceeded"
    assert errors["bad-role"]["body"]["error"]["param"] == "messages[0].role"

    completions = [
        {
            "custom_id": f"p-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gpt-4o-mini", "prompt": p, "max_tokens": 7, "temperature": 0},
        }
        for i, p in enumerate(["once upon a time", "the barge floated down"])
    ]
    done = wait_batch(
        client,
        client.batches.create(
            input_file_id=upload(client, completions).id,
            endpoint="/v1/completions",
            completion_window="24h",
        ).id,
    )
    assert done.status == "completed", done
    out = {
        line["custom_id"]: line["response"]["body"]
        for line in read_file(client, done.output_file_id)
    }
    for i, p in enumerate(["once upon a time", "the barge floated down"]):
        ids = tok(p)["input_ids"]
        text, n_new, finish = greedy_reference(chat_dir, ids, 7)
        assert out[f"p-{i}"]["object"] == "text_completion"
        assert out[f"p-{i}"]["choices"][0]["text"] == text
        assert out[f"p-{i}"]["choices"][0]["finish_reason"] == finish
        assert out[f"p-{i}"]["usage"]["prompt_tokens"] == len(ids)
        assert out[f"p-{i}"]["usage"]["completion_tokens"] == n_new


def test_a_stop_sequence_cuts_the_text(client: Any, chat_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    messages = [{"role": "user", "content": "hello there"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full, _, _ = greedy_reference(chat_dir, tok(prompt, add_special_tokens=False)["input_ids"], 12)
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    rows = [chat_line("s", messages, temperature=0, max_tokens=12, stop=[stop])]
    done = wait_batch(
        client,
        client.batches.create(
            input_file_id=upload(client, rows).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )
    (line,) = read_file(client, done.output_file_id)
    choice = line["response"]["body"]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[: full.find(stop)]


# --- validation --------------------------------------------------------------------------------


def _create_failed(client: Any, rows: list[Any] | bytes, endpoint: str = "/v1/embeddings") -> Any:
    source = upload(client, rows)
    batch = client.batches.create(
        input_file_id=source.id, endpoint=endpoint, completion_window="24h"
    )
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed", batch
    assert batch.output_file_id is None and batch.failed_at
    return batch.errors.data


def test_every_validation_code_fails_the_batch_before_any_work(client: Any) -> None:
    ok = embed_line("a", "x")
    cases: list[tuple[list[Any] | bytes, str, int | None]] = [
        ([ok, "{not json"], "invalid_json_line", 2),
        ([ok, embed_line("a", "y")], "duplicate_custom_id", 2),
        ([ok, {**ok, "custom_id": "b", "url": "/v1/chat/completions"}], "url_mismatch", 2),
        ([ok, embed_line("b", "y", model="other")], "model_mismatch", 2),
        (b"\n\n", "empty_file", None),
        ([embed_line(f"t{i}", "x") for i in range(MAX_TASKS + 1)], "too_many_tasks", None),
        ([ok, {**ok, "custom_id": "b", "method": "GET"}], "unsupported_method", 2),
        ([ok, {"custom_id": "b", "method": "POST", "url": "/v1/embeddings"}], "invalid_request", 2),
    ]
    for rows, code, line in cases:
        errors = _create_failed(client, rows)
        assert (errors[0].code, errors[0].line) == (code, line), (code, errors)
        assert errors[0].message
    unknown = _create_failed(client, [embed_line("a", "x", model="no-such-model")])
    assert unknown[0].code == "model_not_found" and unknown[0].param == "body.model"

    source = upload(client, [ok])
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/images", completion_window="24h"
        )
    assert caught.value.code == "unsupported_endpoint" and caught.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/embeddings", completion_window="1h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
        )


def test_list_auto_paginates(client: Any) -> None:
    ids = [_create_and_id(client) for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert page.first_id == ids[-1] and page.last_id == ids[-2]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # every page, in order
    files = [f.id for f in client.files.list(limit=2)]
    assert len(files) == 5 and len(set(files)) == 5


def _create_and_id(client: Any) -> str:
    source = upload(client, b"\n")
    return str(
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
        ).id
    )


def test_another_tenants_files_and_batches_are_404(
    client: Any, openai_api: str, database_url: str
) -> None:
    source = upload(client, [embed_line("a", "x")])
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    other = openai.OpenAI(base_url=openai_api, api_key=new_tenant_key(database_url), max_retries=0)
    for call in (
        lambda: other.files.retrieve(source.id),
        lambda: other.files.content(source.id),
        lambda: other.files.delete(source.id),
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
        lambda: other.batches.create(
            input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.files.list().data == [] and other.batches.list().data == []
    assert client.files.retrieve(source.id).id == source.id  # untouched
    wait_batch(client, batch.id)


def test_cancel_mid_batch_keeps_what_finished(client: Any) -> None:
    # Two short requests finish first and are counted; the long ones are still decoding when
    # the cancel lands (the engine runs every request of a window together).
    rows = [
        chat_line(
            f"k-{i}",
            [{"role": "user", "content": "story"}],
            temperature=0,
            max_tokens=4 if i < 2 else 300 + i,
        )
        for i in range(40)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, rows).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 120
    while (now := client.batches.retrieve(batch.id)).request_counts.completed < 1:
        assert time.monotonic() < deadline and now.status in ("validating", "in_progress"), now
        time.sleep(0.2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    out = read_file(client, done.output_file_id)
    ids = [line["custom_id"] for line in out]
    assert 1 <= len(ids) < len(rows) and len(ids) == len(set(ids))
    assert done.request_counts.completed == len(ids)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_hostile_input_gets_a_4xx_never_a_500(client: Any, openai_api: str) -> None:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    for path in ("/files/file-%00", "/batches/batch_%00x", "/files/" + "f" * 300 + "/content"):
        r = httpx.get(f"{openai_api}{path}", headers=headers)
        assert r.status_code == 404, (path, r.text)
    r = httpx.get(f"{openai_api}/batches", params={"after": "x\x00"}, headers=headers)
    assert r.status_code == 400
    named = client.files.create(file=("a\x00b\nc.jsonl", b"{}\n"), purpose="batch")
    assert named.filename and named.filename.isprintable()
    source = upload(client, [embed_line("a", "x")])
    for bad in ("\\ud800", "\\u0000"):
        raw = (
            f'{{"input_file_id": "{source.id}", "endpoint": "/v1/embeddings", '
            f'"completion_window": "24h", "metadata": {{"k": "{bad}"}}}}'
        )
        r = httpx.post(
            f"{openai_api}/batches",
            headers={**headers, "Content-Type": "application/json"},
            content=raw.encode(),
        )
        assert r.status_code == 400, r.text
    errors = _create_failed(client, [embed_line("a", "x", model="m\x00")])
    assert errors[0].code == "invalid_request"


def test_no_query_parameter_or_form_field_with_a_nul_reaches_the_database(
    client: Any, openai_api: str
) -> None:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    for path, params, param in [
        ("/files", {"purpose": "batch\x00"}, "purpose"),
        ("/batches", {"limit": "2", "x\x00": "1"}, "x\x00"),
        ("/fine_tuning/jobs", {"metadata[team]": "a\x00b"}, "metadata[team]"),
        ("/fine_tuning/jobs", {"metadata[te\x00am]": "ab"}, "metadata[te\x00am]"),
        ("/models", {"q": "\x00"}, "q"),
    ]:
        r = httpx.get(f"{openai_api}{path}", params=params, headers=headers)
        assert r.status_code == 400, (path, params, r.text)
        assert r.json()["error"]["param"] == param and "NUL" in r.json()["error"]["message"]
    r = httpx.post(
        f"{openai_api}/files",
        headers=headers,
        files={"file": ("a.jsonl", b"{}\n")},
        data={"purpose": "batch", "note": "a\x00b"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "note", r.text
    assert client.files.list().data == []


def test_a_model_the_native_spec_refuses_fails_the_batch_naming_its_line(client: Any) -> None:
    for model, words in [
        ("S3://bucket/model/", "must be an s3://bucket/prefix/ model directory"),
        ("s3://b//x/", "is not a usable s3://bucket/key URI"),
        ("name@0", "version 1 to"),
        ("ft:gpt-4o-mini:acme::abc", "a registered model name[@version]"),
        ("builtin:face-haar", "runs task 'detect' only"),
    ]:
        rows = ["", embed_line("a", "x", model=model), embed_line("b", "y", model=model)]
        (error,) = _create_failed(client, rows)
        assert (error.code, error.line, error.param) == ("invalid_request", 2, "body.model")
        assert words in error.message, (model, error.message)


def _run_batch(client: Any, rows: list[Any], endpoint: str) -> tuple[Any, dict[str, Any]]:
    """The finished batch and its lines (output and error files) by custom_id."""
    done = wait_batch(
        client,
        client.batches.create(
            input_file_id=upload(client, rows).id, endpoint=endpoint, completion_window="24h"
        ).id,
    )
    assert done.status == "completed", done
    lines = read_file(client, done.output_file_id) + read_file(client, done.error_file_id)
    ids = sorted(line["custom_id"] for line in lines)
    assert ids == sorted(r["custom_id"] for r in rows), (done, lines)  # each exactly once
    return done, {line["custom_id"]: line for line in lines}


def _refusal(line: dict[str, Any]) -> tuple[int, str, str]:
    """A refused request's status, error code and param, in OpenAI's error-line shape."""
    assert line["error"] is None, line  # OpenAI's shape: the error is the response's body
    error = line["response"]["body"]["error"]
    assert error["type"] == "invalid_request_error" and error["message"], line
    return line["response"]["status_code"], error["code"], error["param"]


def test_a_parameter_barge_does_not_run_is_refused_per_request_never_ignored(
    client: Any,
) -> None:
    hello = [{"role": "user", "content": "hello there"}]
    asks = {
        "logprobs": {"logprobs": True},
        "top_logprobs": {"top_logprobs": 3},
        "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        "tool_choice": {"tool_choice": "required"},
        "response_format": {"response_format": {"type": "json_object"}},
        "n": {"n": 2},
        "stream": {"stream": True},
        "presence_penalty": {"presence_penalty": 0.5},
        "logit_bias": {"logit_bias": {"50": 10}},
    }
    no_ops = {
        "n": 1,
        "stream": False,
        "logprobs": False,
        "top_logprobs": 0,
        "tool_choice": "none",
        "tools": [],
        "response_format": {"type": "text"},
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "user": "user-42",
        "store": False,
        "seed": None,
    }
    rows = [chat_line(name, hello, max_tokens=3, **extra) for name, extra in asks.items()]
    rows.append(chat_line("top_k", hello, max_tokens=3, top_k=5))
    rows.append(chat_line("no-ops", hello, max_tokens=3, temperature=0, **no_ops))
    rows.append(chat_line("plain", hello, max_tokens=3, temperature=0))
    _, lines = _run_batch(client, rows, "/v1/chat/completions")
    for name in asks:
        assert _refusal(lines[name]) == (400, "unsupported_parameter", name), lines[name]
    assert _refusal(lines["top_k"]) == (400, "unknown_parameter", "top_k")
    assert lines["no-ops"]["response"]["status_code"] == 200
    answer = lines["no-ops"]["response"]["body"]["choices"]
    assert answer == lines["plain"]["response"]["body"]["choices"]

    completions = [
        {
            "custom_id": name,
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gpt-4o-mini", "prompt": "once", "max_tokens": 3, **extra},
        }
        for name, extra in [
            ("echo", {"echo": True}),
            ("logprobs", {"logprobs": 2}),
            ("best_of", {"best_of": 3}),
            ("suffix", {"suffix": "the end"}),
            ("ok", {"echo": False, "best_of": 1, "n": 1}),
        ]
    ]
    _, lines = _run_batch(client, completions, "/v1/completions")
    for name in ("echo", "logprobs", "best_of", "suffix"):
        assert _refusal(lines[name]) == (400, "unsupported_parameter", name), lines[name]
    assert lines["ok"]["response"]["status_code"] == 200

    embeddings = [
        embed_line("dimensions", "x", dimensions=64),
        embed_line("ok", "x", user="u-1", dimensions=None),
    ]
    _, lines = _run_batch(client, embeddings, "/v1/embeddings")
    assert _refusal(lines["dimensions"]) == (400, "unsupported_parameter", "dimensions")
    assert lines["ok"]["response"]["status_code"] == 200


def test_input_and_prompt_take_token_ids_and_refuse_an_empty_input(
    client: Any, chat_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = ["the soup was cold", "lovely staff"]
    ids = [tok(t)["input_ids"] for t in texts]
    rows = [
        embed_line("texts", texts),
        embed_line("one-array", ids[0]),
        embed_line("arrays", ids),
        embed_line("empty", ""),
        embed_line("empty-in-list", ["fine", ""]),
        embed_line("empty-list", []),
        embed_line("out-of-vocabulary", [101, 10**7, 102]),
    ]
    _, lines = _run_batch(client, rows, "/v1/embeddings")

    def vectors(name: str) -> list[Any]:
        body = lines[name]["response"]["body"]
        assert lines[name]["response"]["status_code"] == 200, lines[name]
        return [d["embedding"] for d in body["data"]]

    np.testing.assert_allclose(vectors("arrays"), vectors("texts"), atol=1e-5)
    np.testing.assert_allclose(vectors("one-array"), vectors("texts")[:1], atol=1e-5)
    usage = lines["arrays"]["response"]["body"]["usage"]
    assert usage["prompt_tokens"] == sum(map(len, ids))
    for name in ("empty", "empty-in-list", "empty-list", "out-of-vocabulary"):
        status, _, param = _refusal(lines[name])
        assert (status, param) == (400, "input"), lines[name]

    chat_tok = AutoTokenizer.from_pretrained(str(chat_dir))
    prompt_ids = chat_tok("once upon a time")["input_ids"]
    completions = [
        {
            "custom_id": name,
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gpt-4o-mini", "prompt": prompt, "max_tokens": 5, "temperature": 0},
        }
        for name, prompt in [
            ("text", "once upon a time"),
            ("ids", prompt_ids),
            ("listed-ids", [prompt_ids]),
            ("two-prompts", [prompt_ids, prompt_ids]),
            ("empty", ""),
        ]
    ]
    _, lines = _run_batch(client, completions, "/v1/completions")
    text, _, _ = greedy_reference(chat_dir, prompt_ids, 5)
    for name in ("text", "ids", "listed-ids"):
        assert lines[name]["response"]["body"]["choices"][0]["text"] == text, lines[name]
    assert _refusal(lines["two-prompts"]) == (400, "unsupported_parameter", "prompt")
    assert _refusal(lines["empty"])[2] == "prompt"


def test_models_lists_the_aliases_and_the_tenants_registered_models(
    client: Any, openai_api: str, database_url: str, minilm_uri: str
) -> None:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    base = openai_api.removesuffix("/openai/v1")
    for _ in range(2):
        r = httpx.post(
            f"{base}/v1/models",
            json={"name": "house-embedder", "uri": minilm_uri, "task": "embed"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
    listed = {m.id: m for m in client.models.list()}
    assert {"text-embedding-3-small", "gpt-4o-mini", "gpt-3.5-turbo-0125"} <= set(listed)
    assert {"house-embedder", "house-embedder@2", "house-embedder@1"} <= set(listed)
    assert all(m.object == "model" and isinstance(m.created, int) for m in listed.values())
    assert listed["gpt-4o-mini"].owned_by == "system"
    assert listed["house-embedder@1"].owned_by.startswith("org-")
    assert client.models.retrieve("house-embedder@2").created >= listed["house-embedder@1"].created
    assert client.models.retrieve("text-embedding-3-small").id == "text-embedding-3-small"
    other = openai.OpenAI(base_url=openai_api, api_key=new_tenant_key(database_url), max_retries=0)
    for who, name in [
        (client, "no-such-model"),
        (client, "house-embedder@3"),
        (other, "house-embedder"),
    ]:
        with pytest.raises(openai.NotFoundError) as caught:
            who.models.retrieve(name)
        assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert "house-embedder" not in {m.id for m in other.models.list()}


def test_a_route_barge_does_not_serve_says_so_in_openais_envelope(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["code"] == "unknown_url"
    assert "POST /openai/v1/chat/completions" in error["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert "POST /openai/v1/embeddings" in caught.value.body["message"]
    with pytest.raises(openai.APIStatusError) as caught:
        client.delete("/batches", cast_to=httpx.Response)
    assert caught.value.status_code == 405
    assert caught.value.body["message"] == (
        "method not allowed: DELETE /openai/v1/batches; allowed: GET, POST"
    )


def test_a_model_registered_for_another_task_is_refused_at_submit(
    client: Any, openai_api: str, chat_uri: str, s3: Any, bucket: str
) -> None:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    base = openai_api.removesuffix("/openai/v1")
    r = httpx.post(
        f"{base}/v1/models",
        json={"name": "house-chat", "uri": chat_uri, "task": "generate"},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    (error,) = _create_failed(client, ["", embed_line("a", "x", model="house-chat")])
    assert (error.code, error.line, error.param) == ("model_task_mismatch", 2, "body.model")
    assert "registered for task 'generate'" in error.message
    data = put_jsonl(s3, bucket, "in.jsonl", [{"id": 1, "text": "x"}])
    native = httpx.post(
        f"{base}/v1/jobs",
        json=inference_spec("house-chat@1", data, f"s3://{bucket}/out/"),
        headers=headers,
    )
    assert native.status_code == 422 and native.json()["field"] == "task", native.text
    assert "registered for task 'generate'" in native.json()["message"]
