"""Job specs: what a user submits, validated once, stored as JSON on the job row."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from barge.jsonvalues import check_json_value
from barge.uris import uri_problem

Task = Literal[
    "embed",
    "classify",
    "generate",
    "text2text",
    "regress",
    "image_classify",
    "image_embed",
    "detect",
]
TASKS: tuple[str, ...] = get_args(Task)
# Tasks whose records are images (``barge.records.images``; the worker's ``worker.models.vision``).
IMAGE_TASKS = frozenset({"image_classify", "image_embed", "detect"})
# Models built into the worker: name -> the one task each runs.
BUILTIN_MODELS = {"builtin:face-haar": "detect"}
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
    if v.startswith(("/", "file://")) or v in BUILTIN_MODELS:
        return v
    match = _MODEL_REF.match(v)
    if match is None or int(match.group(2) or 1) > MAX_VERSION or match.group(2) == "0":
        raise ValueError(
            "must be an s3://bucket/prefix/ model directory, a local directory under "
            "BARGE_LOCAL_MODEL_DIRS, a registered model name[@version] (version 1 to "
            f"{MAX_VERSION}), or a built-in model ({', '.join(BUILTIN_MODELS)})"
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


# The generation parameters a record may set for itself (``params_field``).
RECORD_PARAMS = ("max_new_tokens", "temperature", "seed")


class ImageClassifyParams(_Strict):
    top_k: int | None = Field(
        None, ge=1, le=100_000, description="Labels kept in `scores`, best first (all if null)."
    )


class ImageEmbedParams(_Strict):
    normalize: bool = Field(False, description="L2-normalise each embedding.")


class DetectParams(_Strict):
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Objects scoring below are dropped.")
    min_neighbors: int = Field(
        5, ge=0, le=100, description="builtin:face-haar only: overlapping hits a face needs."
    )


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
    "image_classify": ImageClassifyParams,
    "image_embed": ImageEmbedParams,
    "detect": DetectParams,
    "text2text": Text2TextParams,  # a Hugging Face seq2seq model (worker.models.seq2seq)
    "regress": RegressParams,  # an ONNX model only (worker.models.onnx)
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
    messages_field: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="generate only: the record field holding chat messages ([{role, content}]), "
        "rendered with the model's chat template (read instead of text_field).",
    )
    params_field: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="generate only: the record field holding this record's own "
        f"{', '.join(RECORD_PARAMS)} (over the job's params); records are batched with "
        "others of the same parameters.",
    )
    image_field: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=256,
            description="Image tasks: the field holding each record's image (an s3:// URI, base64 "
            "data, or Parquet binary). Unset: the input is image objects, one record each.",
        ),
    ] = None
    input_format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    max_batch_tokens: int | None = Field(
        None,
        ge=0,
        le=16_777_216,
        description="Encoders (embed, classify, text2text, ONNX text inputs): padded tokens per "
        "batch, cut over length-sorted windows of batch_size x 16 records (short records run "
        "in wide batches, long ones in narrow ones). Unset: BARGE_MAX_BATCH_TOKENS, else "
        "batch_size x max_length. 0: fixed batches of batch_size records.",
    )
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

    @model_validator(mode="after")
    def _generate_fields(self) -> InferenceSpec:
        for name in ("messages_field", "params_field"):
            if getattr(self, name) is not None and self.task != "generate":
                raise ValueError(
                    f"{name} is for task 'generate' only (this job's is {self.task!r})"
                )
        return self

    @model_validator(mode="after")
    def _images_fit_task(self) -> InferenceSpec:
        _check_task_model(self.task, self.model, "model")
        if self.image_field is not None and self.task not in IMAGE_TASKS:
            raise ValueError(f"image_field is for image tasks ({', '.join(sorted(IMAGE_TASKS))})")
        if self.task in IMAGE_TASKS and self.openai_endpoint is not None:
            raise ValueError("openai_endpoint takes text tasks only")
        return self

    def task_params(self) -> Any:
        return PARAMS_BY_TASK[self.task].model_validate(self.params)

    def record_params(self, value: Any) -> GenerateParams:
        """The parameters of a record whose ``params_field`` holds ``value``: the job's, with
        the record's own over them (ValueError says what is wrong)."""
        if not isinstance(value, dict):
            raise ValueError(f"field {self.params_field!r} must be an object")
        unknown = sorted(str(k) for k in value if k not in RECORD_PARAMS)
        if unknown:
            raise ValueError(
                f"field {self.params_field!r}: unknown parameter {', '.join(unknown)} "
                f"(a record may set {', '.join(RECORD_PARAMS)})"
            )
        try:
            return GenerateParams.model_validate({**self.params, **value})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"field {self.params_field!r}: {problems}") from None

    @property
    def reads_image_objects(self) -> bool:
        """An image task without ``image_field``: every input object is one image record."""
        return self.task in IMAGE_TASKS and self.image_field is None


def _check_task_model(task: str, model: str, field: str) -> None:
    builtin_task = BUILTIN_MODELS.get(model)
    if builtin_task is not None and builtin_task != task:
        raise ValueError(f"{field} {model} runs task {builtin_task!r} only")


