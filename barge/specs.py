"""Job specs: what a user submits, validated once, stored as JSON on the job row."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from barge.jsonvalues import check_json_value
from barge.uris import uri_problem

TASKS = ("embed", "classify", "generate", "text2text", "regress")
Task = Literal["embed", "classify", "generate", "text2text", "regress"]
MAX_URI_CHARS = 2048
MAX_VERSION = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        check_json_value(v)
        return v


def check_uri(v: str) -> str:
    problem = uri_problem(v) if len(v) <= MAX_URI_CHARS else f"is over {MAX_URI_CHARS} characters"
    if problem:
        raise ValueError(problem)
    return v


def as_prefix(v: str) -> str:
    return v if v.endswith("/") else v + "/"


_MODEL_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,99})(?:@(\d{1,10}))?$")


def check_model_ref(v: str) -> str:
    """An s3:// model directory, a local path (checked against BARGE_LOCAL_MODEL_DIRS at
    submit), or a registry name ``name[@version]``."""
    if v.startswith("s3://"):
        return as_prefix(check_uri(v))
    if v.startswith(("/", "file://")):
        return v
    match = _MODEL_REF.match(v)
    if match is None or int(match.group(2) or 1) > MAX_VERSION or match.group(2) == "0":
        raise ValueError(
            "must be an s3://bucket/prefix/ model directory, a local directory under "
            "BARGE_LOCAL_MODEL_DIRS, or a registered model name[@version] (version 1 to "
            f"{MAX_VERSION})"
        )
    return v


class EmbedParams(_Strict):
    normalize: bool = Field(False, description="L2-normalise each embedding.")
    max_length: int = Field(512, ge=1, le=8192, description="Tokens kept per record.")


class ClassifyParams(_Strict):
    max_length: int = Field(512, ge=1, le=8192, description="Tokens kept per record.")


class GenerateParams(_Strict):
    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 means greedy decoding.")
    seed: int = Field(0, ge=0, description="Seed for sampling; same seed, same outputs.")
    max_length: int = Field(512, ge=1, le=8192, description="Prompt tokens kept per record.")


class Text2TextParams(_Strict):
    max_new_tokens: int = Field(32, ge=1, le=4096)
    num_beams: int = Field(1, ge=1, le=32, description="Beam search width; 1 is no beam search.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 means greedy decoding.")
    seed: int = Field(0, ge=0, description="Seed for sampling; same seed, same outputs.")
    prefix: str = Field(
        "",
        max_length=1024,
        description='Put before every source text, e.g. "translate English to German: ".',
    )
    max_length: int = Field(512, ge=1, le=8192, description="Source tokens kept per record.")


class RegressParams(_Strict):
    max_length: int = Field(512, ge=1, le=8192, description="Tokens kept per text input.")


PARAMS_BY_TASK: dict[str, type[_Strict]] = {
    "embed": EmbedParams,
    "classify": ClassifyParams,
    "generate": GenerateParams,
    "text2text": Text2TextParams,  # a Hugging Face seq2seq model (worker.seq2seq)
    "regress": RegressParams,  # an ONNX model only (worker.onnxmodels)
}


class InferenceSpec(_Strict):
    type: Literal["inference"] = "inference"
    model: str = Field(
        ...,
        min_length=1,
        max_length=MAX_URI_CHARS,
        description="s3://bucket/prefix/ of a Hugging Face model directory, a local directory "
        "under BARGE_LOCAL_MODEL_DIRS, or a registry name `name[@version]`.",
    )
    task: Task
    input: str = Field(
        ...,
        max_length=MAX_URI_CHARS,
        description="s3:// URI of one object or of a prefix of objects.",
    )
    output: str = Field(
        ..., max_length=MAX_URI_CHARS, description="s3:// prefix the outputs are written under."
    )
    text_field: str = Field("text", min_length=1, max_length=256)
    id_field: str | None = Field(None, min_length=1, max_length=256)
    input_format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    max_failed_ratio: float = Field(0.1, ge=0.0, le=1.0)
    shard_size: int | None = Field(
        None, ge=1, le=10_000_000, description="Records per shard (default BARGE_SHARD_RECORDS)."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    openai_endpoint: Literal["/v1/embeddings", "/v1/chat/completions", "/v1/completions"] | None = (
        Field(
            None,
            description="Records are OpenAI batch request lines ({custom_id, method, url, body}) "
            "for this endpoint; each part line is an OpenAI batch output line.",
        )
    )

    @field_validator("input")
    @classmethod
    def _s3_uri(cls, v: str) -> str:
        return check_uri(v)

    @field_validator("output")
    @classmethod
    def _output_prefix(cls, v: str) -> str:
        return as_prefix(check_uri(v))

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        return check_model_ref(v)

    @field_validator("params")
    @classmethod
    def _params_for_task(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        task = info.data.get("task")
        if task not in PARAMS_BY_TASK:
            return v  # the task field already reports its own error
        model = PARAMS_BY_TASK[task]
        try:
            return model.model_validate(v).model_dump()
        except ValidationError as exc:
            allowed = ", ".join(model.model_fields)
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown parameter" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            )
            raise ValueError(f"{problems} (parameters for task {task!r}: {allowed})") from None

    def task_params(self) -> Any:
        return PARAMS_BY_TASK[self.task].model_validate(self.params)


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

# The fields each fine-tune task reads from every training and validation record.
FINETUNE_FIELDS: dict[str, tuple[str, str]] = {
    "classify": ("text", "label"),
    "generate": ("prompt", "completion"),
    "embed": ("anchor", "positive"),
    "text2text": ("source", "target"),
}


class Hyperparameters(_Strict):
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per forward pass.")
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0)
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of the steps the learning rate warms up over."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    max_length: int = Field(256, ge=1, le=8192, description="Tokens kept per example.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Forward passes per optimizer step."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Same seed and data, same weights.")


class FinetuneSpec(_Strict):
    type: Literal["finetune"]
    base_model: str = Field(
        ...,
        min_length=1,
        max_length=MAX_URI_CHARS,
        description="s3:// prefix of a Hugging Face model directory, a local directory under "
        "BARGE_LOCAL_MODEL_DIRS, or a registry name `name[@version]`.",
    )
    task: Task
    train: str = Field(
        ...,
        description="s3:// URI of one object or a prefix: classify {text, label}, generate "
        "{prompt, completion}, embed {anchor, positive}, text2text {source, target}.",
    )
    validation: str | None = Field(None, description="Like train; evaluated after each epoch.")
    hyperparameters: Hyperparameters = Field(
        default_factory=lambda: Hyperparameters.model_validate({})
    )
    model_name: str = Field(
        ...,
        pattern=MODEL_NAME_PATTERN,
        description="The registry name the result is registered under (a new version).",
    )
    output: str | None = Field(
        None,
        description="s3:// prefix for checkpoints, the model and the manifest "
        "(default s3://<train bucket>/barge-finetunes/<job id>/).",
    )
    input_format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_seconds: float | None = Field(
        None,
        ge=1.0,  # a tenant's quota (min_checkpoint_seconds) may ask for more
        description="Default 600 when neither checkpoint interval is given; at least the "
        "tenant's quota min_checkpoint_seconds.",
    )
    keep_checkpoints: int = Field(2, ge=1, le=100, description="The newest N are kept.")
    log_every_steps: int = Field(10, ge=1, description="A train event every N steps.")
    max_failed_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of unusable training records tolerated."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("train", "validation")
    @classmethod
    def _s3_uri(cls, v: str | None) -> str | None:
        return None if v is None else check_uri(v)

    @field_validator("output")
    @classmethod
    def _output_prefix(cls, v: str | None) -> str | None:
        return None if v is None else as_prefix(check_uri(v))

    @field_validator("base_model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        return check_model_ref(v)

    @field_validator("task")
    @classmethod
    def _trainable(cls, v: str) -> str:
        if v not in FINETUNE_FIELDS:
            raise ValueError(
                f"task {v!r} cannot be fine-tuned (fine-tune tasks: {', '.join(FINETUNE_FIELDS)})"
            )
        return v

    @property
    def fields(self) -> tuple[str, str]:
        return FINETUNE_FIELDS[self.task]

    @property
    def checkpoint_seconds(self) -> float | None:
        if self.checkpoint_every_steps is None and self.checkpoint_every_seconds is None:
            return 600.0
        return self.checkpoint_every_seconds


JobSpec = InferenceSpec | FinetuneSpec
JOB_TYPES = ("inference", "finetune")


def parse_spec(data: dict[str, Any]) -> JobSpec:
    """The stored or submitted spec as its model (``type`` defaults to inference)."""
    if data.get("type", "inference") == "finetune":
        return FinetuneSpec.model_validate(data)
    return InferenceSpec.model_validate(data)
