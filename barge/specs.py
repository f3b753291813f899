"""Job specs: what a user submits, validated once, stored as JSON on the job row."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

TASKS = ("embed", "classify", "generate")
Task = Literal["embed", "classify", "generate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


PARAMS_BY_TASK: dict[str, type[_Strict]] = {
    "embed": EmbedParams,
    "classify": ClassifyParams,
    "generate": GenerateParams,
}


class InferenceSpec(_Strict):
    type: Literal["inference"] = "inference"
    model: str = Field(
        ...,
        min_length=1,
        description="s3://bucket/prefix/ of a Hugging Face model directory, a local directory "
        "under BARGE_LOCAL_MODEL_DIRS, or a registry name `name[@version]`.",
    )
    task: Task
    input: str = Field(..., description="s3:// URI of one object or of a prefix of objects.")
    output: str = Field(..., description="s3:// prefix the outputs are written under.")
    text_field: str = Field("text", min_length=1)
    id_field: str | None = Field(None, min_length=1)
    input_format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    max_failed_ratio: float = Field(0.1, ge=0.0, le=1.0)
    shard_size: int | None = Field(
        None, ge=1, le=10_000_000, description="Records per shard (default BARGE_SHARD_RECORDS)."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input", "output")
    @classmethod
    def _s3_uri(cls, v: str) -> str:
        if not v.startswith("s3://") or len(v) <= len("s3://") or v[5] == "/":
            raise ValueError("must be an s3://bucket/key URI")
        return v

    @field_validator("output")
    @classmethod
    def _output_prefix(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"

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


JOB_TYPES = ("inference",)