# The field of a chat training record for generate: {"messages": [{role, content}, ...]}.
CHAT_FIELD = "messages"

# The validation metrics each fine-tune task reports every epoch.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("validation_loss", "validation_accuracy", "validation_macro_f1"),
    "generate": ("validation_loss", "validation_exact_match"),
    "embed": ("validation_loss", "validation_accuracy"),
}

MODEL_NAME_MAX = 100
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # at most MODEL_NAME_MAX

# The fields each fine-tune task reads from every training and validation record.
FINETUNE_FIELDS: dict[str, tuple[str, str]] = {
    "classify": ("text", "label"),
    "generate": ("prompt", "completion"),
    "embed": ("anchor", "positive"),
    "image_classify": ("image", "label"),
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


class FullMethod(_Strict):
    """Every weight of the base trains (the default)."""

    type: Literal["full"] = "full"


class LoraMethod(_Strict):
    """A LoRA adapter trains over a frozen base: only the adapter's (and, for classify, the new
    head's) weights train, are checkpointed and make the registered version."""

    type: Literal["lora"]
    r: int = Field(8, ge=1, le=1024, description="The adapter's rank.")
    alpha: int = Field(16, ge=1, le=100_000, description="Scaling: alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None,
        max_length=64,
        description="Module names (or name suffixes) that get an adapter; default: the "
        "attention projections peft knows for the model type, else every linear layer.",
    )
    base_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="The dtype the frozen base is loaded in (the adapter trains in fp32).",
    )
    quantize: Literal["8bit", "4bit"] | None = Field(
        None,
        description="Load the frozen base quantized with bitsandbytes (CUDA workers with the "
        "`lora-quantized` extra only).",
    )
    merge: bool = Field(
        False,
        description="Register the base with the adapter merged in (a full model directory) "
        "instead of the adapter.",
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (
            not v or any(not re.fullmatch(r"[A-Za-z0-9_.]{1,200}", n) for n in v)
        ):
            raise ValueError("must be a non-empty list of module names (letters, digits, _ and .)")
        return v


Method = Annotated[FullMethod | LoraMethod, Field(discriminator="type")]

# Validation metrics a fine-tune may select its best epoch by, and whether higher is better.
SELECT_METRICS: dict[str, bool] = {
    "validation_loss": False,
    "validation_accuracy": True,
    "validation_macro_f1": True,
    "validation_exact_match": True,
}


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
        "{prompt, completion} or {messages: [{role, content}, ...]}, embed {anchor, positive}, text2text {source, target}.",
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
    epoch_models: int = Field(
        0,
        ge=0,
        le=10,
        description="Also keep and register the models of the last N epochs before the one "
        "registered as model_name, each as <model_name>-ckpt-step-<step>.",
    )
    log_every_steps: int = Field(10, ge=1, description="A train event every N steps.")
    max_failed_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of unusable training records tolerated."
    )
    method: Method = Field(default_factory=FullMethod, description="full (default) or lora.")
    select: Literal["last", "best"] = Field(
        "last",
        description="best: register the epoch with the best select_metric on validation "
        "(needs validation data), not the last.",
    )
    select_metric: str | None = Field(
        None,
        description=f"One of {', '.join(SELECT_METRICS)} (default validation_loss; "
        "validation_macro_f1 for classify).",
    )
    early_stopping_epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Stop after this many epochs without a better select_metric.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _method_and_selection(self) -> FinetuneSpec:
        if isinstance(self.method, LoraMethod) and self.task == "embed":
            raise ValueError("method lora is for tasks classify and generate")
        if self.epoch_models and isinstance(self.method, LoraMethod) and self.method.merge:
            raise ValueError(
                "epoch_models keeps each epoch's adapter; with method.merge only the end "
                "result is merged (drop merge, or set epoch_models to 0)"
            )
        if self.select_metric is not None and self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {', '.join(SELECT_METRICS)}")
        metric = self.metric
        wanted = self.select == "best" or self.early_stopping_epochs is not None
        if wanted and self.validation is None:
            raise ValueError("select best and early_stopping_epochs need validation data")
        measured = TASK_METRICS.get(self.task, ("validation_loss",))
        if wanted and metric not in measured:
            raise ValueError(
                f"select_metric {metric} is not measured for task {self.task!r} "
                f"(it has {', '.join(measured)})"
            )
        return self

    @property
    def metric(self) -> str:
        """The validation metric ``select`` and early stopping compare epochs by."""
        if self.select_metric is not None:
            return self.select_metric
        return "validation_macro_f1" if self.task == "classify" else "validation_loss"

    @property
    def lora(self) -> LoraMethod | None:
        return self.method if isinstance(self.method, LoraMethod) else None

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

    @model_validator(mode="after")
    def _tunable(self) -> FinetuneSpec:
        if self.task not in FINETUNE_FIELDS:
            raise ValueError(
                f"task {self.task!r} cannot be fine-tuned (tasks: {', '.join(FINETUNE_FIELDS)})"
            )
        if self.base_model in BUILTIN_MODELS:
            raise ValueError(f"base_model {self.base_model} is built in and cannot be fine-tuned")
        return self

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
