"""barge.specs.InferenceSpec: defaults, strictness and the messages a user sees."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from barge.specs import GenerateParams, InferenceSpec

BASE: dict[str, Any] = {
    "model": "s3://models/minilm/",
    "task": "embed",
    "input": "s3://data/in.jsonl",
    "output": "s3://data/out",
}


def spec(**overrides: Any) -> InferenceSpec:
    return InferenceSpec.model_validate({**BASE, **overrides})


def errors(**overrides: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as exc:
        spec(**overrides)
    return exc.value.errors()  # type: ignore[return-value]


class TestDefaults:
    def test_defaults(self) -> None:
        s = spec()
        assert s.type == "inference"
        assert s.text_field == "text"
        assert s.id_field is None
        assert s.input_format == "auto"
        assert s.batch_size == 32
        assert s.output_format == "jsonl"
        assert s.max_failed_ratio == 0.1
        assert s.shard_size is None
        assert s.metadata == {}

    @pytest.mark.parametrize(
        ("task", "params"),
        [
            ("embed", {"normalize": False, "max_length": 512}),
            ("classify", {"max_length": 512}),
            (
                "generate",
                {"max_new_tokens": 32, "temperature": 0.0, "seed": 0, "max_length": 512},
            ),
        ],
    )
    def test_params_filled_per_task(self, task: str, params: dict[str, Any]) -> None:
        assert spec(task=task).params == params

    def test_given_params_merge_with_defaults(self) -> None:
        s = spec(task="generate", params={"temperature": 0.7, "seed": 3})
        assert s.params == {"max_new_tokens": 32, "temperature": 0.7, "seed": 3, "max_length": 512}
        assert s.task_params() == GenerateParams.model_validate({"temperature": 0.7, "seed": 3})

    @pytest.mark.parametrize(
        ("given", "stored"),
        [
            ("s3://data/out", "s3://data/out/"),
            ("s3://data/out/", "s3://data/out/"),
            ("s3://data", "s3://data/"),
        ],
    )
    def test_output_is_a_prefix(self, given: str, stored: str) -> None:
        assert spec(output=given).output == stored

    def test_json_round_trip(self) -> None:
        s = spec(task="classify", id_field="doc_id", metadata={"team": "search"})
        assert InferenceSpec.model_validate(s.model_dump(mode="json")) == s


class TestRejected:
    def test_unknown_field(self) -> None:
        errs = errors(batchsize=8)
        assert [(e["loc"], e["type"]) for e in errs] == [(("batchsize",), "extra_forbidden")]

    @pytest.mark.parametrize("batch_size", [0, -1, 4097])
    def test_batch_size_out_of_range(self, batch_size: int) -> None:
        assert [e["loc"] for e in errors(batch_size=batch_size)] == [("batch_size",)]

    def test_unknown_task_reports_only_the_task(self) -> None:
        errs = errors(task="summarize", params={"anything": 1})
        assert [e["loc"] for e in errs] == [("task",)]
        assert "embed" in errs[0]["msg"] and "generate" in errs[0]["msg"]

    def test_params_typo_names_it_and_lists_the_allowed_ones(self) -> None:
        errs = errors(params={"normalise": True})
        assert [e["loc"] for e in errs] == [("params",)]
        msg = errs[0]["msg"]
        assert "normalise: unknown parameter" in msg
        assert "parameters for task 'embed': normalize, max_length" in msg

    def test_params_checked_against_the_task(self) -> None:
        # max_new_tokens is a generate parameter, not a classify one.
        msg = errors(task="classify", params={"max_new_tokens": 5})[0]["msg"]
        assert "max_new_tokens: unknown parameter" in msg
        assert "parameters for task 'classify': max_length" in msg

    def test_params_bad_value(self) -> None:
        msg = errors(task="generate", params={"temperature": -1})[0]["msg"]
        assert "temperature: " in msg and "greater than or equal to 0" in msg
        assert "max_new_tokens, temperature, seed, max_length" in msg

    @pytest.mark.parametrize("field", ["input", "output"])
    @pytest.mark.parametrize(
        "uri", ["/data/in.jsonl", "http://host/in.jsonl", "file:///tmp/x", "s3://", "s3:///key"]
    )
    def test_non_s3_locations(self, field: str, uri: str) -> None:
        errs = errors(**{field: uri})
        assert [e["loc"] for e in errs] == [(field,)]
        assert "s3://bucket/key" in errs[0]["msg"]

    def test_empty_model(self) -> None:
        assert [e["loc"] for e in errors(model="")] == [("model",)]

    @pytest.mark.parametrize("missing", ["model", "task", "input", "output"])
    def test_required_fields(self, missing: str) -> None:
        body = {k: v for k, v in BASE.items() if k != missing}
        with pytest.raises(ValidationError) as exc:
            InferenceSpec.model_validate(body)
        assert [(e["loc"], e["type"]) for e in exc.value.errors()] == [((missing,), "missing")]

    def test_max_failed_ratio_bounds(self) -> None:
        assert [e["loc"] for e in errors(max_failed_ratio=1.5)] == [("max_failed_ratio",)]
