"""The OpenAI batch input checks and the error envelope, without services."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from api.routers.openai.errors import envelope
from barge.settings import Settings
from services.openai_batches import check_lines

ENDPOINT = "/v1/embeddings"


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
