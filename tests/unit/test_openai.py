"""The OpenAI batch input checks and the error envelope, without services."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from api.routers.openai.errors import envelope
from barge.modeldirs import causal_lm_problem
from barge.settings import Settings
from barge.storage import LocalStore
from db.models import OpenAIFineTuningJob
from services.openai_batches import check_lines
from services.openai_files import BadRequest
from services.openai_fine_tuning import CHECKPOINT_PREFIX, EVENT_PREFIX, public_id, read_cursor
from services.openai_requests import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RequestError,
    check_parameters,
    check_token_ids,
    embedding_inputs,
    prompt_of,
)

ENDPOINT = EMBEDDINGS


def line(custom_id: str = "a", **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "m", "input": "x"},
    }
    row.update(over)
    return row


def check(rows: list[Any], **settings: Any) -> Any:
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    return check_lines(io.BytesIO(data), ENDPOINT, Settings(**settings))


def codes(result: Any) -> list[tuple[str, int | None]]:
    return [(e["code"], e["line"]) for e in result.errors]


def test_a_good_file_counts_its_requests_and_names_its_model() -> None:
    result = check([line("a"), b"", line("b")])
    assert (result.total, result.model, result.errors) == (2, "m", [])


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([line(), b"{oops"], [("invalid_json_line", 2)]),
        ([line(), b"[1, 2]"], [("invalid_json_line", 2)]),
        ([line(), b"\xff\xfe"], [("invalid_json_line", 2)]),
        ([line("a"), line("a")], [("duplicate_custom_id", 2)]),
        ([line(), line("b", url="/v1/chat/completions")], [("url_mismatch", 2)]),
        ([line(), line("b", body={"model": "n", "input": "x"})], [("model_mismatch", 2)]),
        ([line(), line("b", method="GET")], [("unsupported_method", 2)]),
        ([line(custom_id=3)], [("invalid_request", 1)]),  # type: ignore[arg-type]
        ([line(body={"input": "x"})], [("invalid_request", 1)]),
        ([b"", b"  "], [("empty_file", None)]),
        ([line("a"), b"{", line("a")], [("invalid_json_line", 2), ("duplicate_custom_id", 3)]),
    ],
)
def test_each_rule_has_its_code_and_line(rows: list[Any], expected: list[Any]) -> None:
    assert codes(check(rows)) == expected


def test_too_many_tasks_stops_reading() -> None:
    result = check([line(f"r{i}") for i in range(6)], openai_max_batch_tasks=5)
    assert codes(result) == [("too_many_tasks", None)]


def test_an_over_long_line_is_refused_without_being_held() -> None:
    long = json.dumps(line("b", body={"model": "m", "input": "x" * 5000})).encode()
    result = check([line("a"), long, line("c")], max_record_bytes=1024)
    assert codes(result) == [("invalid_json_line", 2)]
    assert result.total == 2


def test_the_envelope_has_openais_four_fields() -> None:
    body = envelope(404, {"error": "not_found", "message": "no such batch", "field": "batch_id"})
    assert body == {
        "error": {
            "message": "no such batch",
            "type": "not_found_error",
            "param": "batch_id",
            "code": "not_found",
        }
    }
    coded = envelope(400, {"error": "invalid_request", "message": "m", "detail": {"code": "x"}})
    assert coded["error"]["code"] == "x"


# --- what a request may ask (services.openai_requests) -----------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (CHAT, {"logprobs": True}, ("logprobs", "unsupported_parameter")),
        (CHAT, {"n": 2}, ("n", "unsupported_parameter")),
        (CHAT, {"n": True}, ("n", "unsupported_parameter")),  # true is not 1
        (CHAT, {"stream": 0}, ("stream", "unsupported_parameter")),  # 0 is not false
        (CHAT, {"tool_choice": "auto"}, ("tool_choice", "unsupported_parameter")),
        (CHAT, {"echo": False}, ("echo", "unknown_parameter")),  # a completions parameter
        (CHAT, {"top_k": 4}, ("top_k", "unknown_parameter")),
        (COMPLETIONS, {"logprobs": 0}, ("logprobs", "unsupported_parameter")),
        (COMPLETIONS, {"max_completion_tokens": 3}, ("max_completion_tokens", "unknown_parameter")),
        (EMBEDDINGS, {"dimensions": 8}, ("dimensions", "unsupported_parameter")),
    ],
)
def test_a_parameter_barge_does_not_run_is_named(
    endpoint: str, body: dict[str, Any], expected: tuple[str, str]
) -> None:
    with pytest.raises(RequestError) as caught:
        check_parameters(endpoint, {"model": "m", **body})
    assert (caught.value.param, caught.value.code) == expected


def test_no_op_values_bookkeeping_and_null_pass() -> None:
    check_parameters(
        CHAT,
        {
            "model": "m",
            "messages": [],
            "n": 1,
            "stream": False,
            "logprobs": False,
            "top_logprobs": 0,
            "tools": [],
            "tool_choice": "none",
            "response_format": {"type": "text"},
            "presence_penalty": 0.0,
            "frequency_penalty": 0,
            "logit_bias": {},
            "user": "u",
            "metadata": {"k": "v"},
            "store": True,
            "audio": None,
            "seed": None,
        },
    )
    check_parameters(COMPLETIONS, {"prompt": "p", "echo": False, "best_of": 1, "suffix": ""})
    check_parameters(EMBEDDINGS, {"input": "x", "encoding_format": "base64", "dimensions": None})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2], [[1, 2]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (["a", [3]], ["a", [3]]),
    ],
)
def test_embedding_inputs_take_text_and_token_ids(value: Any, expected: Any) -> None:
    assert embedding_inputs(value) == expected


@pytest.mark.parametrize("value", ["", [""], ["a", ""], [], [[]], [True], [1.5], None, 3])
def test_an_empty_or_malformed_input_is_refused(value: Any) -> None:
    with pytest.raises(RequestError) as caught:
        embedding_inputs(value)
    assert caught.value.param == "input"


def test_a_prompt_is_one_text_or_one_array_of_token_ids() -> None:
    assert prompt_of("p") == "p" and prompt_of(["p"]) == "p"
    assert prompt_of([5, 6]) == [5, 6] and prompt_of([[5, 6]]) == [5, 6]
    with pytest.raises(RequestError) as caught:
        prompt_of([[5], [6]])
    assert caught.value.code == "unsupported_parameter"
    for bad in ("", [], [[]], [""], None, {"p": 1}):
        with pytest.raises(RequestError):
            prompt_of(bad)
    with pytest.raises(RequestError, match="outside this model's vocabulary"):
        check_token_ids([1, 99], 50, "prompt")


# --- opaque event ids (services.openai_fine_tuning) ---------------------------------------------


def test_event_ids_are_sealed_per_job_and_read_back_only_by_it() -> None:
    mine = OpenAIFineTuningJob(id="ftjob-a", id_key=secrets.token_hex(16))
    theirs = OpenAIFineTuningJob(id="ftjob-b", id_key=secrets.token_hex(16))
    ids = [public_id(mine, EVENT_PREFIX, n) for n in (1, 2, 2**63 - 1)]
    assert len(set(ids)) == 3 and all(i.startswith("ftevent-") and len(i) == 40 for i in ids)
    assert public_id(theirs, EVENT_PREFIX, 1) != ids[0]
    assert [read_cursor(mine, i, EVENT_PREFIX) for i in ids] == [1, 2, 2**63 - 1]
    checkpoint = public_id(mine, CHECKPOINT_PREFIX, 1)
    for bad in (
        public_id(theirs, EVENT_PREFIX, 1),
        checkpoint,
        "ftevent-1",
        "ftevent-²",
        "ftevent-" + "9" * 23,
        ids[0].upper(),
        ids[0] + "\n",
        "ftevent-" + "0" * 32,
    ):
        with pytest.raises(BadRequest):
            read_cursor(mine, bad, EVENT_PREFIX)
    assert read_cursor(mine, checkpoint, CHECKPOINT_PREFIX) == 1


# --- model directories a fine-tune can train to generate ----------------------------------------


def test_only_a_causal_lm_and_for_chat_one_with_a_template_passes(tmp_path: Path) -> None:
    settings = Settings(local_model_dirs=[tmp_path])
    store = LocalStore(tmp_path / "store")

    def directory(name: str, architectures: list[str] | None, **files: str) -> str:
        path = tmp_path / name
        path.mkdir()
        config = {"model_type": "x", **({"architectures": architectures} if architectures else {})}
        files["config.json"] = json.dumps(config)
        for file, text in files.items():
            (path / file).write_text(text)
        return str(path)

    def problem(ref: str, chat: bool) -> str:
        return str(causal_lm_problem(settings, store, ref, chat))

    bert = directory("bert", ["BertModel"])
    gpt = directory("gpt", ["GPT2LMHeadModel"])
    template = {"chat_template.jinja": "{{ messages }}"}
    chat = directory("chat", ["LlamaForCausalLM"], **template)
    in_config = directory(
        "cfg", ["Qwen2ForCausalLM"], **{"tokenizer_config.json": '{"chat_template": "{{ x }}"}'}
    )
    unsaid = directory("unsaid", None)  # no architectures: nothing to refuse on
    assert "BertModel, not a causal language model" in problem(bert, False)
    assert problem(gpt, False) == problem(unsaid, False) == "None"
    assert "no chat template" in problem(gpt, True) and "no chat template" in problem(unsaid, True)
    assert problem(chat, True) == problem(in_config, True) == "None"
